"""The logs trainers write, as the records the doctor reads: one vocabulary for trainer_state.json, TensorBoard
and Weights & Biases.

The readers (hf_state.py, tensorboard_log.py, and foreign_logs.py for a W&B history CSV) give ``rows``: {step:
{name: number}} with the trainer's own names. ``records`` turns them into metrics.jsonl records:

- names: a W&B chart export's ``<run> - `` prefix goes, its ``__MIN``/``__MAX`` columns are left out;
  ``train/x`` is ``x`` and ``eval/x`` is ``eval_x`` (TensorBoard and W&B as the Trainer's callbacks write them);
- step records: ``loss``, ``learning_rate`` (lr), ``grad_norm``, ``weight_decay`` (wd) and TRL's ``entropy``,
  ``mean_token_accuracy``, kept as given;
- eval records: bitnet_ref.watch's figures (``bitnet/val_loss``, ``bitnet/unique_tokens``,
  ``bitnet/health_flip_rate``, ...) at the steps the callback measured; the health means stand in for the
  per-layer figures as one summary layer, which the cause rules read like any other (a mean is zero only where
  every layer is, so "no gradient in any layer" stays exact; rules on medians read the mean, which a note says);
  without them, ``eval_loss``; without that, the train loss (a note says so);
- notes: which verdicts the log cannot reach (no unique-token figures: no collapse or dip can be judged) and the
  nearest evidence it does hold (TRL's entropy against the loss, the token accuracy), stated as evidence, not
  as a verdict. Every upper-case name is a number in thresholds.py.

What this is not: a reader of any file (those are the modules named above).
"""

from __future__ import annotations

import math
import re

from bitnet_ref import metrics_log as metrics
from bitnet_ref.thresholds import OVERCONFIDENT_FRAC

PREFIX = "bitnet/"  # bitnet_ref.watch's namespace in a trainer's logs
SUMMARY_LAYER = "(mean over the ternary layers)"
STEP_NAMES = {"loss": "loss", "learning_rate": "lr", "lr": "lr", "grad_norm": "grad_norm", "weight_decay": "wd"}
STEP_EXTRAS = ("entropy", "mean_token_accuracy", "num_tokens")
STEP_COLUMNS = ("train_global_step", "global_step", "step", "_step")  # W&B: the Trainer's step before W&B's own


def canonical(name: str) -> str | None:
    """A trainer's metric name in the Trainer's own spelling (``eval_loss``, ``bitnet/unique_tokens``); None for a
    column to leave out (W&B's min/max envelopes)."""
    name = str(name).strip()
    if " - " in name:  # W&B chart export: "<run name> - train/loss"
        name = name.rsplit(" - ", 1)[1]
    if name.endswith(("__MIN", "__MAX")):
        return None
    if name.startswith("train/"):
        name = name[len("train/") :]
    elif name.startswith("eval/"):
        name = "eval_" + name[len("eval/") :]
    return "train_global_step" if name == "global_step" else name


def step_column(names) -> str | None:
    """Which column of a W&B history holds the step: the Trainer's global step, else W&B's own counter."""
    canon = {canonical(n): n for n in names if canonical(n) is not None}
    for k in STEP_COLUMNS:
        if k in canon:
            return canon[k]
    return next((n for n in names if str(n).strip().lower() == "step"), None)


def records(rows: dict, source: str) -> tuple[list, list]:
    """(metrics records in step order, notes) from {step: {trainer name: number}}."""
    rows = {int(s): {canonical(k): v for k, v in r.items() if canonical(k) is not None} for s, r in rows.items()}
    ours = {s: {k[len(PREFIX) :]: v for k, v in r.items() if k.startswith(PREFIX)} for s, r in rows.items()}
    ours = {s: r for s, r in ours.items() if r}
    has_val = any("val_loss" in r for r in ours.values())
    has_eval_loss = any("eval_loss" in r for r in rows.values())
    out = []
    for s in sorted(rows):
        r = rows[s]
        step = {STEP_NAMES[k]: v for k, v in r.items() if k in STEP_NAMES and v is not None}
        step.update({k: r[k] for k in STEP_EXTRAS if r.get(k) is not None})
        if "loss" in step:
            out.append({"kind": metrics.STEP, "step": s, **{k: _finite(v) for k, v in step.items()}})
        val = ours.get(s, {}).get("val_loss") if has_val else r.get("eval_loss") if has_eval_loss else r.get("loss")
        if val is not None:  # NaN stays: it is written as null, as the trainer writes a non-finite loss
            out.append(_eval_record(s, val, ours.get(s, {})))
    return out, (_notes(rows, ours, has_val, has_eval_loss, source) if out else [])


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _eval_record(step: int, val, figures: dict) -> dict:
    rec = {"kind": metrics.EVAL, "step": step, "val_loss": _finite(val)}
    for k, v in figures.items():
        if k not in ("val_loss", "unigram_entropy"):
            rec[k] = _finite(v)
    health = {k[len("health_") :]: v for k, v in rec.items() if k.startswith("health_")}
    if health:
        rec["layers"] = {SUMMARY_LAYER: health}
    return rec


def _notes(rows: dict, ours: dict, has_val: bool, has_eval_loss: bool, source: str) -> list:
    notes = []
    if has_val:
        notes.append(
            f"{source}: bitnet_ref.watch figures at {len(ours)} steps: val loss on the callback's fixed windows, "
            "the diversity probe and the ternary health (as means over the layers: cause rules that take a "
            "median over layers read the mean here)"
        )
    elif has_eval_loss:
        notes.append(f"{source}: eval_loss stands in for the val loss")
    else:
        notes.append(f"{source}: no val loss (eval_loss): the train loss stands in for it")
    if not any("unique_tokens" in r for r in ours.values()):
        notes.append(
            "no unique-token figures: diversity_collapse and transient_dip cannot be judged from this log, and a "
            "loss near the unigram entropy is not told from a model repeating one token; record them with "
            "bitnet_ref.watch.hf.BitNetCallback (or watch() in any loop)"
        )
        notes += nearest_evidence(rows)
    return notes


def nearest_evidence(rows: dict) -> list:
    """What TRL's per-step entropy and token accuracy say, as evidence lines (not a verdict)."""
    steps = sorted(rows)
    ent = [(s, rows[s]["entropy"]) for s in steps if _finite(rows[s].get("entropy")) is not None]
    acc = [
        (s, rows[s]["mean_token_accuracy"]) for s in steps if _finite(rows[s].get("mean_token_accuracy")) is not None
    ]
    loss = [(s, rows[s]["loss"]) for s in steps if _finite(rows[s].get("loss")) is not None]
    lines = []
    if ent:
        lines.append(
            f"nearest evidence, not a verdict: the entropy of the model's next-token predictions on training "
            f"batches (TRL's entropy) went {ent[0][1]:.3f} -> {ent[-1][1]:.3f} nats (steps {ent[0][0]} -> {ent[-1][0]})"
        )
        if loss and ent[-1][1] < OVERCONFIDENT_FRAC * loss[-1][1]:
            lines.append(
                f"nearest evidence, not a verdict: the predictions are far sharper than they are right (entropy "
                f"{ent[-1][1]:.3f} nats < {OVERCONFIDENT_FRAC} x the train loss {loss[-1][1]:.3f}): a model that "
                "repeats itself shows this; unique tokens would tell"
            )
    if acc:
        lines.append(
            f"nearest evidence, not a verdict: the mean token accuracy (TRL) went {acc[0][1]:.3f} -> "
            f"{acc[-1][1]:.3f} (steps {acc[0][0]} -> {acc[-1][0]})"
        )
    return lines


def logged_unigram_entropy(rows: dict) -> float | None:
    """The unigram entropy bitnet_ref.watch's callback logged (``bitnet/unigram_entropy``), if any."""
    vals = [_finite(v) for r in rows.values() for k, v in r.items() if canonical(k) == PREFIX + "unigram_entropy"]
    vals = [v for v in vals if v is not None and v > 0]
    return vals[-1] if vals else None


def vocab_from_config(config: dict) -> int | None:
    """``vocab_size`` of a transformers config.json dict (or its ``text_config``), when it is a sane integer."""
    for c in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else None):
        v = c.get("vocab_size") if isinstance(c, dict) else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            return v
    return None


def looks_like_wandb(names) -> bool:
    """A CSV from W&B: its step counter ``_step``, or chart-export columns ``<run> - <metric>``."""
    return any(str(n).strip() in ("_step", "_runtime", "_timestamp") or re.search(r" - \S", str(n)) for n in names)
