"""The doctor: read a training run's metrics and say whether it is healthy, and if not, most likely why.

    python -m bitnet_ref.doctor RUN_DIR [--baseline FP_RUN_DIR] [--json]

It reads ``RUN_DIR/metrics.jsonl`` (a torn or garbled line is skipped and reported), the checkpoint
``RUN_DIR/ckpt.pt`` when the metrics lack something it holds, and ``RUN_DIR/decode_probe.json`` when the
decode probe left one. It prints a verdict line, a cause line and the evidence lines with the numbers; with
``--json`` one JSON object with the same content. Exit 0 for any diagnosis, 2 for unusable input.

Verdicts (from the losses and the diversity probe; the first that applies):
  diverged            a non-finite loss, or the train loss ends > DIVERGE_RISE nats above its best
  not_learning        final val loss >= NOT_LEARNING_FRAC * ln(vocab)
  stuck_unigram       final val loss >= UNIGRAM_FRAC * unigram entropy, and the FP baseline (when given)
                      ends at least BASELINE_GAP_FRAC * unigram entropy lower
  diversity_collapse  past the unigram phase (evals with val loss < UNIGRAM_FRAC * unigram entropy), the final
                      unique tokens are <= COLLAPSE_FRAC of the best there (or of the baseline's final), that
                      best being >= MIN_UNIQUE_SIGNAL, while the val loss still fell by >= LOSS_FELL
  transient_dip       past the unigram phase, unique tokens fell to <= DIP_FRAC of an earlier value (itself
                      >= MIN_UNIQUE_SIGNAL), then came back to >= RECOVER_FRAC of it by the end
  A fall in unique tokens while the val loss is still at unigram level is the expected "unigram phase"
  (greedy decoding of a frequency-only model repeats its most frequent token): a note, not a verdict. A
  final greedy output with one token >= COLLAPSE_TOP_SHARE of it that did not fall is also only a note.
  faulty              the loss and samples look fine, but the health metrics show a known fault
  healthy             none of the above

Causes (from the health metrics in the eval records, never from the run's config; the first that applies
is "the" cause, all that apply are listed):
  parity_mismatch  decode_probe.json reports that the decode path disagrees with the training path
  missing_ste      latent-weight gradient norm <= GRAD_ZERO in every BitLinear (or, without gradient
                   metrics, a flip rate of exactly 0 at every evaluation while the LR is > 0)
  clamp_ste        >= DEAD_CLIP_FRAC of clip-region gradients are exactly 0, at least DEAD_GAP more than the
                   share of exactly-zero gradients on 0 codes
  missing_dequant  median BitLinear output RMS / FP-linear output RMS outside [OUT_RATIO_LOW, OUT_RATIO_HIGH]
  quant_head       embedding vectors with <= EMBED_LEVELS_MAX distinct values, or >= LATTICE_MIN of the
                   logits on an integer lattice (int8 x ternary head)
  no_subln         median RMS of the activation quantizer's input outside [ACT_RMS_LOW, ACT_RMS_HIGH]
  const_wd         weight decay > WD_ZERO at stage-2 steps (stage 2 found from the LR drop), or, without a
                   stage 2, still >= WD_KEPT_FRAC of its peak over the last 10% of steps
  flip_not_falling per-step flip rate over the last third of >= FLIP_MIN_EVALS measured intervals is
                   >= FLIP_RISE x that over the middle third: LR or weight decay too high (a plateau,
                   >= FLIP_KEEP_FRAC, is only a note: stage-1-only runs plateau too)
  zero_drift       mean share of 0 codes < ZERO_LOW or > ZERO_HIGH

What it is not: a replacement for reading the curves. The thresholds were set on short real runs of the tiny
preset (tests/test_doctor.py, tools/experiments.py --quick: the reference, each ablation, stage-1-only, LR/3,
LR 1e-2, LR 0.3, WD 2.0, LR 1e-6); they are named constants below.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

# ---- verdict thresholds
DIVERGE_RISE = 1.0  # nats: train loss (smoothed) ending this far above its best smoothed value = blow-up
NOT_LEARNING_FRAC = 0.95  # val loss >= this * ln(V): the model predicts about as well as uniform guessing
UNIGRAM_FRAC = 0.95  # val loss >= this * unigram entropy: no better than a context-free model
BASELINE_GAP_FRAC = 0.1  # ... while the FP baseline ends this share of the unigram entropy lower
COLLAPSE_FRAC = 0.34  # final unique tokens at most this share of the run's (or baseline's) best = collapse
COLLAPSE_TOP_SHARE = 0.5  # or one token takes at least half of the greedy output
LOSS_FELL = 0.05  # nats: "the loss still falls" = last val loss this much below the first eval's
MIN_UNIQUE_SIGNAL = 4  # a fall from fewer unique tokens than this (2 -> 1) is probe noise, not a dip or collapse
DIP_FRAC = 0.5  # a dip: unique tokens at or below half of an earlier value...
RECOVER_FRAC = 0.8  # ...recovered: back to at least 80% of that earlier value at the end

# ---- cause thresholds
GRAD_ZERO = 1e-12  # a latent-weight gradient norm this small is no gradient
DEAD_CLIP_FRAC = 0.9  # share of exactly-zero gradients in the clip region that marks the clamp-STE bug
DEAD_GAP = 0.5  # ...and at least this much above the exactly-zero share on 0 codes (healthy: about equal, both
#                  from input columns that are all zero in the batch)
OUT_RATIO_LOW, OUT_RATIO_HIGH = 0.2, 5.0  # healthy ternary/FP output RMS is ~0.6-1.0; 1/beta or 127x is far out
ACT_RMS_LOW, ACT_RMS_HIGH = 0.25, 4.0  # behind an RMSNorm with gain ~1 the quantizer input RMS is ~1
EMBED_LEVELS_MAX = 3.5  # a ternary embedding vector has at most 3 distinct values (FP: ~d_model)
LATTICE_MIN = 0.5  # share of logits on an integer lattice: ~1 for an int8 x ternary head, ~0.05 for FP
WD_ZERO = 1e-8  # stage-2 weight decay above this is "on"
WD_KEPT_FRAC = 0.5  # without a stage 2: WD still at half its peak at the end = never decayed
LR_DROP = 0.95  # a step-to-step LR ratio below this after warmup marks the stage-1 -> stage-2 drop
FLIP_RISE = 1.25  # per-step flip rate over the last third of evals >= 1.25x the middle third: rising (a cause)
FLIP_KEEP_FRAC = 0.7  # last third still >= 70% of the middle third: a plateau (a note, not a cause: stage-1-only
#                       runs at the standard LR plateau too; on short tiny runs a 20x WD or 7x LR looked the same)
FLIP_MIN_EVALS = 6  # measured flip intervals needed before judging the trend
ZERO_LOW, ZERO_HIGH = 0.05, 0.60  # share of 0 codes outside this band: zeros drifting (FAQ: ~1/3 each)

VERDICTS = {
    "healthy": "healthy",
    "faulty": "learning, but the health metrics show a known fault",
    "not_learning": "not learning: the loss stays near ln(vocab)",
    "stuck_unigram": "stuck at unigram level: no better than a context-free table of token frequencies",
    "diversity_collapse": "diversity collapse while the loss still falls",
    "transient_dip": "transient dip, recovered: unique tokens fell and came back",
    "diverged": "diverged: the loss became NaN/inf or blew up",
}
CAUSES = {
    "parity_mismatch": "train/decode parity failure: the decode path does not compute what training did",
    "missing_ste": "missing STE: no gradient reaches the latent weights",
    "clamp_ste": "clamp-STE bug: clipped (saturated) weights get zero gradient",
    "missing_dequant": "missing dequantization: BitLinear outputs are off by the weight/activation scales",
    "quant_head": "quantized embedding or output head: the full-precision path is ternary",
    "no_subln": "no RMSNorm before the activation quantizer: its input scale drifts far from 1",
    "const_wd": "weight decay kept on through stage 2: latent weights keep being pulled toward 0 (recipe: WD 0)",
    "flip_not_falling": "flip rate never falls: LR or weight decay too high for this model",
    "zero_drift": "share of 0 codes drifting out of the healthy band",
}


class DoctorError(Exception):
    """Unusable input; the message is one line."""


@dataclass
class Run:
    path: Path
    header: dict
    steps: list  # records with a train loss
    evals: list  # records with a val loss
    skipped_lines: int = 0
    stopped: str | None = None  # the trainer's "stop" record (non-finite loss/gradient), if any
    ended: bool = False  # the trainer wrote its "end" record: the run completed
    ckpt: dict | None = None
    probe: dict | None = None


@dataclass
class Diagnosis:
    verdict: str
    cause: str | None
    evidence: list = field(default_factory=list)
    findings: list = field(default_factory=list)  # every cause that applied: {"cause", "evidence"}
    notes: list = field(default_factory=list)

    def as_dict(self, run: Run | None = None) -> dict:
        d = {"verdict": self.verdict, "verdict_text": VERDICTS[self.verdict], "cause": self.cause,
             "cause_text": CAUSES.get(self.cause) if self.cause else None, "evidence": self.evidence,
             "findings": self.findings, "notes": self.notes}
        if run is not None:
            d["run"] = str(run.path)
            d["config"] = {k: run.header.get(k) for k in ("config", "train_config", "model", "schedule", "data")
                           if k in run.header}
        return d


# ---------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> tuple[list, int]:
    """Parse a metrics.jsonl: (records, number of lines skipped as torn or not JSON objects)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DoctorError(f"cannot read {path}: {e.strerror or e}") from None
    records, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            skipped += 1
    return records, skipped


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def load_run(run_dir) -> Run:
    """Read a run directory; DoctorError for anything that makes a diagnosis impossible."""
    path = Path(run_dir)
    if not path.exists():
        raise DoctorError(f"{path}: no such run directory")
    if not path.is_dir():
        raise DoctorError(f"{path} is not a directory; pass the run directory that holds metrics.jsonl")
    mpath = path / "metrics.jsonl"
    if not mpath.is_file():
        raise DoctorError(f"{path} has no metrics.jsonl; is it a bitnet_ref run directory?")
    records, skipped = read_metrics(mpath)
    header = next((r for r in records if "ln_vocab" in r or "unigram_entropy" in r or "config" in r), {})
    steps, evals = _split(records)
    if not steps and not evals:
        raise DoctorError(f"{mpath} holds no training records (empty, truncated or not a bitnet_ref metrics file)")
    run = Run(path, header, steps, evals, skipped, stopped=_stop_reason(records),
              ended=any(r.get("kind") == "end" for r in records))
    ck = path / "ckpt.pt"
    if ck.is_file():
        from .checkpoint import CheckpointError, load_checkpoint

        try:
            run.ckpt = load_checkpoint(ck)
        except CheckpointError as e:
            run.ckpt = {"error": str(e)}
    pp = path / "decode_probe.json"
    if pp.is_file():
        try:
            run.probe = json.loads(pp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run.probe = {"error": "decode_probe.json is not valid JSON"}
    return run


def run_from_records(records: list, path: str = "<records>") -> Run:
    """A Run built from in-memory records (tests, tools)."""
    header = next((r for r in records if "ln_vocab" in r or "unigram_entropy" in r or "config" in r), {})
    steps, evals = _split(records)
    return Run(Path(path), header, steps, evals, stopped=_stop_reason(records),
               ended=any(r.get("kind") == "end" for r in records))


def _split(records: list) -> tuple[list, list]:
    """(train-step records, eval records); records with a "kind" are taken by it (header/end are neither)."""
    steps = [r for r in records if r.get("kind", "step") == "step" and _num(r.get("step")) is not None and "loss" in r]
    evals = [r for r in records if r.get("kind", "eval") == "eval" and "val_loss" in r]
    return steps, evals


def _stop_reason(records: list) -> str | None:
    stop = next((r for r in records if r.get("kind") == "stop"), None)
    return None if stop is None else f"training stopped at step {stop.get('step')}: {stop.get('reason', 'no reason given')}"


# ---------------------------------------------------------------------------- helpers


def _baselines(run: Run) -> tuple[float | None, float | None]:
    ck = run.ckpt if run.ckpt and "error" not in run.ckpt else {}
    ln_v = _num(run.header.get("ln_vocab")) or _num(ck.get("ln_vocab"))
    uni = _num(run.header.get("unigram_entropy")) or _num(ck.get("unigram_entropy"))
    if ln_v is None:
        v = _num((run.header.get("config") or {}).get("vocab_size")) if isinstance(run.header.get("config"), dict) else None
        ln_v = math.log(v) if v else None
    return ln_v, uni


def _smooth_tail(values: list, frac: float = 0.1) -> float:
    k = max(1, int(len(values) * frac))
    return sum(values[-k:]) / k


def _best_smoothed(values: list, frac: float = 0.1) -> float:
    k = max(1, int(len(values) * frac))
    return min(sum(values[i:i + k]) / k for i in range(0, len(values) - k + 1))


def _median(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _layer_values(rec: dict, key: str) -> list:
    layers = rec.get("layers")
    if not isinstance(layers, dict):
        return []
    return [_num(v.get(key)) for v in layers.values() if isinstance(v, dict) and _num(v.get(key)) is not None]


def _last_with(evals: list, key: str) -> dict | None:
    """The last eval record whose health summary `key` (or per-layer field) is a number."""
    for rec in reversed(evals):
        if _num(rec.get(f"health_{key}")) is not None or _layer_values(rec, key):
            return rec
    return None


def _fmt(x, nd=3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)):
        return f"{x:.3g}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _stage2_steps(run: Run) -> tuple[list, str]:
    """Step records in stage 2, found from the LR drop; (records, how it was found)."""
    lrs = [(r, _num(r.get("lr"))) for r in run.steps if _num(r.get("lr")) is not None]
    peak_i = max(range(len(lrs)), key=lambda i: lrs[i][1]) if lrs else 0
    for i in range(max(peak_i, 1), len(lrs)):
        prev, cur = lrs[i - 1][1], lrs[i][1]
        if prev > 0 and cur / prev < LR_DROP:
            return [r for r, _ in lrs[i:]], f"LR drop {prev:.3g} -> {cur:.3g} at step {lrs[i][0]['step']}"
    return [], "no LR drop found (stage 1 only)"


# ---------------------------------------------------------------------------- causes


def find_causes(run: Run) -> list:
    """Every cause rule that fires, in priority order: [{"cause", "evidence": [str]}]."""
    out = []
    ev = run.evals

    def add(cause, *lines):
        out.append({"cause": cause, "evidence": list(lines)})

    # parity (decode probe)
    p = run.probe
    if isinstance(p, dict) and "error" not in p:
        par = p.get("parity")
        ok = par.get("ok") if isinstance(par, dict) else par
        if ok is False:
            detail = (f"greedy tokens identical: {par.get('tokens_identical')}, max relative logit difference "
                      f"{_fmt(_num(par.get('max_rel_logit_diff')))} (tolerance {_fmt(_num(par.get('rel_tol')))})"
                      if isinstance(par, dict) else "parity: false")
            add("parity_mismatch", f"decode_probe.json: the packed decode path disagrees with training: {detail}")

    # missing STE
    rec = _last_with(ev, "grad_norm")
    if rec is not None:
        g = _layer_values(rec, "grad_norm")
        if g and max(g) <= GRAD_ZERO:
            add("missing_ste", f"latent-weight gradient norm is {max(g):.3g} in all {len(g)} BitLinears "
                               f"at step {rec.get('step')}")
    else:
        flips = [(_num(r.get("health_flip_rate")), r) for r in ev if _num(r.get("health_flip_rate")) is not None]
        lr_on = any((_num(r.get("lr")) or 0) > 0 for r in run.steps)
        if len(flips) >= 2 and lr_on and all(f == 0 for f, _ in flips):
            add("missing_ste", f"no ternary code changed at any of {len(flips)} evaluations while LR > 0 "
                               "(no gradient metrics logged)")

    # clamp STE
    rec = _last_with(ev, "grad_dead_clip")
    if rec is not None and not any(c["cause"] == "missing_ste" for c in out):
        dc, dz = _median(_layer_values(rec, "grad_dead_clip")), _median(_layer_values(rec, "grad_dead_zero"))
        ds = _median(_layer_values(rec, "grad_dead_sat"))
        if dc is not None and dz is not None and dc >= DEAD_CLIP_FRAC and dc - dz >= DEAD_GAP:
            add("clamp_ste", f"exactly-zero gradients: {dc:.0%} of clip-region weights (|w|/beta > 1.5), "
                             f"{_fmt(ds)} of +-1 codes, {dz:.0%} of 0 codes (median over layers, step {rec.get('step')})")

    # missing dequant
    rec = _last_with(ev, "out_ratio")
    if rec is not None:
        r = _median(_layer_values(rec, "out_ratio"))
        if r is not None and not OUT_RATIO_LOW <= r <= OUT_RATIO_HIGH:
            add("missing_dequant", f"BitLinear output RMS is {_fmt(r)}x that of an FP linear with the same weights "
                                   f"(median over layers; healthy ~0.6-1, allowed [{OUT_RATIO_LOW}, {OUT_RATIO_HIGH}])")

    # quantized head / embedding
    rec = _last_with(ev, "embed_levels") or _last_with(ev, "logit_lattice")
    if rec is not None:
        lv, lat = _num(rec.get("health_embed_levels")), _num(rec.get("health_logit_lattice"))
        lines = []
        if lv is not None and lv <= EMBED_LEVELS_MAX:
            lines.append(f"token embeddings reach the first block with {lv:.1f} distinct values per vector (ternary)")
        if lat is not None and lat >= LATTICE_MIN:
            lines.append(f"{lat:.0%} of logits lie on an integer lattice (int8 x ternary output head)")
        if lines:
            add("quant_head", *lines)

    # no norm before the activation quantizer
    rec = _last_with(ev, "act_in_rms")
    if rec is not None:
        vals = _layer_values(rec, "act_in_rms")
        a = _median(vals)
        if a is not None and not ACT_RMS_LOW <= a <= ACT_RMS_HIGH:
            add("no_subln", f"activation-quantizer input RMS: median {_fmt(a)}, range {_fmt(min(vals))}-"
                            f"{_fmt(max(vals))} over {len(vals)} layers (behind an RMSNorm it is ~1)")

    # weight decay kept on
    s2, how = _stage2_steps(run)
    wds = [_num(r.get("wd")) for r in run.steps if _num(r.get("wd")) is not None]
    if s2:
        w2 = [_num(r.get("wd")) for r in s2 if _num(r.get("wd")) is not None]
        if w2 and max(w2) > WD_ZERO:
            add("const_wd", f"weight decay {max(w2):.3g} at stage-2 steps ({how}); the recipe sets it to 0",
                *_flip_trend_lines(run))
    elif wds and max(wds) > 0 and _complete(run):
        tail = wds[-max(1, len(wds) // 10):]
        if min(tail) >= WD_KEPT_FRAC * max(wds):
            add("const_wd", f"weight decay still {min(tail):.3g} over the last 10% of steps (peak {max(wds):.3g}); "
                            "it should decay toward 0", *_flip_trend_lines(run))

    # flip rate rising
    trend = flip_trend(run)
    if trend is not None and trend[0] > 0 and trend[1] >= FLIP_RISE * trend[0]:
        add("flip_not_falling", f"flip rate per step rises from {trend[0]:.3g} (middle third of evals) to "
                                f"{trend[1]:.3g} (last third): codes keep flipping faster")

    # zeros drifting (from the checkpoint's weights when the metrics have no health fields)
    rec = _last_with(ev, "frac_zero")
    z, where = None, None
    if rec is not None:
        z = _num(rec.get("health_frac_zero")) or _median(_layer_values(rec, "frac_zero"))
        where = f"at step {rec.get('step')}"
    elif run.ckpt and "error" not in run.ckpt:
        shares = checkpoint_zero_shares(run.ckpt)
        if shares:
            z = sum(shares.values()) / len(shares)
            where = f"in ckpt.pt (step {run.ckpt.get('step')}, {len(shares)} matrices; no health metrics logged)"
    if z is not None and not ZERO_LOW <= z <= ZERO_HIGH:
        add("zero_drift", f"mean share of 0 codes {z:.1%} {where} "
                          f"(healthy band {ZERO_LOW:.0%}-{ZERO_HIGH:.0%}; FAQ: ~1/3)")
    return out


def checkpoint_zero_shares(ckpt: dict) -> dict:
    """Share of 0 codes of every transformer-block matrix in a checkpoint's state dict (absmean ternary rule).

    The embedding and head (first dimension = vocab size) are left out; nothing is read from the config but
    the vocab size.
    """
    import torch

    from .quant import weight_quant

    vocab = (ckpt.get("config") or {}).get("vocab_size")
    out = {}
    for name, t in (ckpt.get("model") or {}).items():
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.is_floating_point() and t.shape[0] != vocab:
            codes, _ = weight_quant(t)
            out[name] = (codes == 0).float().mean().item()
    return out


def _planned_steps(run: Run) -> int | None:
    tc = run.header.get("train_config")
    return tc.get("steps") if isinstance(tc, dict) and isinstance(tc.get("steps"), int) else None


def _complete(run: Run) -> bool:
    """The run reached its planned last step (an "end" record, or the last step record says so)."""
    planned = _planned_steps(run)
    last = run.steps[-1].get("step") if run.steps else None
    return run.ended or (planned is not None and last is not None and last >= planned)


def _flip_per_step(run: Run) -> list:
    """[(step, flip rate per training step)] for the evals where a flip rate was measured."""
    out = []
    for r in run.evals:
        f = _num(r.get("health_flip_rate"))
        steps = [_num(v.get("flip_steps")) for v in (r.get("layers") or {}).values() if isinstance(v, dict)]
        k = next((s for s in steps if s), None)
        if f is not None and k:
            out.append((r.get("step"), f / k))
    return out


def flip_trend(run: Run) -> tuple[float, float] | None:
    """(mean per-step flip rate over the middle third of measured intervals, over the last third), or None."""
    fl = [f for _, f in _flip_per_step(run)]
    if len(fl) < FLIP_MIN_EVALS:
        return None
    k = len(fl) // 3
    mid, last = fl[k:len(fl) - k], fl[len(fl) - k:]
    return sum(mid) / len(mid), sum(last) / len(last)


def _flip_trend_lines(run: Run) -> list:
    fl = _flip_per_step(run)
    if len(fl) < 2:
        return []
    return [f"flip rate per step: {fl[0][1]:.3g} at step {fl[0][0]} -> {fl[-1][1]:.3g} at step {fl[-1][0]}"]


# ---------------------------------------------------------------------------- verdict


def diagnose(run: Run, baseline: Run | None = None) -> Diagnosis:
    """The verdict, the most likely cause, and the evidence behind both."""
    ev, notes = [], []
    ln_v, uni = _baselines(run)
    if run.skipped_lines:
        notes.append(f"{run.skipped_lines} line(s) of metrics.jsonl were torn or not JSON and were skipped")
    par = run.probe.get("parity") if isinstance(run.probe, dict) else None
    if isinstance(par, dict) and par.get("ok") is True:
        notes.append(f"decode_probe.json: the packed decode path matches training (max relative logit difference "
                     f"{_fmt(_num(par.get('max_rel_logit_diff')))})")
    findings = find_causes(run)
    cause = findings[0]["cause"] if findings else None
    for f in findings:
        ev.extend(f["evidence"])

    def done(verdict):
        return Diagnosis(verdict, cause, ev, findings, notes)

    # ---- diverged: a non-finite loss (the trainer logs it as null and writes a "stop" record), or a blow-up
    def nonfinite(r, k):
        return k in r and (r[k] is None or (_num(r[k]) is not None and not math.isfinite(r[k])))
    bad = [r.get("step") for r in run.steps + run.evals if nonfinite(r, "loss") or nonfinite(r, "val_loss")]
    if run.stopped or bad:
        ev.insert(0, run.stopped or f"non-finite loss first at step {bad[0]}")
        return done("diverged")
    losses = [_num(r.get("loss")) for r in run.steps]
    if len(losses) >= 10:
        best, end = _best_smoothed(losses), _smooth_tail(losses)
        if end > best + DIVERGE_RISE:
            ev.insert(0, f"train loss ends at {end:.3f} (mean of last 10%), {end - best:.2f} nats above its best {best:.3f}")
            return done("diverged")

    # ---- loss against ln(V) and the unigram entropy
    planned, last_step = _planned_steps(run), (run.steps[-1].get("step") if run.steps else None)
    if not _complete(run) and planned and last_step is not None:
        notes.append(f"incomplete run: {last_step} of {planned} planned steps logged (still running, stopped or "
                     "killed); judged as it stands")
    vals = [(r.get("step"), _num(r.get("val_loss"))) for r in run.evals if _num(r.get("val_loss")) is not None]
    kind = "val"
    if vals:
        final = vals[-1][1]
        after = [_num(r.get("loss")) for r in run.steps if (r.get("step") or 0) > (vals[-1][0] or 0)]
        if last_step is not None and last_step - (vals[-1][0] or 0) > max(10, 0.1 * last_step) and after:
            final, kind = _smooth_tail(after), "train"
            notes.append(f"the run went {last_step - vals[-1][0]} steps past its last evaluation (step {vals[-1][0]}):"
                         " judged from the recent train loss")
    elif losses:
        notes.append("no evaluation records: verdict from the train loss only")
        final, kind = _smooth_tail(losses), "train"
    else:
        final = None
    if final is not None:
        ev.insert(0, f"final {kind} loss {final:.3f} nats (ln(V) {_fmt(ln_v)}, unigram entropy "
                     f"{_fmt(uni)}" + (f"; first eval {vals[0][1]:.3f} at step {vals[0][0]}" if vals else "") + ")")
    if final is not None and ln_v and final >= NOT_LEARNING_FRAC * ln_v:
        return done("not_learning")
    base_final = None
    if baseline is not None:
        bv = [_num(r.get("val_loss")) for r in baseline.evals if _num(r.get("val_loss")) is not None]
        base_final = bv[-1] if bv else None
        ev.append(f"FP baseline {baseline.path}: final val loss {_fmt(base_final)}")
    if final is not None and uni and final >= UNIGRAM_FRAC * uni:
        if baseline is None:
            notes.append("no FP baseline given: 'stuck at unigram level' judged from the unigram entropy alone")
            return done("stuck_unigram")
        if base_final is not None and base_final <= final - BASELINE_GAP_FRAC * uni:
            return done("stuck_unigram")

    # ---- diversity. While the val loss is still at or above unigram level, greedy decoding repeats the most
    # frequent token (spaces, for code): a dip there is the expected "unigram phase", not a collapse. Only
    # evaluations past it (val loss < UNIGRAM_FRAC * unigram entropy) can show a collapse or a real dip.
    div = [(r.get("step"), _num(r.get("unique_tokens")), _num(r.get("top_token_share")), _num(r.get("val_loss")))
           for r in run.evals if _num(r.get("unique_tokens")) is not None]
    if not div:
        return done("faulty" if cause else "healthy")
    ev.append("unique tokens: " + ", ".join(f"{int(u)}@{s}" for s, u, _, _ in div[-10:]))
    past = [d for d in div if uni is None or (d[3] is not None and d[3] < UNIGRAM_FRAC * uni)]
    early = [d for d in div if d not in past and d[0] != 0]
    if early and past and min(d[1] for d in early) <= DIP_FRAC * max(div[0][1], 1):
        low = min(early, key=lambda d: d[1])
        notes.append(f"unique tokens fell to {int(low[1])} at step {low[0]} while the val loss ({_fmt(low[3])}) was "
                     f"still at unigram level: the expected unigram phase (greedy decoding repeats the most frequent "
                     f"token), not a collapse")
    best_u = max((d[1] for d in past), default=None)
    if baseline is not None:
        bu = [_num(r.get("unique_tokens")) for r in baseline.evals if _num(r.get("unique_tokens")) is not None]
        if bu and best_u is not None:
            ev.append(f"FP baseline: {int(bu[-1])} unique tokens at its last eval")
            best_u = max(best_u, bu[-1])
    last = div[-1]
    fell = len(vals) >= 2 and vals[-1][1] <= vals[0][1] - LOSS_FELL
    if past and past[-1] is last and best_u and best_u >= MIN_UNIQUE_SIGNAL:
        dropped = last[1] <= COLLAPSE_FRAC * best_u
        if dropped and fell:
            ev.append(f"unique tokens {int(last[1])} at the end vs {int(best_u)} earlier past the unigram phase"
                      + (f"; top-token share {last[2]:.2f}" if last[2] is not None else ""))
            return done("diversity_collapse")
        us = [d[1] for d in past]
        for i in range(len(us)):
            for j in range(i + 1, len(us) - 1):
                if us[i] >= MIN_UNIQUE_SIGNAL and us[j] <= DIP_FRAC * us[i] and us[-1] >= RECOVER_FRAC * us[i]:
                    ev.append(f"dip past the unigram phase: {int(us[i])} -> {int(us[j])} unique tokens (step "
                              f"{past[i][0]} -> {past[j][0]}), back to {int(us[-1])} at step {past[-1][0]}")
                    return done("transient_dip")
    trend = flip_trend(run)
    if trend is not None and cause != "flip_not_falling" and trend[1] >= FLIP_KEEP_FRAC * trend[0] > 0:
        notes.append(f"the flip rate plateaus ({trend[0]:.3g} -> {trend[1]:.3g} per step, middle -> last third): "
                     "the LR stays high (stage 1 only?); the recipe's stage 2 (LR drop, WD 0) brings it down")
    if last[2] is not None and last[2] >= COLLAPSE_TOP_SHARE:
        notes.append(f"greedy output is still repetitive (top-token share {last[2]:.2f}, {int(last[1])} unique tokens) "
                     "but did not fall past the unigram phase; small or short runs do this; compare with --baseline")
    return done("faulty" if cause else "healthy")


# ---------------------------------------------------------------------------- CLI


def render(d: dict) -> str:
    lines = [f"verdict: {d['verdict']} -- {d['verdict_text']}",
             f"cause:   {d['cause'] + ' -- ' + d['cause_text'] if d['cause'] else 'none found'}"]
    lines += [f"  - {e}" for e in d["evidence"]]
    others = [f["cause"] for f in d["findings"][1:]]
    if others:
        lines.append(f"also flagged: {', '.join(others)}")
    lines += [f"note: {n}" for n in d["notes"]]
    cfg = d.get("config", {}).get("config")
    if isinstance(cfg, dict):
        lines.append("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_ref.doctor",
                                 description="Diagnose a bitnet_ref training run from its metrics.jsonl.")
    ap.add_argument("run_dir", help="run directory holding metrics.jsonl (and ckpt.pt)")
    ap.add_argument("--baseline", metavar="FP_RUN_DIR",
                    help="a full-precision run of the same data, to tell 'stuck at unigram level' apart")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    try:
        run = load_run(args.run_dir)
        base = load_run(args.baseline) if args.baseline else None
    except DoctorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = diagnose(run, base).as_dict(run)
    print(json.dumps(d, indent=2, default=str) if args.json else render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
