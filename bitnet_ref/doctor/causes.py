"""The doctor's causes: why a run is unhealthy, as a table of small named rules over its health metrics.

Each rule reads a run (run.Run: its eval and step records, its checkpoint, its decode_probe.json) and
returns the evidence lines that name the cause, or None. ``CAUSES`` lists them in priority order: every
rule that fires is a finding, and the first is "the" cause. The rules read what the run measured, never
its ablation list (the optimizer rules compare what it did with its own configuration); their thresholds are in
thresholds.py. Rules of a subject with several parts live in their own module (decode_check.py, splits.py,
optimizer_config.py, upstream.py) and are listed here.

  parity_mismatch  decode_probe.json reports that the decode path disagrees with the training path
  cache_mismatch   cached decoding disagrees with a full recompute (decode_check.py: the probe's, the doctor's own,
                   or the logged samples)
  train_leak       the logged training loss is reproduced only by a leak: targets = inputs, no causal mask
                   (splits.py; wrong_split and memorisation are its neighbours there)
  wrong_split      evaluation reads the training split, training the validation split, or val beats train
  memorisation     train far below validation: a memorised split (epochs) or a repeating pipeline
  missing_ste      latent-weight gradient norm <= GRAD_ZERO in every BitLinear (or, without gradient
                   metrics, a flip rate of exactly 0 at every evaluation while the LR is > 0)
  clamp_ste        >= DEAD_CLIP_FRAC of clip-region gradients are exactly 0, at least DEAD_GAP more than the
                   share of exactly-zero gradients on 0 codes
  low_precision    ckpt.pt holds master weights or AdamW moments below fp32 (before grad_flow: it explains
                   updates that round away)
  lr_schedule      the logged LR is off its configured schedule (optimizer_config.py)
  optimizer_step   AdamW's RMS step / LR outside [ADAM_STEP_LOW, ADAM_STEP_HIGH]; the setting that does it named
  grad_flow        where the gradient flow stops (health "groups" and layers): a parameter group (latent, norm,
                   embed, head) or a BitLinear with gradient norm <= GRAD_ZERO while others get one; a median over
                   BitLinears of >= DEAD_GRAD_FRAC exactly-zero gradient elements; a group or layer whose update ratio
                   is UPDATE_GAP x below the largest group's / the median layer's / the FP twin's; each followed
                   upstream to what starves it (upstream.py: "chain:" lines)
  coarse_logits    >= FLOAT_GRID_MIN of the logits fit a coarse float format's significand (bf16/fp16/fp8-like
                   rounding in the full-precision path)
  missing_dequant  median BitLinear output RMS / FP-linear output RMS outside [OUT_RATIO_LOW, OUT_RATIO_HIGH]
  quant_head       embedding vectors with <= EMBED_LEVELS_MAX distinct values, or >= LATTICE_MIN of the
                   logits on an integer lattice (int8 x ternary head) that is not a coarse float grid
  no_subln         median RMS of the activation quantizer's input outside [ACT_RMS_LOW, ACT_RMS_HIGH]
  const_wd         weight decay > WD_ZERO at stage-2 steps (stage 2 found from an LR ratio < LR_DROP), or,
                   without a stage 2, still >= WD_KEPT_FRAC of its peak over the last 10% of steps
  flip_not_falling per-step flip rate over the last third of >= FLIP_MIN_EVALS measured intervals is
                   >= FLIP_RISE x that over the middle third: LR or weight decay too high (a plateau,
                   >= FLIP_KEEP_FRAC, is only a note of the doctor's: stage-1-only runs plateau too)
  zero_drift       mean share of 0 codes outside [ZERO_LOW, ZERO_HIGH] (from ckpt.pt without health metrics)
  abrupt_quantization, short_quant_warmup, warmup_longer_than_run: the warm-start causes (quant_shock.py, which
                   reads the logged quantization strength and the header's warm start)

What this is not: the verdict (verdicts.py decides whether the run learned; a cause only says what is broken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bitnet_ref.doctor.decode_check import cache_mismatch, parity_mismatch
from bitnet_ref.doctor.measure import checkpoint_check
from bitnet_ref.doctor.optimizer_config import lr_schedule, optimizer_step
from bitnet_ref.doctor.quant_shock import abrupt_quantization, short_quant_warmup, warmup_longer_than_run
from bitnet_ref.doctor.records import fmt, last_with, layer_values, median
from bitnet_ref.doctor.splits import memorisation, train_leak, wrong_split
from bitnet_ref.doctor.upstream import chain_lines, starved
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import (
    ACT_RMS_HIGH,
    ACT_RMS_LOW,
    DEAD_CLIP_FRAC,
    DEAD_GAP,
    DEAD_GRAD_FRAC,
    EMBED_LEVELS_MAX,
    FLIP_MIN_EVALS,
    FLIP_RISE,
    FLOAT_GRID_MIN,
    GRAD_ZERO,
    LATTICE_MIN,
    LR_DROP,
    OUT_RATIO_HIGH,
    OUT_RATIO_LOW,
    UPDATE_GAP,
    WD_KEPT_FRAC,
    WD_ZERO,
    ZERO_HIGH,
    ZERO_LOW,
)

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run

# ---------------------------------------------------------------------------- reading the health metrics


def _flip_per_step(run: Run) -> list:
    """[(step, flip rate per training step)] for the evals where a flip rate was measured."""
    out = []
    for r in run.evals:
        f = number_or_none(r.get("health_flip_rate"))
        steps = [number_or_none(v.get("flip_steps")) for v in (r.get("layers") or {}).values() if isinstance(v, dict)]
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
    mid, last = fl[k : len(fl) - k], fl[len(fl) - k :]
    return sum(mid) / len(mid), sum(last) / len(last)


def _flip_trend_lines(run: Run) -> list:
    fl = _flip_per_step(run)
    if len(fl) < 2:
        return []
    return [f"flip rate per step: {fl[0][1]:.3g} at step {fl[0][0]} -> {fl[-1][1]:.3g} at step {fl[-1][0]}"]


def _stage2_steps(run: Run) -> tuple[list, str]:
    """Step records in stage 2, found from the LR drop; (records, how it was found)."""
    lrs = [(r, number_or_none(r.get("lr"))) for r in run.steps if number_or_none(r.get("lr")) is not None]
    peak_i = max(range(len(lrs)), key=lambda i: lrs[i][1]) if lrs else 0
    for i in range(max(peak_i, 1), len(lrs)):
        prev, cur = lrs[i - 1][1], lrs[i][1]
        if prev > 0 and cur / prev < LR_DROP:
            return [r for r, _ in lrs[i:]], f"LR drop {prev:.3g} -> {cur:.3g} at step {lrs[i][0]['step']}"
    return [], "no LR drop found (stage 1 only)"


def checkpoint_zero_shares(ckpt: dict) -> dict:
    """Share of 0 codes of every transformer-block matrix in a checkpoint's state dict (absmean ternary rule).

    The embedding and head (first dimension = vocab size) are left out; nothing is read from the config but
    the vocab size.
    """
    import torch

    from bitnet_ref.quant import weight_quant

    vocab = (ckpt.get("config") or {}).get("vocab_size")
    out = {}
    for name, t in (ckpt.get("model") or {}).items():
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.is_floating_point() and t.shape[0] != vocab:
            codes, _ = weight_quant(t)
            out[name] = (codes == 0).float().mean().item()
    return out


# ---------------------------------------------------------------------------- the rules


def low_precision(run: Run) -> list | None:
    """Master weights or AdamW moments stored below fp32: small updates vanish in the rounding."""
    if not run.ckpt or "error" in run.ckpt:
        return None
    bad = checkpoint_check(run)["dtypes"]
    if bad:
        return [
            f"ckpt.pt holds {len(bad)} tensor(s) below fp32, e.g. {'; '.join(bad[:3])} (the trainer keeps fp32 "
            "master weights and moments; bf16 autocast changes only the compute)"
        ]
    return None


def missing_ste(run: Run) -> list | None:
    rec = last_with(run.evals, "grad_norm")
    if rec is not None:
        g = layer_values(rec, "grad_norm")
        if g and max(g) <= GRAD_ZERO:
            return [f"latent-weight gradient norm is {max(g):.3g} in all {len(g)} BitLinears at step {rec.get('step')}"]
        return None
    flips = [f for f in (number_or_none(r.get("health_flip_rate")) for r in run.evals) if f is not None]
    lr_on = any((number_or_none(r.get("lr")) or 0) > 0 for r in run.steps)
    if len(flips) >= 2 and lr_on and all(f == 0 for f in flips):
        return [f"no ternary code changed at any of {len(flips)} evaluations while LR > 0 (no gradient metrics logged)"]
    return None


def clamp_ste(run: Run) -> list | None:
    rec = last_with(run.evals, "grad_dead_clip")
    if rec is None or missing_ste(run):  # with no gradient at all every gradient is zero, clipped or not
        return None
    dc, dz = median(layer_values(rec, "grad_dead_clip")), median(layer_values(rec, "grad_dead_zero"))
    ds = median(layer_values(rec, "grad_dead_sat"))
    if dc is not None and dz is not None and dc >= DEAD_CLIP_FRAC and dc - dz >= DEAD_GAP:
        return [
            f"exactly-zero gradients: {dc:.0%} of clip-region weights (|w|/beta > 1.5), {fmt(ds)} of +-1 codes, "
            f"{dz:.0%} of 0 codes (median over layers, step {rec.get('step')})"
        ]
    return None


def missing_dequant(run: Run) -> list | None:
    rec = last_with(run.evals, "out_ratio")
    r = median(layer_values(rec, "out_ratio")) if rec is not None else None
    if r is not None and not OUT_RATIO_LOW <= r <= OUT_RATIO_HIGH:
        return [
            f"BitLinear output RMS is {fmt(r)}x that of an FP linear with the same weights "
            f"(median over layers; healthy ~0.6-1, allowed [{OUT_RATIO_LOW}, {OUT_RATIO_HIGH}])"
        ]
    return None


def quant_head(run: Run) -> list | None:
    rec = last_with(run.evals, "embed_levels") or last_with(run.evals, "logit_lattice")
    if rec is None:
        return None
    lv, lat = number_or_none(rec.get("health_embed_levels")), number_or_none(rec.get("health_logit_lattice"))
    grid = number_or_none(rec.get("health_logit_float_grid"))
    lines = []
    if lv is not None and lv <= EMBED_LEVELS_MAX:
        lines.append(f"token embeddings reach the first block with {lv:.1f} distinct values per vector (ternary)")
    if lat is not None and lat >= LATTICE_MIN and (grid is None or grid < FLOAT_GRID_MIN):
        lines.append(
            f"{lat:.0%} of logits lie on an integer lattice with an fp32 unit (int8 x ternary output head"
            + (f"; only {grid:.0%} fit a coarse float format)" if grid is not None else ")")
        )
    return lines or None


def coarse_logits(run: Run) -> list | None:
    rec = last_with(run.evals, "logit_float_grid")
    grid = number_or_none(rec.get("health_logit_float_grid")) if rec is not None else None
    if grid is None or grid < FLOAT_GRID_MIN:
        return None
    lines = [
        f"{grid:.0%} of logits fit a coarse float format (<= 11 significand bits: bf16/fp16/fp8-like rounding) "
        f"at step {rec.get('step')}; fp32 logits almost never do"
    ]
    chk = checkpoint_check(run) if run.ckpt else {}
    if chk.get("float_grid") is not None:
        lines.append(
            f"the checkpoint's own forward gives {chk['float_grid']:.0%} such logits: the rounding is "
            + (
                "in the weights"
                if chk["float_grid"] >= FLOAT_GRID_MIN
                else "in the training code's forward, not in the weights"
            )
        )
    return lines


def _ratio_lines(named: dict, what: str, ref: float, ref_what: str) -> list:
    return [
        f"{what} {n}: update ratio {fmt(r)}, {ref_what} {fmt(ref)} (> {UPDATE_GAP:.0f}x apart): the optimizer "
        "does not move it (dropped from AdamW, zero LR, or zero gradient)"
        for n, r in named.items()
        if ref > 0 and r * UPDATE_GAP < ref
    ]


def grad_flow(run: Run, baseline: Run | None = None) -> list | None:
    """Where the gradient flow stops, from the last eval with gradient metrics (parameter groups and layers)."""
    rec = last_with(run.evals, "grad_norm")
    if rec is None:
        return None
    step, lines = rec.get("step"), []
    groups = {g: v for g, v in (rec.get("groups") or {}).items() if isinstance(v, dict) and v.get("numel")}
    norms = {g: number_or_none(v.get("grad_norm")) for g, v in groups.items()}
    if any(n is not None and n > GRAD_ZERO for n in norms.values()):
        lines += [
            f"parameter group {g} gets no gradient (norm {fmt(n)}) while the others do, step {step}"
            for g, n in norms.items()
            if n is not None and n <= GRAD_ZERO
        ]
    layers = {k: v for k, v in (rec.get("layers") or {}).items() if isinstance(v, dict)}
    lnorm = {k: number_or_none(v.get("grad_norm")) for k, v in layers.items()}
    if any(n is not None and n > GRAD_ZERO for n in lnorm.values()):
        lines += [
            f"BitLinear {k} gets no gradient (norm {fmt(n)}): the flow stops there, step {step}"
            for k, n in lnorm.items()
            if n is not None and n <= GRAD_ZERO
        ]
    zeros = {
        k: z
        for k, v in layers.items()
        if (z := number_or_none(v.get("grad_zero"))) is not None and (lnorm.get(k) or 0) > GRAD_ZERO
    }
    mz = median(zeros.values())
    if mz is not None and mz >= DEAD_GRAD_FRAC:  # the median: dead ReLU^2 units zero a few FFN layers' rows
        lines.append(
            f"{mz:.0%} of the latent-weight gradient elements are exactly zero (median over {len(zeros)} "
            f"BitLinears, range {min(zeros.values()):.0%}-{max(zeros.values()):.0%}), step {step}: most "
            "weights get no gradient"
        )
    gr = {g: r for g, v in groups.items() if (r := number_or_none(v.get("update_ratio"))) is not None}
    if gr:
        lines += _ratio_lines(
            {g: r for g, r in gr.items() if r < max(gr.values())},
            "parameter group",
            max(gr.values()),
            "largest group's",
        )
    lr = {k: r for k, v in layers.items() if (r := number_or_none(v.get("update_ratio"))) is not None}
    if lr and not lines:
        lines += _ratio_lines(lr, "BitLinear", median(lr.values()), "median layer's")
    brec = last_with(baseline.evals, "grad_norm") if baseline is not None else None
    bg = ((brec.get("groups") or {}).get("latent") or {}) if brec is not None else {}
    if "latent" in gr and number_or_none(bg.get("update_ratio")) is not None and not lines:
        lines += _ratio_lines({"latent": gr["latent"]}, "parameter group", bg["update_ratio"], "FP twin's")
    if lines:  # root causes, not first symptoms: what starves each of them (upstream.py)
        lines += chain_lines(run, rec, starved(rec), [g for g in groups if any(f"group {g} " in x for x in lines)])
    return lines or None


def no_subln(run: Run) -> list | None:
    rec = last_with(run.evals, "act_in_rms")
    vals = layer_values(rec, "act_in_rms") if rec is not None else []
    a = median(vals)
    if a is not None and not ACT_RMS_LOW <= a <= ACT_RMS_HIGH:
        return [
            f"activation-quantizer input RMS: median {fmt(a)}, range {fmt(min(vals))}-{fmt(max(vals))} "
            f"over {len(vals)} layers (behind an RMSNorm it is ~1)"
        ]
    return None


def const_wd(run: Run) -> list | None:
    s2, how = _stage2_steps(run)
    if s2:
        w2 = [number_or_none(r.get("wd")) for r in s2 if number_or_none(r.get("wd")) is not None]
        if w2 and max(w2) > WD_ZERO:
            return [
                f"weight decay {max(w2):.3g} at stage-2 steps ({how}); the recipe sets it to 0",
                *_flip_trend_lines(run),
            ]
        return None
    wds = [number_or_none(r.get("wd")) for r in run.steps if number_or_none(r.get("wd")) is not None]
    if wds and max(wds) > 0 and run.complete:
        tail = wds[-max(1, len(wds) // 10) :]
        if min(tail) >= WD_KEPT_FRAC * max(wds):
            return [
                f"weight decay still {min(tail):.3g} over the last 10% of steps (peak {max(wds):.3g}); "
                "it should decay toward 0",
                *_flip_trend_lines(run),
            ]
    return None


def flip_not_falling(run: Run) -> list | None:
    trend = flip_trend(run)
    if trend is not None and trend[0] > 0 and trend[1] >= FLIP_RISE * trend[0]:
        return [
            f"flip rate per step rises from {trend[0]:.3g} (middle third of evals) to {trend[1]:.3g} "
            "(last third): codes keep flipping faster"
        ]
    return None


def zero_drift(run: Run) -> list | None:
    """From the last eval's health metrics, or from the checkpoint's weights when the metrics have none."""
    rec = last_with(run.evals, "frac_zero")
    z, where = None, None
    if rec is not None:
        z = number_or_none(rec.get("health_frac_zero")) or median(layer_values(rec, "frac_zero"))
        where = f"at step {rec.get('step')}"
    elif run.ckpt and "error" not in run.ckpt:
        shares = checkpoint_zero_shares(run.ckpt)
        if shares:
            z = sum(shares.values()) / len(shares)
            where = f"in ckpt.pt (step {run.ckpt.get('step')}, {len(shares)} matrices; no health metrics logged)"
    if z is not None and not ZERO_LOW <= z <= ZERO_HIGH:
        return [f"mean share of 0 codes {z:.1%} {where} (healthy band {ZERO_LOW:.0%}-{ZERO_HIGH:.0%}; FAQ: ~1/3)"]
    return None


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Cause:
    name: str
    text: str  # what it means, for the report's cause line
    rule: Callable  # (Run) -> evidence lines, or None when it does not apply
    uses_baseline: bool = False  # the rule also takes the FP baseline run (or None): rule(run, baseline)


CAUSES = (  # in priority order: the first that applies is "the" cause
    Cause(
        "parity_mismatch",
        "train/decode parity failure: the decode path does not compute what training did",
        parity_mismatch,
    ),
    Cause(
        "cache_mismatch",
        "the KV-cache decode path does not compute what a full recompute of the same tokens computes",
        cache_mismatch,
    ),
    Cause(
        "train_leak",
        "the training forward sees what evaluation does not (targets in the inputs, no causal mask)",
        train_leak,
    ),
    Cause("wrong_split", "training or evaluation reads the other split", wrong_split),
    Cause(
        "memorisation",
        "memorisation: the training loss is far below validation (a small or repeating data stream)",
        memorisation,
    ),
    Cause("missing_ste", "missing STE: no gradient reaches the latent weights", missing_ste),
    Cause("clamp_ste", "clamp-STE bug: clipped (saturated) weights get zero gradient", clamp_ste),
    Cause("low_precision", "low-precision master weights or optimizer state: small updates round away", low_precision),
    Cause("lr_schedule", "the LR the run used is not its configured schedule", lr_schedule),
    Cause(
        "optimizer_step",
        "AdamW moves the weights far less (or more) than its LR implies: a setting holds the updates back",
        optimizer_step,
    ),
    Cause(
        "grad_flow",
        "gradient flow stops: some parameters get no gradient, or the optimizer does not move them",
        grad_flow,
        uses_baseline=True,
    ),
    Cause(
        "coarse_logits",
        "coarse numerics in the full-precision path: logits rounded to a low-precision float format",
        coarse_logits,
    ),
    Cause(
        "missing_dequant",
        "missing dequantization: BitLinear outputs are off by the weight/activation scales",
        missing_dequant,
    ),
    Cause("quant_head", "quantized embedding or output head: the full-precision path is ternary", quant_head),
    Cause("no_subln", "no RMSNorm before the activation quantizer: its input scale drifts far from 1", no_subln),
    Cause(
        "warmup_longer_than_run",
        "the quantization warmup outlasts the run: lambda never reaches 1",
        warmup_longer_than_run,
    ),
    Cause(
        "abrupt_quantization",
        "abrupt quantization of a trained full-precision model: no warmup of the quantization strength",
        abrupt_quantization,
    ),
    Cause(
        "short_quant_warmup",
        "a quantization warmup too short for the model: lambda reached 1 before the model could follow",
        short_quant_warmup,
    ),
    Cause(
        "const_wd",
        "weight decay kept on through stage 2: latent weights keep being pulled toward 0 (recipe: WD 0)",
        const_wd,
    ),
    Cause("flip_not_falling", "flip rate never falls: LR or weight decay too high for this model", flip_not_falling),
    Cause("zero_drift", "share of 0 codes drifting out of the healthy band", zero_drift),
)
CAUSE_TEXT = {c.name: c.text for c in CAUSES}


def find_causes(run: Run, baseline: Run | None = None) -> list:
    """Every cause whose rule fires, in priority order: [{"cause", "evidence": [str]}]."""
    return [
        {"cause": c.name, "evidence": ev}
        for c in CAUSES
        if (ev := (c.rule(run, baseline) if c.uses_baseline else c.rule(run)))
    ]
