"""Train against validation, both measured from the checkpoint, each against the log: the doctor's data causes.

reproduce.py measures the checkpoint on the batches of the log's last training steps, on the windows of its
last evaluation, and on fresh windows of both splits. Three things can be wrong, and each has its rule here
(a cause rule of causes.CAUSES: evidence lines, or None):

  train_leak    the logged training loss is far below what the checkpoint gives on the very same batches
                (> TRAIN_REPRO_NATS and LOG_MISMATCH_Z standard errors), and reading the batches with targets =
                inputs, or with attention that sees the future, reproduces it: the training forward is not the
                model's (a missing shift, a missing causal mask)
  memorisation  the training loss is far below validation (TRAIN_VAL_GAP_NATS): either the checkpoint's own
                fresh-window training loss (it memorised its split: the epochs say how often it saw it), or the
                logged training loss while the model scores fresh training windows no better than validation
                (the pipeline repeated a small part of the data, which the model memorised)
  wrong_split   the logged val loss is reproduced by the training split read with the evaluation's generator
                (evaluation reads the training split), the logged training loss by the validation split
                (training reads it), or the checkpoint does better on validation than on training windows

What this is not: the log_mismatch verdict (measure.log_check says that the log is not the model's loss; the
rules here say which reading of the data it is).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bitnet_ref.doctor.reproduce import measurements, reading, repro_tol
from bitnet_ref.thresholds import LOG_MISMATCH_Z, TRAIN_REPRO_NATS, TRAIN_VAL_GAP_NATS

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run

LEAKS = (  # no_mask first: a model that learned to read the future also copies under targets = inputs (the
    # nearest key it may see is its own token), while a copying model fails once the targets are shifted again
    ("no_mask", "attention without its causal mask", "the model learned to read each next token from the future"),
    ("no_shift", "targets equal to the inputs (no shift)", "the model learned to copy its input"),
)


def _beyond(gap: float, se: float | None, nats: float) -> bool:
    """A difference past its threshold and past LOG_MISMATCH_Z standard errors."""
    return gap > nats and gap > LOG_MISMATCH_Z * (se or 0.0)


def evaluated_model(run: Run) -> bool:
    """Is ckpt.pt the model the log evaluated at its step? Some reading of the data reproduces the logged val loss
    there (or it cannot be told). If none does, the checkpoint is another model (a stale export) and the log's
    training losses say nothing about it."""
    m = measurements(run)
    same, logged, tol = m["val_same"], m["val_logged"], repro_tol(run)
    if same is None or logged is None or abs(same.mean - logged) <= tol:
        return True
    readings = (reading(run, "val", "train"), reading(run, "val", "val", "no_shift"))
    return any(r is not None and abs(r.mean - logged) <= tol for r in readings)


def _train_unreproduced(run: Run):
    """The paired training-loss measurement when the log's training loss is far below the checkpoint's (and the
    checkpoint is the model the log evaluated), else None."""
    ts = measurements(run)["train_same"]
    if ts is None or not _beyond(ts.gap, ts.se, TRAIN_REPRO_NATS):
        return None
    return ts if evaluated_model(run) else None


def _reproduces(run: Run, split: str, how: str = "shift"):
    """The training-loss reading (split, how) when it reproduces the logged training loss, else None."""
    r = reading(run, "train", split, how)
    return r if r is not None and abs(r.gap) <= TRAIN_REPRO_NATS else None


def _epochs(run: Run) -> str:
    m = measurements(run)
    n = len(m["_built"][1].train) if m["_built"] else 0
    return f"{m['epochs']:.2f} epochs of its {n}-token training split" if m["epochs"] is not None else "n/a epochs"


def train_leak(run: Run) -> list | None:
    ts = _train_unreproduced(run)
    if ts is None:
        return None
    for how, what, meaning in LEAKS:
        r = _reproduces(run, "train", how)
        if r is not None:
            return [
                f"the logged training loss is not what the model gives on its own training batches: {ts.text()}",
                f"read with {what}, the same batches give {r.measured:.3f} (difference {r.gap:+.3f}): {meaning}; "
                "the training forward sees what evaluation does not",
            ]
    return None


def memorisation(run: Run) -> list | None:
    m = measurements(run)
    tf, vf, ts = m["train_fresh"], m["val_fresh"], _train_unreproduced(run)
    if vf is None or tf is None:
        return None
    if ts is not None and not train_leak(run) and not _reproduces(run, "val"):
        if vf.mean - ts.logged > TRAIN_VAL_GAP_NATS:
            return [
                f"the logged training loss {ts.logged:.3f} (steps {ts.steps[0]}-{ts.steps[-1]}) is far below "
                f"the checkpoint's validation loss {vf.text()}",
                f"yet on the batches the data gives for those steps the checkpoint scores {ts.measured:.3f}, and on "
                f"fresh training windows {tf.text()}: it learned a stream that the training split does not give, "
                f"a pipeline that repeats a small part of the data (the run saw {_epochs(run)}: too little to "
                "memorise the split itself)",
            ]
    gap, se = vf.mean - tf.mean - (m["split_gap"] or 0.0), math.hypot(vf.se or 0.0, tf.se or 0.0)
    if _beyond(gap, se, TRAIN_VAL_GAP_NATS):
        return [
            f"the checkpoint's training loss is far below its validation loss: train {tf.text()}, val "
            f"{vf.text()}: {gap:.3f} nats = {gap / se:.0f} SE beyond the {_split_gap(m)}: it memorises its "
            f"training data (the run saw {_epochs(run)})"
        ]
    return None


def _split_gap(m: dict) -> str:
    if m["split_gap"] is None:
        return "splits' own difference (unknown)"
    return f"{m['split_gap']:+.3f} nats the splits differ by at the unigram level"


def wrong_split(run: Run) -> list | None:
    m = measurements(run)
    lines = []
    same, logged = m["val_same"], m["val_logged"]
    if same is not None and logged is not None and abs(same.mean - logged) > repro_tol(run):
        r = reading(run, "val", "train")
        if r is not None and abs(r.mean - logged) <= repro_tol(run):
            lines.append(
                f"the logged val loss {logged:.4f} at step {m['step']} is the checkpoint's loss on the training "
                f"split, read with the evaluation's own generator ({r.mean:.4f}); on the validation windows it is "
                f"{same.mean:.4f}: evaluation reads the training split"
            )
    ts = _train_unreproduced(run)
    r = _reproduces(run, "val") if ts is not None else None
    if r is not None:
        lines.append(
            f"the logged training loss {ts.logged:.3f} is reproduced by the validation split read with the "
            f"training generator ({r.measured:.3f}), not by the training split ({ts.measured:.3f}): training reads "
            "the validation split"
        )
    tf, vf = m["train_fresh"], m["val_fresh"]
    if not lines and tf is not None and vf is not None:
        gap, se = tf.mean - vf.mean + (m["split_gap"] or 0.0), math.hypot(vf.se or 0.0, tf.se or 0.0)
        if _beyond(gap, se, TRAIN_VAL_GAP_NATS):
            lines.append(
                f"the checkpoint does better on validation than on training data: val {vf.text()}, train "
                f"{tf.text()}: {gap:.3f} nats = {gap / se:.0f} SE beyond the {_split_gap(m)}: it was trained on "
                "the validation split, or the splits are not what the run says"
            )
    return lines or None
