"""The watch as a Hugging Face ``TrainerCallback`` (TRL's SFTTrainer and the rest are Trainers too).

    from bitnet_ref.watch.hf import BitNetCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds)   # or SFTTrainer(...)
    BitNetCallback("runs/mine", data=val_token_ids, tokenizer=tok).attach(trainer)
    trainer.train()

What it records, and where:
- ``run_dir/metrics.jsonl`` (bitnet_ref's schema, for ``bitnet-doctor run_dir``): a step record for every row
  the Trainer logs (loss, learning_rate, grad_norm, and TRL's entropy and mean_token_accuracy where present),
  and every ``every`` optimizer steps an eval record: the loss on fixed windows of ``data``, the diversity probe
  and the per-layer ternary health, with gradient statistics taken between the Trainer's clipping and its
  optimizer step (``on_pre_optimizer_step``) and update ratios right after it (``on_optimizer_step``);
- the Trainer's own logs: the eval record's scalars under ``bitnet/`` (``bitnet/unique_tokens``,
  ``bitnet/health_flip_rate``, ...) join the Trainer's log row of that step, so they reach ``trainer_state.json``,
  TensorBoard, W&B and whatever ``report_to`` names. ``attach(trainer)`` puts the callback ahead of the reporting
  callbacks, which see a row only after the callbacks before them; passed in ``callbacks=[...]`` instead, it
  comes last, and the figures reach ``trainer_state.json`` and the run directory only.

The evaluation steps are the Trainer's logging steps' multiples of ``every`` (default: its ``eval_steps`` when it
evaluates by steps, else ``max_steps // 20``), and the last step. transformers is imported here and nowhere
else in bitnet_ref.watch. What this is not: a replacement for the Trainer's own evaluation.
"""

from __future__ import annotations

from transformers import TrainerCallback

from bitnet_ref.watch.hook import Watch

PREFIX = "bitnet/"  # the namespace of our figures in the Trainer's logs (TensorBoard shows train/bitnet/...)
EXTRA_STEP_KEYS = ("entropy", "mean_token_accuracy", "num_tokens")  # TRL's per-step figures, kept as given


class BitNetCallback(TrainerCallback):
    """A ``TrainerCallback`` that runs a ``Watch`` on the Trainer's model; keywords are ``watch()``'s."""

    def __init__(self, run_dir, *, every: int | None = None, **watch_kw):
        self.run_dir, self.every, self.watch_kw = run_dir, every, watch_kw
        self.watch: Watch | None = None
        self.pending: dict | None = None  # the last evaluation's scalars, waiting for the Trainer's next log row

    def attach(self, trainer) -> BitNetCallback:
        """Add this callback to ``trainer`` ahead of the others, so TensorBoard/W&B see the figures; returns it."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def interval(self, args, state) -> int:
        """Steps between evaluations: ``every``, else the Trainer's eval_steps when it evaluates by steps, else
        max_steps // 20."""
        if self.every:
            return self.every
        strategy = getattr(args, "eval_strategy", "no")
        if str(getattr(strategy, "value", strategy)).lower() == "steps" and args.eval_steps:
            return max(1, int(args.eval_steps))
        return max(1, (state.max_steps or 20) // 20)

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or self.watch is not None:
            return
        kw = dict(self.watch_kw)
        if kw.get("tokenizer") is None and callable(getattr(processing_class, "decode", None)):
            kw["tokenizer"] = processing_class
        self.watch = Watch(model, self.run_dir, every=self.interval(args, state), steps=state.max_steps or None, **kw)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.after_backward()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.after_update()

    def on_step_end(self, args, state, control, **kwargs):
        w = self.watch
        if w is not None and w.measures(state.global_step):
            w.count = state.global_step
            self.pending = w.evaluate(state.global_step)
            if self.pending:
                control.should_log = True  # so that this step has a log row to carry the figures

    def on_log(self, args, state, control, logs=None, **kwargs):
        w = self.watch
        if w is None or logs is None:
            return
        if "loss" in logs:
            extra = {k: logs[k] for k in EXTRA_STEP_KEYS if k in logs}
            w.log_step(
                logs["loss"],
                step=state.global_step,
                lr=logs.get("learning_rate"),
                wd=args.weight_decay,
                grad_norm=logs.get("grad_norm"),
                **extra,
            )
        if self.pending and "loss" in logs:
            figures = {PREFIX + k: v for k, v in self.pending.items() if k != "step"}
            if w.unigram_entropy is not None:  # so that a reader of these logs has the unigram level too
                figures[PREFIX + "unigram_entropy"] = w.unigram_entropy
            logs.update(figures)  # the callbacks after this one (TensorBoard, W&B, the printer) see them
            last = state.log_history[-1] if state.log_history else None
            if isinstance(last, dict) and last.get("step") == state.global_step:
                last.update(figures)  # trainer_state.json
            self.pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.close()
