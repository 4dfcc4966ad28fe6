"""The doctor's checks against the checkpoint: distrust the log, and check the numbers.

A log can lie: a data pipeline whose targets equal its inputs, an evaluation with the wrong shift, a checkpoint
that is not the model that was evaluated. So the doctor measures the next-token loss of ``ckpt.pt`` itself, on a
few validation windows of the run's own data (``data.corpus.val_windows``, ``generate.val_loss``: the decode
probe's code), and compares it with the val loss the log holds for the checkpoint's step. It reads the decode
probe's measured loss and verdict from ``decode_probe.json`` the same way. It also looks at the numbers the
checkpoint holds: parameter and optimizer-state dtypes (fp32 master weights), and the logits of its own forward
(``health.float_grid_share``, ``health.lattice_share``), to tell a fault in the training code from one in the
weights.

- ``checkpoint_check(run)``: the measurements, once per run (cached on it); notes when something is missing.
- ``log_check`` and ``sample_collapse``: verdict rules (verdicts.VERDICT_RULES), stated before the loss curves.
- the dtype findings the cause rule ``low_precision`` (causes.py) reads.

Every upper-case name is a number in thresholds.py. What this is not: the decode probe (no parity, no speed,
no packed kernels); a check here costs a corpus reload and one forward over CHECK_WINDOWS windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import (
    BASELINE_IMPLAUSIBLE_FRAC,
    CHECK_WINDOWS,
    COLLAPSE_TOP1,
    COLLAPSE_TOP_SHARE,
    IMPLAUSIBLE_LOSS_FRAC,
    LOG_MISMATCH_NATS,
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
    """The checkpoint's own loss and logit numbers on the run's validation data (fills ``out``)."""
    from bitnet_ref.data import corpus as D
    from bitnet_ref.data.corpus import val_windows
    from bitnet_ref.data.rebuild import reload
    from bitnet_ref.generate import val_loss
    from bitnet_ref.health import float_grid_share, lattice_share
    from bitnet_ref.model import ModelConfig, Transformer

    ck = run.ckpt
    info = ck.get("data") if isinstance(ck.get("data"), dict) else run.header.get("data")
    try:
        cfg = ModelConfig.from_dict(ck["config"])
        model = Transformer(cfg)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        out["notes"].append(
            f"ckpt.pt could not be rebuilt as a model ({str(e).splitlines()[0][:120]}): the log "
            "was not checked against it"
        )
        return
    try:
        if not isinstance(info, dict):
            raise D.DataError("neither the checkpoint nor the metrics header records the training data")
        corpus = reload(info)
    except (D.DataError, KeyError, TypeError, OSError) as e:
        out["notes"].append(f"validation data unavailable ({e}): the logged loss was not checked against the model")
        return
    if len(corpus.val) <= cfg.context:
        out["notes"].append("the validation split is shorter than one context: the logged loss was not checked")
        return
    windows = val_windows(corpus.val, cfg.context, CHECK_WINDOWS)  # (n, T+1)
    model.eval()
    with torch.no_grad():
        out["measured"] = val_loss(model, windows)
        logits, _ = model(windows[:1, :-1])  # (1, T, V)
    out["tokens"] = int(windows[:, 1:].numel())
    rows = logits.reshape(-1, logits.shape[-1])
    out["float_grid"], out["lattice"] = float_grid_share(rows), lattice_share(rows)


def checkpoint_check(run: Run) -> dict:
    """{"measured", "logged", "step", "tokens", "float_grid", "lattice", "dtypes", "notes"}; None where unknown."""
    cached = getattr(run, "checked", None)
    if cached is not None:
        return cached
    out = {
        "measured": None,
        "logged": None,
        "step": None,
        "tokens": None,
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
        out["logged"] = _logged_at(run, out["step"])
        out["dtypes"] = _dtype_problems(ck)
        _measure(run, out)
    run.checked = out
    return out


# ---------------------------------------------------------------------------- verdict rules


def _probe_measured(run: Run) -> tuple[float | None, float | None, object]:
    """(measured, logged-at-its-step, step) from decode_probe.json."""
    ctx = run.probe.get("context") if isinstance(run.probe, dict) else None
    if not isinstance(ctx, dict):
        return None, None, None
    step = ctx.get("step")
    logged = _logged_at(run, step) if step is not None else None
    return number_or_none(ctx.get("val_loss_measured")), logged, step


def log_check(c) -> str | None:
    """log_mismatch: the checkpoint's (or the decode probe's) measured loss is far from the logged one;
    implausible_loss: the logged loss is better than the data allows (a leak), measured or not."""
    run, chk = c.run, checkpoint_check(c.run)
    c.notes.extend(chk["notes"])
    for who, (m, logged, step) in (
        ("ckpt.pt measured by the doctor", (chk["measured"], chk["logged"], chk["step"])),
        ("decode_probe.json", _probe_measured(run)),
    ):
        if m is not None and logged is not None:
            if abs(m - logged) > LOG_MISMATCH_NATS:
                c.evidence.insert(
                    0,
                    f"the log is not the model's next-token loss: {who}: {m:.3f} nats on the "
                    f"validation data, the log says {logged:.3f} at step {step} (allowed difference "
                    f"{LOG_MISMATCH_NATS}); a target/shift or evaluation bug, or a checkpoint that "
                    "is not the model evaluated",
                )
                return "log_mismatch"
            if who.startswith("ckpt"):
                c.notes.append(
                    f"the checkpoint's measured val loss {m:.3f} ({chk['tokens']} tokens) agrees with the "
                    f"log's {logged:.3f} at step {step}"
                )
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
