"""The optimizer against its own configuration: the doctor's optimizer causes.

The metrics header records the configured schedule (``train_config``: lr, lr2, warmup, steps, stage split,
clipping, weight decay) and the optimizer as built (``optimizer``: AdamW's betas and eps); every step record holds
the LR and WD the loop set and the gradient norm before clipping; every eval record holds each BitLinear's update
ratio (||dw|| / ||w|| over one step) and weight RMS, and the same per parameter group; the checkpoint holds
AdamW's param groups (lr, eps, betas) and moments. Two rules (cause rules of causes.CAUSES):

  lr_schedule     the logged LR is off the configured schedule (``train.schedule.lr_at``) by more than
                  LR_OFF_FACTOR either way at LR_OFF_SHARE of the steps or more; the evidence says how: never near
                  the configured peak, still rising at the end (a warmup that never ends), a constant factor
  optimizer_step  AdamW's step per element, RMS(dw) / lr = update ratio x weight RMS / logged LR (median over the
                  BitLinears, then over the evals), is below ADAM_STEP_LOW or above ADAM_STEP_HIGH: AdamW moves each
                  weight by about lr x m/sqrt(v), ~0.1-1 lr, whatever the gradient's scale. The evidence names what
                  holds the steps back: the checkpoint's param groups holding another LR than the log, an eps
                  that dominates the per-element gradient (after clipping), betas; else an LR applied that is not the
                  one logged. It comes before grad_flow (the optimizer as a whole is upstream of one group's update
                  ratio), except where the BitLinears alone are not moved while another group moves UPDATE_GAP x more:
                  that is a group left out of AdamW or given no LR, grad_flow's finding

What this is not: grad_flow (causes.py: one group or layer not moved while others are); a rule here looks at the
optimizer as a whole against what its own settings imply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from bitnet_ref.doctor.records import fmt, median
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import (
    ADAM_STEP_HIGH,
    ADAM_STEP_LOW,
    ADAM_STEP_TYPICAL,
    EPS_DOMINATES,
    LR_OFF_FACTOR,
    LR_OFF_SHARE,
    LR_PEAK_FRAC,
    UPDATE_GAP,
)

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run


# ---------------------------------------------------------------------------- the configured schedule


def configured_schedule(run: Run):
    """The run's ScheduleConfig, rebuilt from the header's train_config; None for a log without one."""
    from bitnet_ref.train.config import ConfigError, TrainConfig, schedule_config

    tc = run.header.get("train_config")
    if not isinstance(tc, dict) or not all(k in tc for k in ("steps", "lr", "lr2", "warmup")):
        return None  # not what bitnet_ref's trainer records: no schedule to hold the log against
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return schedule_config(TrainConfig(**{k: v for k, v in tc.items() if k in names}))
    except (ConfigError, TypeError, ValueError):
        return None


def _lr_pairs(run: Run, sch) -> list:
    """[(step, logged LR, configured LR)] for the logged steps inside the schedule."""
    from bitnet_ref.train.schedule import lr_at

    out = []
    for r in run.steps:
        lr, s = number_or_none(r.get("lr")), r.get("step")
        if lr is not None and isinstance(s, int) and 1 <= s <= sch.steps:
            out.append((s, lr, lr_at(s - 1, sch)))
    return out


def _off(logged: float, want: float) -> bool:
    return want > 0 and not (1 / LR_OFF_FACTOR <= logged / want <= LR_OFF_FACTOR)


def lr_off_share(run: Run) -> float | None:
    sch = configured_schedule(run)
    pairs = _lr_pairs(run, sch) if sch is not None else []
    return sum(_off(a, b) for _, a, b in pairs) / len(pairs) if pairs else None


def _shape_lines(pairs: list, sch) -> list:
    """How the logged LR departs from the schedule: its peak, a rise that never ends, a constant factor."""
    lines = []
    top = max(pairs, key=lambda p: p[1])
    if top[1] < LR_PEAK_FRAC * sch.lr:
        lines.append(
            f"it never comes near the configured peak: at most {top[1]:.3g} (step {top[0]}), {top[1] / sch.lr:.2g}x "
            f"--lr {sch.lr:g}"
        )
    tail = pairs[len(pairs) // 2 :]
    if len(tail) >= 2 and all(b[1] >= a[1] for a, b in zip(tail, tail[1:])) and tail[-1][1] > tail[0][1]:
        slope = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0])
        reach = sch.lr / slope if slope > 0 else math.inf
        lines.append(
            f"it still rises at the end ({tail[0][1]:.3g} at step {tail[0][0]} -> {tail[-1][1]:.3g} at step "
            f"{tail[-1][0]}): a warmup that never ends, reaching the peak only at step ~{reach:.0f} (configured "
            f"warmup {sch.warmup_steps} of {sch.steps} steps)"
        )
    ratios = [a / b for _, a, b in pairs if _off(a, b)]
    if ratios and min(ratios) > 0 and max(ratios) / min(ratios) < 1.1:
        lines.append(f"it is the schedule times a constant {median(ratios):.3g}: an LR multiplier somewhere")
    return lines


def lr_schedule(run: Run) -> list | None:
    sch = configured_schedule(run)
    pairs = _lr_pairs(run, sch) if sch is not None else []
    off = [p for p in pairs if _off(p[1], p[2])]
    if not pairs or len(off) < LR_OFF_SHARE * len(pairs):
        return None
    s, a, b = off[len(off) // 2]
    return [
        f"the logged LR is off its configured schedule (--lr {sch.lr:g}, --lr2 {sch.lr2:g}, warmup "
        f"{sch.warmup_steps}, {sch.steps} steps) by more than {LR_OFF_FACTOR:g}x at {len(off)} of {len(pairs)} "
        f"steps, e.g. step {s}: {a:.3g} where the schedule gives {b:.3g}",
        *_shape_lines(pairs, sch),
    ]


# ---------------------------------------------------------------------------- AdamW's step against the LR


def _step_lr(run: Run) -> dict:
    return {r.get("step"): number_or_none(r.get("lr")) for r in run.steps}


def _layer_steps(rec: dict, lr: float) -> list:
    """RMS(dw) / lr of each BitLinear of an eval record."""
    layers = [v for v in (rec.get("layers") or {}).values() if isinstance(v, dict)]
    return [
        u * w / lr
        for v in layers
        if (u := number_or_none(v.get("update_ratio"))) is not None and (w := number_or_none(v.get("w_rms")))
    ]


def adam_steps(run: Run) -> list:
    """[(step, median over BitLinears of RMS(dw) / lr, {group: RMS(dw) / lr})] for the evals that measured an
    update (the update of that very step, taken at the logged LR of that step)."""
    lrs, out = _step_lr(run), []
    for rec in run.evals:
        lr = lrs.get(rec.get("step"))
        if not lr or lr <= 0:
            continue
        per = _layer_steps(rec, lr)
        groups = {
            g: u * w / lr
            for g, v in (rec.get("groups") or {}).items()
            if isinstance(v, dict)
            and (u := number_or_none(v.get("update_ratio"))) is not None
            and (w := number_or_none(v.get("w_rms")))
        }
        if per:
            out.append((rec.get("step"), median(per), groups))
    return out


def _ckpt_groups(run: Run) -> list:
    """AdamW's param groups as the checkpoint holds them: [{"lr", "eps", "betas", "params"}]."""
    opt = (run.ckpt or {}).get("optimizer") if run.ckpt and "error" not in run.ckpt else None
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    return [g for g in groups or [] if isinstance(g, dict) and g.get("params")]


def _ckpt_lr_line(run: Run) -> str | None:
    """The checkpoint's param-group LRs against the LR the log records for the checkpoint's step."""
    step = (run.ckpt or {}).get("step")
    logged = _step_lr(run).get(step)
    for i, g in enumerate(_ckpt_groups(run)):
        lr = number_or_none(g.get("lr"))
        if logged and lr is not None and _off(lr, logged):
            return (
                f"ckpt.pt's AdamW param group {i} ({len(g['params'])} tensors) holds lr {lr:.3g} where the log records "
                f"{logged:.3g} at step {step}: the optimizer is not given the LR the log shows"
            )
    return None


def _grad_rms(rec: dict) -> float | None:
    """Median over BitLinears of the per-element gradient RMS (from the RMS on 0 codes and on +-1 codes)."""
    out = []
    for v in (rec.get("layers") or {}).values():
        rz, rs, fz = (number_or_none(v.get(k)) for k in ("grad_rms_zero", "grad_rms_sat", "frac_zero"))
        if rz is not None and rs is not None and fz is not None:
            out.append(math.sqrt(fz * rz**2 + (1 - fz) * rs**2))
    return median(out)


def _eps_line(run: Run) -> str | None:
    """AdamW's eps against the per-element gradient AdamW sees (after clipping) at the last measured eval."""
    groups = _ckpt_groups(run)
    opt = run.header.get("optimizer") or {}
    eps = number_or_none(groups[0].get("eps")) if groups else number_or_none(opt.get("eps"))
    rec = next((r for r in reversed(run.evals) if _grad_rms(r)), None)
    if eps is None or rec is None:
        return None
    clip = number_or_none((run.header.get("train_config") or {}).get("grad_clip")) or 0.0
    norm = next((number_or_none(r.get("grad_norm")) for r in run.steps if r.get("step") == rec.get("step")), None)
    factor = min(1.0, clip / norm) if clip > 0 and norm else 1.0
    g = _grad_rms(rec) * factor
    if eps < EPS_DOMINATES * g:
        return None
    clipped = (
        f"clipping to --grad-clip {clip:g} scales the gradient (norm {norm:.3g}) by {factor:.2g}, so "
        if factor < 1
        else ""
    )
    return (
        f"{clipped}the per-element gradient AdamW sees is ~{g:.2g} (median over BitLinears, step {rec.get('step')}), "
        f"{eps / g:.2g}x below its eps {eps:g}: eps, not sqrt(v), sets the denominator, so each step is about "
        f"gradient/eps = {g / eps:.2g} of the LR"
    )


def _betas_line(run: Run) -> str | None:
    groups = _ckpt_groups(run)
    betas = groups[0].get("betas") if groups else (run.header.get("optimizer") or {}).get("betas")
    if not betas or len(betas) != 2:
        return None
    b1, b2 = (float(b) for b in betas)
    if b1 >= 0.99 or b2 < b1:
        return f"AdamW betas ({b1:g}, {b2:g}): momentum averaging ~{1 / (1 - b1):.0f} steps of noisy gradients cancels"
    return None


def adamw(run: Run) -> bool:
    """The run's optimizer is AdamW (or Adam): its header says so, or it is bitnet_ref's trainer (which records a
    schedule and has always used AdamW). A loop watched by bitnet_ref.watch may use any optimizer."""
    opt = run.header.get("optimizer") or {}
    if isinstance(opt.get("adam"), bool):
        return opt["adam"]
    if opt.get("name") is not None:
        return opt["name"] in ("AdamW", "Adam")
    return configured_schedule(run) is not None


def _latent_alone(steps: list) -> bool:
    """The BitLinears are the one group not moved while another moves UPDATE_GAP x more: a group left out of the
    optimizer or given no LR (grad_flow names it and follows it upstream), not the optimizer as a whole."""
    _, c, groups = steps[-1]
    return any(v > UPDATE_GAP * c for g, v in groups.items() if g != "latent")


def optimizer_step(run: Run) -> list | None:
    if not adamw(run):
        return None
    steps = adam_steps(run)
    if not steps:
        return None
    c = median([s for _, s, _ in steps])
    if ADAM_STEP_LOW <= c <= ADAM_STEP_HIGH or (c < ADAM_STEP_LOW and _latent_alone(steps)):
        return None
    last_step, last, groups = steps[-1]
    what = "smaller" if c < ADAM_STEP_LOW else "larger"
    lines = [
        f"AdamW's steps are {what} than its LR implies: RMS(dw)/lr = {fmt(c)} (median over {len(steps)} evals; "
        f"{fmt(last)} at step {last_step}; groups "
        + ", ".join(f"{g} {fmt(v)}" for g, v in groups.items())
        + f"), where AdamW moves each weight by ~0.1-1 x lr (allowed [{ADAM_STEP_LOW}, {ADAM_STEP_HIGH}])"
    ]
    found = [x for x in (_ckpt_lr_line(run), _eps_line(run) if what == "smaller" else None, _betas_line(run)) if x]
    lines += found or [
        f"nothing in its settings explains it: the optimizer applies an LR ~{fmt(c / ADAM_STEP_TYPICAL)}x the logged "
        "one (an LR multiplier, a second scheduler, or the update scaled inside the step)"
    ]
    return lines


def summary(run: Run) -> dict:
    """The optimizer's numbers for --json and the fault zoo's margins."""
    steps = [s for _, s, _ in adam_steps(run)] if adamw(run) else []
    out = {}
    if steps:
        out.update(adam_step=median(steps), adam_step_min=min(steps), adam_step_max=max(steps))
    share = lr_off_share(run)
    if share is not None:
        out["lr_off_share"] = share
    return out
