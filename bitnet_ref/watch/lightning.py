"""The watch as a PyTorch Lightning ``Callback``.

    from lightning import Trainer
    from bitnet_ref.watch.lightning import BitNetCallback
    trainer = Trainer(max_steps=1000, callbacks=[BitNetCallback("runs/mine", data=val_token_ids)])
    trainer.fit(lit_module, train_loader)

It runs a ``Watch`` on the LightningModule: gradient statistics in ``on_before_optimizer_step`` (after the
backward pass, before the update: Lightning calls it inside the optimizer's closure, so a hook on the optimizer's
own step would come too early), the update ratios and the step record once ``trainer.global_step`` has moved
(``on_train_batch_end``; with gradient accumulation that is once per update), and every ``every`` updates an
evaluation whose scalars go to Lightning's loggers under ``bitnet/`` (each logger's ``log_metrics`` at that
update's ``global_step``; ``pl_module.log`` would repeat them at every later step) and, with everything
else, into ``run_dir/metrics.jsonl`` for ``bitnet-doctor run_dir``. The training loss is the ``loss`` of what
``training_step`` returned. Only the global-zero process records. lightning is imported here and nowhere else in
bitnet_ref.watch. What this is not: a LightningModule or a logger.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from bitnet_ref.watch.hook import Watch

PREFIX = "bitnet/"


class BitNetCallback(Callback):
    """A Lightning ``Callback`` that runs a ``Watch`` on the module being fit; keywords are ``watch()``'s."""

    def __init__(self, run_dir, *, every: int = 50, **watch_kw):
        self.run_dir, self.every, self.watch_kw = run_dir, every, watch_kw
        self.watch: Watch | None = None
        self.seen_step = 0

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero or self.watch is not None:
            return
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.watch = Watch(pl_module, self.run_dir, every=self.every, steps=steps, **self.watch_kw)
        self.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.seen_step = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.watch is not None:
            self.watch.after_backward()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        w = self.watch
        if w is None or trainer.global_step == self.seen_step:
            return  # no update happened on this batch (gradient accumulation)
        self.seen_step = trainer.global_step
        w.after_update()
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        lr = groups[0].get("lr") if groups else None
        wd = max((float(g.get("weight_decay", 0.0) or 0.0) for g in groups), default=None)
        w.log_step(
            loss if isinstance(loss, (torch.Tensor, float, int)) else None, step=trainer.global_step, lr=lr, wd=wd
        )
        if w.measures(trainer.global_step):
            figures = w.evaluate(trainer.global_step)
            if figures:  # straight to the loggers: logged once, at this update's step
                scalars = {PREFIX + k: float(v) for k, v in figures.items() if k != "step"}
                for logger in trainer.loggers:
                    logger.log_metrics(scalars, step=trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        if self.watch is not None:
            self.watch.close()
