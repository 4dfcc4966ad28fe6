"""The log reproduced from the checkpoint and the data: which reading of the data gives the numbers it holds.

A log can lie, and a check whose own noise is close to its threshold cannot catch it. So the doctor rebuilds the
checkpoint's model and its data (``data.rebuild.reload``) and measures, once per run:

- ``val_same``: the val loss on the very windows of the log's evaluation at the checkpoint's step (the trainer
  draws them from a generator seeded by the run's seed, ``train.loop.seed_for``). Same weights, same windows:
  it must give the logged number to float precision (``REPRO_TOL_FP32``; ``REPRO_TOL_AUTOCAST`` for a bf16
  autocast run). Paired, so it has no sampling error at all.
- ``val_fresh`` and ``train_fresh``: the loss on fresh windows of each split, as many as it takes to bring the
  standard error (over windows) to ``MEASURE_SE_TARGET`` (at most ``MEASURE_MAX_TOKENS`` tokens); an independent
  measurement whose error is stated beside every difference.
- ``train_same``: the training loss of the log's last steps (up to the checkpoint's), paired with the
  checkpoint's loss on the same batches (seeded per step). The weights moved a little over those steps, so
  this one agrees to within ``TRAIN_REPRO_NATS`` rather than exactly.

``reading(run, split, how)`` measures a number the log holds under another reading of the data: the other
split, targets = inputs (no shift), or attention without its causal mask. The rules of splits.py and
measure.log_check use it to name what the log measured when the expected reading does not reproduce it.
What this is not: a verdict or a cause (measure.py and splits.py judge); nothing here reads thresholds but
the measuring ones.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import MEASURE_MAX_TOKENS, MEASURE_SE_TARGET, REPRO_TOL_AUTOCAST, REPRO_TOL_FP32

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run

TRAIN_STEPS = 32  # logged steps whose batches are reproduced (the last ones up to the checkpoint)
FRESH_SEED = 2718  # the doctor's own windows: any fixed seed, so two runs of the doctor agree
MIN_WINDOWS = 64  # fresh windows measured before the standard error is looked at


@dataclass
class Loss:
    """A measured mean next-token loss: its standard error over windows (None when paired with the log), and
    what it was measured on."""

    mean: float
    se: float | None
    windows: int
    tokens: int

    def text(self) -> str:
        err = f" +- {self.se:.3f} (SE)" if self.se is not None else ""
        return f"{self.mean:.3f}{err} on {self.windows} windows ({self.tokens} tokens)"


@dataclass
class Paired:
    """The log's training losses beside the checkpoint's on the same batches: mean(measured - logged) and its
    standard error over the steps."""

    logged: float
    measured: float
    gap: float
    se: float
    steps: list

    def text(self) -> str:
        return (
            f"logged {self.logged:.3f}, checkpoint {self.measured:.3f} on the same batches of steps "
            f"{self.steps[0]}-{self.steps[-1]} (difference {self.gap:+.3f} +- {self.se:.3f} SE)"
        )


# ---------------------------------------------------------------------------- rebuilding the run


def _rebuild(run: Run, notes: list):
    """(model, corpus, train_config) of the run's checkpoint, or None with a note saying why not."""
    from bitnet_ref.data import corpus as D
    from bitnet_ref.data.rebuild import reload
    from bitnet_ref.model import ModelConfig, Transformer

    ck = run.ckpt
    if not ck or "error" in ck:
        return None
    tc = ck.get("train_config") if isinstance(ck.get("train_config"), dict) else run.header.get("train_config")
    info = ck.get("data") if isinstance(ck.get("data"), dict) else run.header.get("data")
    try:
        model = Transformer(ModelConfig.from_dict(ck["config"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        notes.append(f"ckpt.pt could not be rebuilt as a model ({first}): the log was not checked against it")
        return None
    try:
        if not isinstance(info, dict):
            raise D.DataError("neither the checkpoint nor the metrics header records the training data")
        corpus = reload(info)
    except (D.DataError, KeyError, TypeError, OSError) as e:
        notes.append(f"validation data unavailable ({e}): the logged loss was not checked against the model")
        return None
    if min(len(corpus.val), len(corpus.train)) <= model.cfg.context:
        notes.append("a data split is shorter than one context: the logged loss was not checked")
        return None
    model.eval()
    return model, corpus, (tc if isinstance(tc, dict) else {})


def rebuilt(run: Run):
    """The run's checkpoint as a model with its data: (model, corpus, train_config), or None (cached, with notes)."""
    if run.measured is None:
        run.measured = {"notes": [], "_built": None, "_done": False}
        run.measured["_built"] = _rebuild(run, run.measured["notes"])
    return run.measured["_built"]


def _autocast(run: Run) -> bool:
    tc = run.header.get("train_config") or {}
    return tc.get("autocast") == "bf16" or (tc.get("autocast") == "auto" and "cuda" in str(run.header.get("device")))


def repro_tol(run: Run) -> float:
    """How close a paired reproduction of the logged val loss must come (fp32, or a bf16 autocast run)."""
    return REPRO_TOL_AUTOCAST if _autocast(run) else REPRO_TOL_FP32


# ---------------------------------------------------------------------------- readings of the data


@contextmanager
def _no_causal_mask():
    """Attention that sees every position, the future included (a training forward without its mask)."""
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, is_causal=False: sdpa(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def _losses(model, x, y, how: str) -> torch.Tensor:
    from bitnet_ref.generate import window_losses

    if how == "no_shift":
        return window_losses(model, x, x)
    if how == "no_mask":
        with _no_causal_mask():
            return window_losses(model, x, y)
    return window_losses(model, x, y)


def _eval_windows(tokens, tc: dict, context: int):
    """The windows of one evaluation of the trainer: eval_batches batches from the seeded val generator."""
    from bitnet_ref.data.corpus import get_batch
    from bitnet_ref.train.loop import seed_for

    gen = torch.Generator().manual_seed(seed_for(tc["seed"], "val"))
    xs, ys = zip(*(get_batch(tokens, tc["batch_size"], context, gen) for _ in range(tc["eval_batches"])))
    return torch.cat(xs), torch.cat(ys)


def _step_batch(tokens, tc: dict, context: int, step: int):
    """The batch of training step ``step`` (1-based, as logged): drawn with schedule index step - 1."""
    from bitnet_ref.data.corpus import get_batch
    from bitnet_ref.train.loop import seed_for

    return get_batch(
        tokens, tc["batch_size"], context, torch.Generator().manual_seed(seed_for(tc["seed"], "train", step - 1))
    )


def _split(corpus, name: str):
    return corpus.val if name == "val" else corpus.train


# ---------------------------------------------------------------------------- the measurements


def _fresh(model, tokens, context: int) -> Loss:
    from bitnet_ref.data.corpus import get_batch

    gen = torch.Generator().manual_seed(FRESH_SEED)
    most = max(MIN_WINDOWS, MEASURE_MAX_TOKENS // context)
    x, y = get_batch(tokens, MIN_WINDOWS, context, gen)
    per = _losses(model, x, y, "shift")
    want = int(math.ceil((float(per.std()) / MEASURE_SE_TARGET) ** 2))
    if want > len(per):
        x, y = get_batch(tokens, min(want, most) - len(per), context, gen)
        per = torch.cat([per, _losses(model, x, y, "shift")])
    return Loss(float(per.mean()), float(per.std()) / math.sqrt(len(per)), len(per), len(per) * context)


def _train_steps(run: Run, ck_step) -> list:
    recs = [
        r
        for r in run.steps
        if number_or_none(r.get("loss")) is not None
        and not r.get("skipped")
        and (ck_step is None or r["step"] <= ck_step)
    ]
    return recs[-TRAIN_STEPS:]


def _paired(model, corpus, tc, recs, split: str, how: str) -> Paired:
    ctx = model.cfg.context
    meas = [float(_losses(model, *_step_batch(_split(corpus, split), tc, ctx, r["step"]), how).mean()) for r in recs]
    logged = [float(r["loss"]) for r in recs]
    d = [m - v for m, v in zip(meas, logged)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / max(len(d) - 1, 1))
    return Paired(
        sum(logged) / len(logged), sum(meas) / len(meas), mean, sd / math.sqrt(len(d)), [r["step"] for r in recs]
    )


def measurements(run: Run) -> dict:
    """{"val_logged", "val_same", "val_fresh", "train_same", "train_fresh", "step", "epochs", "split_gap",
    "notes"}, measured once per run (cached on it); None where a number cannot be had."""
    built = rebuilt(run)
    out = run.measured
    if out["_done"]:
        return out
    out["_done"] = True
    keys = ("val_logged", "val_same", "val_fresh", "train_same", "train_fresh", "step", "epochs", "split_gap")
    out.update(dict.fromkeys(keys))
    if built is None:
        return out
    model, corpus, tc = built
    ctx, step = model.cfg.context, run.ckpt.get("step")
    out["step"] = step
    with torch.no_grad():
        out["val_fresh"] = _fresh(model, corpus.val, ctx)
        out["train_fresh"] = _fresh(model, corpus.train, ctx)
        rec = next((r for r in reversed(run.evals) if r.get("step") == step), None)
        out["val_logged"] = number_or_none(rec.get("val_loss")) if rec else None
        if out["val_logged"] is not None and _has(tc, "seed", "batch_size", "eval_batches"):
            x, y = _eval_windows(corpus.val, tc, ctx)
            out["val_same"] = Loss(float(_losses(model, x, y, "shift").mean()), None, len(x), x.numel())
        elif rec is None:
            out["notes"].append(
                f"the log has no evaluation at the checkpoint's step {step}: its val loss is not reproduced"
            )
        recs = _train_steps(run, step)
        if len(recs) >= 2 and _has(tc, "seed", "batch_size"):
            out["train_same"] = _paired(model, corpus, tc, recs, "train", "shift")
    if _has(tc, "batch_size") and step:
        out["epochs"] = step * tc["batch_size"] * ctx / max(len(corpus.train), 1)
    out["split_gap"] = unigram_split_gap(corpus)
    return out


def unigram_split_gap(corpus) -> float:
    """How much harder the validation split is than the training split for a context-free model: the
    cross-entropy of val under the train split's token frequencies minus that of train itself (nats; both
    smoothed by half a count). The splits of one corpus differ by a few hundredths to a tenth of a nat."""
    import numpy as np

    v = corpus.vocab_size
    ct, cv = np.bincount(corpus.train, minlength=v), np.bincount(corpus.val, minlength=v)
    logp = np.log((ct + 0.5) / (ct.sum() + 0.5 * v))
    return float(-(cv * logp).sum() / cv.sum() + (ct * logp).sum() / ct.sum())


def _has(tc: dict, *keys) -> bool:
    return all(isinstance(tc.get(k), int) and not isinstance(tc.get(k), bool) for k in keys)


def reading(run: Run, number: str, split: str, how: str = "shift"):
    """The logged ``number`` ("val": the val loss at the checkpoint's step; "train": the last steps' training
    loss) measured under another reading of the data: ``split`` "val" or "train", ``how`` "shift" (the
    expected next-token targets), "no_shift" (targets = inputs) or "no_mask" (no causal mask). A Loss (val,
    paired, se None) or a Paired (train), or None when the run cannot be reproduced."""
    m = measurements(run)
    if m["_built"] is None:
        return None
    model, corpus, tc = m["_built"]
    cache = m.setdefault("_readings", {})
    key = (number, split, how)
    if key not in cache:
        with torch.no_grad():
            if number == "val" and m["val_same"] is not None:
                x, y = _eval_windows(_split(corpus, split), tc, model.cfg.context)
                cache[key] = Loss(float(_losses(model, x, y, how).mean()), None, len(x), x.numel())
            elif number == "train" and m["train_same"] is not None:
                cache[key] = _paired(model, corpus, tc, _train_steps(run, m["step"]), split, how)
            else:
                cache[key] = None
    return cache[key]


def summary(run: Run) -> dict:
    """The measurements as plain numbers (for --json and the fault zoo's margins)."""
    m = measurements(run)
    out = {}
    if m["val_same"] is not None and m["val_logged"] is not None:
        out["log_repro_gap"] = abs(m["val_same"].mean - m["val_logged"])
    if m["val_fresh"] is not None:
        out["val_fresh"], out["val_fresh_se"] = m["val_fresh"].mean, m["val_fresh"].se
    if m["train_fresh"] is not None:
        out["train_fresh"], out["train_fresh_se"] = m["train_fresh"].mean, m["train_fresh"].se
    if m["val_fresh"] is not None and m["train_fresh"] is not None:
        gap = m["val_fresh"].mean - m["train_fresh"].mean - (m["split_gap"] or 0.0)  # beyond the splits' own
        out["train_over_val"], out["val_over_train"] = gap, -gap  # > 0: train below val
        out["split_gap"] = m["split_gap"]
    if m["train_same"] is not None:
        out["train_repro_gap"] = m["train_same"].gap
    if m["epochs"] is not None:
        out["epochs"] = m["epochs"]
    return out
