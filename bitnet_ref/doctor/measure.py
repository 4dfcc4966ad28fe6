"""The doctor's checks against the checkpoint: distrust the log, and check the numbers.

A log can lie: a data pipeline whose targets equal its inputs, an evaluation with the wrong shift, a checkpoint
that is not the model that was evaluated. So the doctor reproduces the logged val loss from ``ckpt.pt`` and the
run's own data (reproduce.py): on the very windows of the log's evaluation at the checkpoint's step (a paired
measurement, exact to float precision), and on fresh windows with a standard error small enough for its
threshold. It compares the decode probe's measured loss (``decode_probe.json``, with its standard error) the same
way. It also looks at the numbers the checkpoint holds: parameter and optimizer-state dtypes (fp32 master
weights), and the logits of its own forward (``health.float_grid_share``, ``health.lattice_share``), to tell a
fault in the training code from one in the weights.

- ``checkpoint_check(run)``: dtypes and logit grids, once per run (cached on it); notes when something is missing.
- ``log_check`` and ``sample_collapse``: verdict rules (verdicts.VERDICT_RULES), stated before the loss curves.
- the dtype findings the cause rule ``low_precision`` (causes.py) reads.

Every upper-case name is a number in thresholds.py. What this is not: the decode probe (no parity, no speed,
no packed kernels); a check here costs a corpus reload and a few forwards (reproduce.py says how many).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bitnet_ref.doctor.reproduce import measurements, reading, rebuilt, repro_tol
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import (
    BASELINE_IMPLAUSIBLE_FRAC,
    COLLAPSE_TOP1,
    COLLAPSE_TOP_SHARE,
    IMPLAUSIBLE_LOSS_FRAC,
    LOG_MISMATCH_NATS,
    LOG_MISMATCH_Z,
)

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run

FP32_ONLY = (torch.float32,)  # master weights and AdamW moments: what the trainer keeps (autocast or not)


# ---------------------------------------------------------------------------- measuring the checkpoint


def _logged_at(run: Run, step) -> float | None:
    """The val loss the log holds for ``step`` (the eval record of that step, else the checkpoint's own copy)."""
    for rec in reversed(run.evals):
        if rec.get("step") == step and number_or_none(rec.get("val_loss")) is not None:
            return number_or_none(rec.get("val_loss"))
    return number_or_none((run.ckpt or {}).get("last_val_loss"))


def _dtype_problems(ckpt: dict) -> list:
    """'name: dtype' for each floating parameter or AdamW moment that is not fp32."""
    out = [
        f"parameter {k}: {t.dtype}"
        for k, t in (ckpt.get("model") or {}).items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in FP32_ONLY
    ]
    state = ((ckpt.get("optimizer") or {}).get("state") or {}) if isinstance(ckpt.get("optimizer"), dict) else {}
    for i, st in state.items():
        for k, t in st.items() if isinstance(st, dict) else ():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1 and t.dtype not in FP32_ONLY:
                out.append(f"optimizer state {i}.{k}: {t.dtype}")
    return out


def _measure(run: Run, out: dict) -> None:
    """The logit numbers of the checkpoint's own forward on a validation window (fills ``out``)."""
    from bitnet_ref.data.corpus import val_windows
    from bitnet_ref.health import float_grid_share, lattice_share

    built = rebuilt(run)
    if built is None:
        return
    model, corpus, _ = built
    windows = val_windows(corpus.val, model.cfg.context, 1)  # (1, T+1)
    with torch.no_grad():
        logits, _ = model(windows[:, :-1])  # (1, T, V)
    rows = logits.reshape(-1, logits.shape[-1])
    out["float_grid"], out["lattice"] = float_grid_share(rows), lattice_share(rows)


def checkpoint_check(run: Run) -> dict:
    """{"step", "float_grid", "lattice", "dtypes", "notes"}; None where unknown."""
    cached = getattr(run, "checked", None)
    if cached is not None:
        return cached
    out = {
        "step": None,
        "float_grid": None,
        "lattice": None,
        "dtypes": [],
        "notes": [],
    }
    ck = run.ckpt
    if not ck:
        if run.evals and (run.path / "metrics.jsonl").is_file():
            out["notes"].append("no ckpt.pt beside the metrics: the logged loss was not checked against the model")
    elif "error" in ck:
        out["notes"].append(f"ckpt.pt unreadable ({ck['error']}): the logged loss was not checked against the model")
    else:
        out["step"] = ck.get("step")
        out["dtypes"] = _dtype_problems(ck)
        _measure(run, out)
    run.checked = out
    return out


# ---------------------------------------------------------------------------- verdict rules


def _probe_measured(run: Run):
    """(measured, its standard error, logged-at-its-step, step) from decode_probe.json."""
    ctx = run.probe.get("context") if isinstance(run.probe, dict) else None
    if not isinstance(ctx, dict):
        return None, None, None, None
    step = ctx.get("step")
    logged = _logged_at(run, step) if step is not None else None
    m, se = number_or_none(ctx.get("val_loss_measured")), number_or_none(ctx.get("val_loss_se"))
    if m is not None and se is None:  # an older report: its VAL_WINDOWS windows, a per-window SD of 0.5 assumed
        from bitnet_ref.data.corpus import VAL_WINDOWS

        se = 0.5 / VAL_WINDOWS**0.5
    return m, se, logged, step


def _log_se(run: Run, sd: float | None) -> float | None:
    """The sampling error of the log's own val loss: per-window SD over the eval's eval_batches x batch windows."""
    tc = run.header.get("train_config") or {}
    n = (tc.get("eval_batches") or 0) * (tc.get("batch_size") or 0)
    return sd / n**0.5 if sd is not None and n else None


def _fresh_mismatch(who: str, m: float, se: float, logged: float, log_se: float | None, step) -> str | None:
    """An evidence line when an independent measurement and the log's val loss differ beyond noise and threshold."""
    both = (se**2 + (log_se or 0.0) ** 2) ** 0.5
    gap = m - logged
    if abs(gap) > LOG_MISMATCH_NATS and abs(gap) > LOG_MISMATCH_Z * both:
        return (
            f"the log is not the model's next-token loss: {who}: {m:.3f} +- {se:.3f} (SE) on the validation data, "
            f"the log says {logged:.3f} at step {step}"
            + (f" (+- {log_se:.3f} on its own windows)" if log_se else "")
            + f": difference {gap:+.3f} = {abs(gap) / both:.1f} SE (allowed {LOG_MISMATCH_NATS} and "
            f"{LOG_MISMATCH_Z:g} SE); a target/shift or evaluation bug, or a checkpoint that is not the model evaluated"
        )
    return None


def _checkpoint_mismatch(c) -> str | None:
    """The logged val loss against the checkpoint: on the log's own windows (paired), else on fresh ones."""
    run = c.run
    m = measurements(run)
    c.notes.extend(m["notes"])
    logged, same, fresh, step = m["val_logged"], m["val_same"], m["val_fresh"], m["step"]
    if logged is None or fresh is None:
        return None
    if same is not None:
        gap, tol = same.mean - logged, repro_tol(run)
        if abs(gap) > tol:
            return (
                f"the log is not the model's next-token loss: on the same windows its evaluation used at step "
                f"{step} ({same.windows} windows, {same.tokens} tokens, drawn as the trainer draws them) ckpt.pt "
                f"gives {same.mean:.3f}, the log says {logged:.3f}: difference {gap:+.3f} where float arithmetic "
                f"allows {tol:g} (a paired measurement: no sampling error). On fresh windows: {fresh.text()}. "
                + _val_reading(run, logged, tol)
            )
        c.notes.append(
            f"ckpt.pt reproduces the logged val loss on the same windows: {same.mean:.4f} vs {logged:.4f} at step "
            f"{step} (difference {abs(gap):.2g}, allowed {tol:g}); on fresh windows it gives {fresh.text()}"
        )
        return None
    sd = fresh.se * fresh.windows**0.5
    return _fresh_mismatch("ckpt.pt measured by the doctor", fresh.mean, fresh.se, logged, _log_se(run, sd), step)


def _val_reading(run: Run, logged: float, tol: float) -> str:
    """Which other reading of the data, if any, gives the logged val loss (splits.wrong_split names the split)."""
    for split, how, what in (
        ("val", "no_shift", "targets equal to the inputs (evaluation without the shift)"),
        ("train", "shift", "the training split (see wrong_split)"),
    ):
        r = reading(run, "val", split, how)
        if r is not None and abs(r.mean - logged) <= tol:
            return f"The same windows read with {what} give {r.mean:.3f}: that is what the log holds"
    return (
        "No other reading of those windows gives it (the training split, targets = inputs): the evaluation "
        "computes something else than the mean next-token loss of this model over them (a subset of positions, "
        "a smoothed or stale value, another model's loss)"
    )


def _user_checkpoint_mismatch(c, chk: dict) -> str | None:
    """A user's checkpoint measured on a watched run's own loss windows (user_checkpoint.py): the same windows, but
    another implementation of the model than the one that logged, so LOG_MISMATCH_NATS rather than REPRO_TOL_*."""
    m, logged, step = chk.get("measured"), chk.get("logged"), chk.get("step")
    if m is None or logged is None:
        return None
    if abs(m - logged) > LOG_MISMATCH_NATS:
        return (
            f"the log is not the model's next-token loss: the checkpoint measured by the doctor: {m:.3f} nats on the "
            f"run's own loss windows, the log says {logged:.3f} at step {step} (allowed difference "
            f"{LOG_MISMATCH_NATS}); an evaluation bug, or a checkpoint that is not the model evaluated"
        )
    c.notes.append(
        f"the checkpoint's measured val loss {m:.3f} ({chk.get('tokens')} tokens, the run's own windows) agrees with "
        f"the log's {logged:.3f} at step {step}"
    )
    return None


def log_check(c) -> str | None:
    """log_mismatch: the checkpoint's (or the decode probe's) measured loss is far from the logged one;
    implausible_loss: the logged loss is better than the data allows (a leak), measured or not."""
    run, chk = c.run, checkpoint_check(c.run)
    c.notes.extend(chk["notes"])
    line = _checkpoint_mismatch(c) if run.ckpt and "error" not in run.ckpt else _user_checkpoint_mismatch(c, chk)
    pm, pse, plogged, pstep = _probe_measured(run)
    if line is None and None not in (pm, pse, plogged):
        line = _fresh_mismatch("decode_probe.json", pm, pse, plogged, _log_se(run, pse * 32**0.5), pstep)
    if line:
        c.evidence.insert(0, line)
        return "log_mismatch"
    vals = [v for _, v in run.val_losses]
    final = vals[-1] if vals else None
    base = [v for _, v in c.baseline.val_losses] if c.baseline is not None else []
    why = None
    if final is not None and c.uni and final < IMPLAUSIBLE_LOSS_FRAC * c.uni:
        why = f"below {IMPLAUSIBLE_LOSS_FRAC} x the unigram entropy {c.uni:.3f}"
    elif final is not None and base and final < BASELINE_IMPLAUSIBLE_FRAC * base[-1]:
        why = f"below {BASELINE_IMPLAUSIBLE_FRAC} x the FP baseline's {base[-1]:.3f}"
    if why:
        c.evidence.insert(
            0,
            f"the logged val loss {final:.3f} nats is implausibly good ({why}): held-out text does "
            "not allow it; targets leaking into inputs (target = input, a missing shift)?",
        )
        return "implausible_loss"
    return None


def _sample_shares(rec: dict) -> float | None:
    """min_sample_top_share of an eval record; for older logs, from the sample texts (one character per token
    for byte-level data: close enough to see a loop)."""
    v = number_or_none(rec.get("min_sample_top_share"))
    if v is not None:
        return v
    samples = [s for s in rec.get("samples") or [] if isinstance(s, str) and s]
    return min(max(map(s.count, set(s))) / len(s) for s in samples) if samples else None


def sample_collapse(c) -> str | None:
    """diversity_collapse judged on the samples, not the counts: every greedy sample repeats one token (each
    prompt its own, perhaps) while the model's top-1 probability is near 1; or the decode probe said collapsed."""
    rec = c.run.evals[-1] if c.run.evals else {}
    share, top1 = _sample_shares(rec), number_or_none(rec.get("health_top1"))
    if share is not None and top1 is not None and share >= COLLAPSE_TOP_SHARE and top1 >= COLLAPSE_TOP1:
        c.evidence.append(
            f"every greedy sample repeats one token (the least repetitive is {share:.0%} one token) "
            f"and the mean top-1 probability is {top1:.2f} at step {rec.get('step')}"
        )
        return "diversity_collapse"
    v = c.run.probe.get("verdict") if isinstance(c.run.probe, dict) else None
    if isinstance(v, dict) and v.get("verdict") == "collapsed":
        c.evidence.append(f"decode_probe.json: collapsed: {v.get('reason')}")
        return "diversity_collapse"
    return None


# ---------------------------------------------------------------------------- cause rules
