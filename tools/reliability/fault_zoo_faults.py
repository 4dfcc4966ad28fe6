"""The fault zoo's faults: each one a small patch of the trainer (or of the model's decode path) in the process
that runs one case of tools/reliability/fault_zoo.py, so nothing in the package changes.

``install(name)`` patches this process; ``FAULT_TEXT`` says in a few words what each fault is. A fault lives
where a user's bug would: the data pipeline (``get_batch`` and the seeds as the loop sees them), the optimizer
(its param groups, its step, the schedule the loop reads), the forward (a norm, the logits, the attention mask),
the evaluation, the checkpoint, or the KV-cache decode path. Crashes raise from inside a training step.
What this is not: fault injection for tests of the package (bitnet_ref/train/faults.py does that).
"""

from __future__ import annotations

FAULT_TEXT = {
    None: "none (healthy)",
    "targets_eq_inputs": "data: targets = inputs",
    "shuffled_targets": "data: targets of another row",
    "latent_dropped": "optimizer: latent weights not in AdamW",
    "latent_zero_lr": "optimizer: LR 0 on latent weights",
    "dead_grad": "gradient: 71% of latent grads zeroed",
    "detached_norm": "gradient: RMSNorm gains detached",
    "detached_layer": "gradient: one BitLinear detached",
    "logits_bf16": "numerics: logits rounded to bf16",
    "logits_fp8": "numerics: logits rounded to fp8 e4m3",
    "bf16_master": "numerics: bf16 master weights",
    "eval_no_shift": "eval: val targets = inputs",
    "stale_export": "export: ckpt holds fresh weights",
    # issue 28: one or two per principle
    "warmup_never_ends": "schedule: warmup 100x the configured",
    "adam_eps": "optimizer: AdamW eps 1e-1 (not 1e-8)",
    "lr_scaled_in_step": "optimizer: step applies LR/1000",
    "tiny_grad_clip": "optimizer: --grad-clip 1e-9",
    "mask_off_in_training": "forward: no causal mask in training",
    "same_batch": "data: the same batch every step",
    "narrow_pipeline": "data: windows from first 8k tokens",
    "eval_on_train": "eval: reads the training split",
    "swapped_splits": "data: train on val, eval on train",
    "eval_late_positions": "eval: loss of late positions only",
    "eval_lagged": "eval: logs the previous eval's loss",
    "cache_rope_restart": "decode: cached RoPE restarts at 0",
    "cache_mask_off_by_one": "decode: cached query can't see itself",
    "zero_frozen_subnorm": "init: ffn sub_norm gain 0, frozen",
    "zero_frozen_oproj": "init: o_proj weight 0, frozen",
    "crash_after_first_eval": "crash: error at step 3",
    "killed_mid_run": "crash: killed at step 170 (no record)",
    "tiny_lr": "optimizer: --lr 3e-6 (foreign log)",
    "tiny_lr_stage1": "optimizer: --lr 1e-6 stage 1 (foreign)",
    # issue 27: warm starts; the fault is in the flags
    "abrupt_quant": "warm start: abrupt quantization",
    "unfinished_warmup": "warm start: warmup longer than the run",
    "short_warmup": "warm start: a 3-step warmup",
    "short_warmup_exp": "warm start: a 6-step exponential warmup",
}
FLAG_FAULTS = {"tiny_grad_clip", "tiny_lr", "tiny_lr_stage1", "abrupt_quant", "unfinished_warmup", "short_warmup"}
FLAG_FAULTS |= {"short_warmup_exp"}  # set by the case's command-line flags: nothing to patch


class Killed(BaseException):
    """A kill the trainer cannot see coming (SIGKILL, a lost machine): not an Exception, so nothing is logged."""


# ---------------------------------------------------------------------------- helpers


def _hook_model(fn) -> None:
    """Run fn(model) where the trainer installs its own test faults: on the fresh model, before the loop."""
    from bitnet_ref.train import faults

    install = faults.install
    faults.install = lambda m, first: (fn(m), install(m, first))


def _round_logits(cast) -> None:
    import torch.nn.functional as F

    from bitnet_ref import model

    forward = model.Transformer.forward

    def fwd(self, idx, targets=None, cache=None, **kw):
        logits, _ = forward(self, idx, None, cache, **kw)
        logits = logits + (cast(logits) - logits).detach()  # rounded values, straight-through gradient
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    model.Transformer.forward = fwd


def _during_eval(patch, unpatch) -> None:
    """patch() before each evaluation of the trainer, unpatch() after it."""
    from bitnet_ref.train import loop as train

    evaluate = train.TrainingRun.evaluate

    def ev(self, step):
        patch(self)
        try:
            return evaluate(self, step)
        finally:
            unpatch(self)

    train.TrainingRun.evaluate = ev


def _cached_attention(fix_sdpa) -> None:
    """Decode steps through the KV cache (cache.pos > 0) call scaled_dot_product_attention as fix_sdpa(sdpa)."""
    import torch.nn.functional as F

    from bitnet_ref import model

    forward, sdpa = model.Attention.forward, F.scaled_dot_product_attention

    def fwd(self, x, cos, sin, cache=None, layer=0):
        if cache is None or cache.pos == 0:
            return forward(self, x, cos, sin, cache, layer)
        F.scaled_dot_product_attention = fix_sdpa(sdpa)
        try:
            return forward(self, x, cos, sin, cache, layer)
        finally:
            F.scaled_dot_product_attention = sdpa

    model.Attention.forward = fwd


def _adamw_step(before, after) -> None:
    import torch

    step = torch.optim.AdamW.step

    def patched(self, *a, **k):
        saved = [before(g) for g in self.param_groups]
        try:
            return step(self, *a, **k)
        finally:
            for g, s in zip(self.param_groups, saved):
                after(g, s)

    torch.optim.AdamW.step = patched


def _freeze_zero(pick) -> None:
    def fn(m):
        p = pick(m)
        p.data.zero_()
        p.requires_grad_(False)

    _hook_model(fn)


def _at_step(k: int, act) -> None:
    """act(run) when the trainer is about to take update number k (1-based)."""
    from bitnet_ref.train import loop as train

    step = train.TrainingRun.step

    def patched(self, s, *a, **kw):
        if s + 1 == k:
            act(self)
        return step(self, s, *a, **kw)

    train.TrainingRun.step = patched


# ---------------------------------------------------------------------------- the faults


def _data_faults(name: str) -> bool:
    from bitnet_ref.train import loop as train

    get_batch = train.get_batch
    if name == "targets_eq_inputs":
        train.get_batch = lambda *a: (get_batch(*a)[0],) * 2
    elif name == "shuffled_targets":
        train.get_batch = lambda *a: (lambda x, y: (x, y.roll(1, 0)))(*get_batch(*a))
    elif name == "same_batch":
        seed_for = train.seed_for
        train.seed_for = lambda seed, stream, step=0: seed_for(seed, stream, 0 if stream == "train" else step)
    elif name == "narrow_pipeline":
        load = train.TrainingRun._load_inputs
        box = {}

        def load_inputs(self):
            out = load(self)
            box["train"] = self.corpus.train
            return out

        train.TrainingRun._load_inputs = load_inputs
        train.get_batch = lambda tokens, b, c, gen: get_batch(
            tokens[: 8192 + c + 1] if tokens is box.get("train") else tokens, b, c, gen
        )
    elif name == "swapped_splits":
        load = train.TrainingRun._load_inputs

        def load_inputs(self):
            out = load(self)
            c = self.corpus
            _ = c.fingerprint  # the header records the data as it was read; the pipeline swaps it afterwards
            c.train, c.val = c.val, c.train
            return out

        train.TrainingRun._load_inputs = load_inputs
    elif name == "eval_no_shift":
        _during_eval(
            lambda run: setattr(train, "get_batch", lambda *a: (get_batch(*a)[0],) * 2),
            lambda run: setattr(train, "get_batch", get_batch),
        )
    elif name == "eval_on_train":
        box = {}

        def swap(run):
            box["val"], run.corpus.val = run.corpus.val, run.corpus.train

        _during_eval(swap, lambda run: setattr(run.corpus, "val", box["val"]))
    elif name == "eval_late_positions":

        def late(*a):
            x, y = get_batch(*a)
            y = y.clone()
            y[:, : y.shape[1] // 2] = -1  # cross_entropy's ignore_index: only the second half counts
            return x, y

        _during_eval(lambda run: setattr(train, "get_batch", late), lambda run: setattr(train, "get_batch", get_batch))
    elif name == "eval_lagged":
        box = {"prev": None}
        write = train.M.MetricsLog.write

        def lagged(self, rec):
            if rec.get("kind") == "eval":
                prev, box["prev"] = box["prev"], rec["val_loss"]
                rec = {**rec, "val_loss": prev if prev is not None else rec["val_loss"]}
            return write(self, rec)

        train.M.MetricsLog.write = lagged
    else:
        return False
    return True


def _optimizer_faults(name: str) -> bool:
    import torch

    from bitnet_ref.train import loop as train

    if name in ("latent_dropped", "latent_zero_lr"):
        groups = train.param_groups

        def pg(m):
            latent = {id(b.weight) for _, b in m.bitlinears()}
            out = [{**g, "params": [p for p in g["params"] if id(p) not in latent]} for g in groups(m)]
            if name == "latent_zero_lr":
                out.append(
                    {
                        "params": [b.weight for _, b in m.bitlinears()],
                        "weight_decay": 0.0,
                        "decay": True,
                        "frozen": True,
                    }
                )
            return out

        train.param_groups = pg

        def zero(g):
            if g.get("frozen"):
                g["lr"] = 0.0

        _adamw_step(zero, lambda g, s: None)
    elif name == "warmup_never_ends":
        train.lr_at = lambda s, sch: sch.lr * min(1.0, (s + 1) / (100 * max(sch.warmup, 1)))
    elif name == "adam_eps":
        adamw = torch.optim.AdamW

        class BigEps(adamw):
            def __init__(self, params, **kw):
                super().__init__(params, **{**kw, "eps": 1e-1})

        torch.optim.AdamW = BigEps
    elif name == "lr_scaled_in_step":

        def scale(g):
            lr = g["lr"]
            g["lr"] = lr * 1e-3
            return lr

        _adamw_step(scale, lambda g, lr: g.__setitem__("lr", lr))
    else:
        return False
    return True


def _model_faults(name: str) -> bool:
    import torch

    from bitnet_ref import model

    if name == "dead_grad":

        def dead(m):
            gen = torch.Generator().manual_seed(0)
            for _, b in m.bitlinears():
                keep = (torch.rand(b.weight.shape, generator=gen) >= 0.71).to(b.weight.dtype)
                b.weight.register_hook(lambda g, k=keep: g * k.to(g.device))

        _hook_model(dead)
    elif name == "detached_norm":
        model.RMSNorm.forward = lambda self, x: (
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.detach()
        )
    elif name == "detached_layer":
        _hook_model(lambda m: m.blocks[0].attn.o_proj.weight.register_hook(torch.zeros_like))
    elif name == "logits_bf16":
        _round_logits(lambda t: t.to(torch.bfloat16).float())
    elif name == "logits_fp8":
        _round_logits(lambda t: t.clamp(-448, 448).to(torch.float8_e4m3fn).float())
    elif name == "bf16_master":
        init = model.Transformer.__init__

        def bf16_init(self, cfg):
            init(self, cfg)
            self.to(torch.bfloat16)

        model.Transformer.__init__ = bf16_init
    elif name == "mask_off_in_training":
        import torch.nn.functional as F

        forward, sdpa = model.Attention.forward, F.scaled_dot_product_attention

        def fwd(self, x, cos, sin, cache=None, layer=0):
            if not self.training:
                return forward(self, x, cos, sin, cache, layer)
            F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, is_causal=False: sdpa(q, k, v)
            try:
                return forward(self, x, cos, sin, cache, layer)
            finally:
                F.scaled_dot_product_attention = sdpa

        model.Attention.forward = fwd
    elif name == "zero_frozen_subnorm":
        _freeze_zero(lambda m: m.blocks[1].ffn.sub_norm.weight)
    elif name == "zero_frozen_oproj":
        _freeze_zero(lambda m: m.blocks[0].attn.o_proj.weight)
    else:
        return False
    return True


def _decode_faults(name: str) -> bool:
    from bitnet_ref import model

    if name == "cache_rope_restart":
        forward = model.Transformer.forward

        def fwd(self, idx, targets=None, cache=None, **kw):
            if cache is None or cache.pos == 0:
                return forward(self, idx, targets, cache, **kw)
            cos, sin, p = self.rope_cos, self.rope_sin, cache.pos
            self.rope_cos, self.rope_sin = cos.roll(p, 0), sin.roll(p, 0)  # position p + i gets angle i
            try:
                return forward(self, idx, targets, cache, **kw)
            finally:
                self.rope_cos, self.rope_sin = cos, sin

        model.Transformer.forward = fwd
    elif name == "cache_mask_off_by_one":

        def fix(sdpa):
            def blind(q, k, v, attn_mask=None, is_causal=False):
                m = attn_mask.clone()
                m[..., -1] = False  # the newest key, the query's own, is hidden from the last query
                m[..., 0] = True  # (keep one key visible so softmax stays finite)
                return sdpa(q, k, v, attn_mask=m, is_causal=is_causal)

            return blind

        _cached_attention(fix)
    else:
        return False
    return True


def _crash_faults(name: str) -> bool:
    from pathlib import Path

    from bitnet_ref import model
    from bitnet_ref.train import loop as train

    if name == "stale_export":
        save = train.save_checkpoint

        def stale(path, payload):
            fresh = model.Transformer(model.ModelConfig.from_dict(payload["config"]))
            return save(path, {**payload, "model": fresh.state_dict()})

        train.save_checkpoint = stale
    elif name == "crash_after_first_eval":

        def boom(run):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        _at_step(3, boom)
    elif name == "killed_mid_run":

        def kill(run):
            run.metrics.close()
            with open(Path(run.out) / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write('{"kind": "step", "step": 170, "lo')  # the line the kill tore
            raise Killed()

        _at_step(170, kill)
    else:
        return False
    return True


def install(name: str) -> None:
    """Install fault ``name`` into this process's trainer (the worker runs one case, then exits)."""
    if name in FLAG_FAULTS:
        return  # set by the case's command-line flags
    for group in (_data_faults, _optimizer_faults, _model_faults, _decode_faults, _crash_faults):
        if group(name):
            return
    raise ValueError(f"unknown fault {name!r}")
