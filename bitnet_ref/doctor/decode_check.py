"""The decode path against a full recompute: the doctor's decode verdict and its cause.

Parity (the decode probe's packed vs fake-quant check) compares two cached decode paths, so a fault that both
share is invisible to it. Three checks see such a fault, and any of them makes the verdict ``decode_mismatch``
(a verdict of its own: samples from a broken decode path say nothing about the model):

- ``decode_probe.json``'s ``recompute`` object: each cached path (packed, fake-quant) against a no-cache
  recompute of the same tokens (``generate.recompute_check``), run where the probe ran;
- the doctor's own ``recompute_check`` on the checkpoint's fake-quant model, on the trainer's probe prompts;
- the greedy samples the log holds for the checkpoint's step, against what a no-cache recompute of the
  checkpoint decodes from the same prompts (byte-level runs, whose samples are their tokens). A sample counts
  as different only where the recompute does not have the logged token within the tie tolerance of its best
  (RECOMPUTE_REL_TOL; SAMPLE_TIE_TOL_AUTOCAST for a bf16 autocast run), and only once the checkpoint reproduces
  the logged val loss (it is the model that decoded them). A logged sample that is not the model's greedy
  decode means the decode path the trainer used is not the model's full forward.

What this is not: the decode probe (no packed kernels, no speed). ``parity_mismatch`` (the probe's packed vs
fake-quant check failed) and ``cache_mismatch`` are cause rules of causes.CAUSES, ``decode_path`` a verdict rule
of verdicts.VERDICT_RULES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bitnet_ref.doctor.records import fmt
from bitnet_ref.doctor.reproduce import measurements, repro_tol
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import RECOMPUTE_REL_TOL, REPRO_TOL_FP32, SAMPLE_MISMATCH_MIN, SAMPLE_TIE_TOL_AUTOCAST

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run


def _prompts(run: Run):
    """(model, the trainer's probe prompts, probe tokens, corpus), or None when the run cannot be rebuilt."""
    from bitnet_ref.diversity import probe_prompts

    m = measurements(run)
    if m["_built"] is None:
        return None
    model, corpus, tc = m["_built"]
    length = int(tc.get("probe_prompt_len") or 16)
    n = min(int(tc.get("probe_tokens") or 48), model.cfg.context - length)
    if n < 1 or len(corpus.val) <= length:
        return None
    return model, probe_prompts(corpus.val, int(tc.get("probe_prompts") or 4), length), n, corpus


def own_check(run: Run) -> dict | None:
    """generate.recompute_check on the checkpoint's fake-quant model and the trainer's probe prompts (cached)."""
    from bitnet_ref.generate import recompute_check

    m = measurements(run)
    if "_recompute" not in m:
        got = _prompts(run)
        m["_recompute"] = recompute_check(got[0], got[1], got[2]) if got else None
    return m["_recompute"]


def _logged_tokens(text: str):
    """A byte-level sample's tokens, or None when its text cannot give them back (invalid UTF-8 was replaced)."""
    return None if "\ufffd" in text else list(text.encode("utf-8"))


def _not_greedy(model, prompt, toks, tol: float) -> int | None:
    """The first position where ``toks`` is not the full forward's greedy choice (beyond a near-tie), or None."""
    from bitnet_ref.generate import teacher_forced

    row = teacher_forced(model, [list(prompt) + toks[:-1]])[0, len(prompt) - 1 :]  # (n, V)
    gaps = row.max(-1).values - row[torch.arange(len(toks)), torch.tensor(toks)]
    bad = (gaps > tol * float(row.abs().max())).nonzero()
    return int(bad[0]) if len(bad) else None


def sample_check(run: Run) -> dict | None:
    """{"checked", "different", "first"} for the logged samples of the checkpoint's step, or None."""
    m = measurements(run)
    if "_samples" in m:
        return m["_samples"]
    m["_samples"] = None
    got = _prompts(run)
    rec = next((r for r in reversed(run.evals) if r.get("step") == m["step"]), None)
    same, logged = m["val_same"], m["val_logged"]
    if got is None or rec is None or not got[3].byte_level or not isinstance(rec.get("samples"), list):
        return None
    if same is None or logged is None or abs(same.mean - logged) > repro_tol(run):
        return None  # not known to be the model that decoded them
    model, prompts, n, _ = got
    tol = RECOMPUTE_REL_TOL if repro_tol(run) <= REPRO_TOL_FP32 else SAMPLE_TIE_TOL_AUTOCAST
    checked, different, first = 0, 0, None
    with torch.no_grad():
        for i, (p, text) in enumerate(zip(prompts, rec["samples"])):
            toks = _logged_tokens(text) if isinstance(text, str) else None
            if toks is None or len(toks) != n:
                continue
            checked += 1
            k = _not_greedy(model, p, toks, tol)
            if k is not None:
                different += 1
                first = first or {"sample": i, "position": k}
    m["_samples"] = {"checked": checked, "different": different, "first": first, "step": m["step"]}
    return m["_samples"]


def parity_mismatch(run: Run) -> list | None:
    p = run.probe
    if not isinstance(p, dict) or "error" in p:
        return None
    par = p.get("parity")
    ok = par.get("ok") if isinstance(par, dict) else par
    if ok is not False:
        return None
    detail = (
        f"greedy tokens identical: {par.get('tokens_identical')}, max relative logit difference "
        f"{fmt(number_or_none(par.get('max_rel_logit_diff')))} "
        f"(tolerance {fmt(number_or_none(par.get('rel_tol')))})"
        if isinstance(par, dict)
        else "parity: false"
    )
    return [f"decode_probe.json: the packed decode path disagrees with training: {detail}"]


def cache_mismatch(run: Run) -> list | None:
    lines = []
    rec = run.probe.get("recompute") if isinstance(run.probe, dict) else None
    if isinstance(rec, dict) and rec.get("ok") is False:
        bad = {k: r for k, r in rec.items() if isinstance(r, dict) and r.get("ok") is False}
        lines += [
            f"decode_probe.json: cached decoding ({k}) is not a full recompute of the same tokens: "
            f"{r.get('samples_identical')}/{r.get('samples')} samples identical, max relative logit difference "
            f"{r.get('max_rel_logit_diff'):.3g} (tolerance {r.get('rel_tol')}), {r.get('disagreements')} token(s) "
            "the full forward does not rank first"
            for k, r in bad.items()
        ]
    own = own_check(run)
    if own is not None and not own["ok"]:
        lines.append(
            f"the doctor's own check on ckpt.pt: cached greedy decoding gives {own['samples_identical']}/"
            f"{own['samples']} samples identical to a no-cache recompute, max relative logit difference "
            f"{own['max_rel_logit_diff']:.3g} (tolerance {own['rel_tol']})"
        )
    s = sample_check(run)
    if s is not None and s["different"] >= SAMPLE_MISMATCH_MIN:
        f = s["first"]
        lines.append(
            f"the greedy samples the log holds for step {s['step']} are not this checkpoint's: {s['different']} of "
            f"{s['checked']} differ from a no-cache recompute from the same prompts (first at sample {f['sample']}, "
            f"token {f['position']}), though ckpt.pt reproduces that step's val loss: the decode path the trainer "
            "sampled with (its KV cache) does not compute the model's forward"
        )
    return lines or None


def decode_path(c) -> str | None:
    """decode_mismatch: a decode path disagrees with a full recompute, or the packed path with training."""
    return "decode_mismatch" if parity_mismatch(c.run) or cache_mismatch(c.run) else None


def summary(run: Run) -> dict:
    out = {}
    own = own_check(run)
    if own is not None:
        out["recompute_rel"] = own["max_rel_logit_diff"]
    rec = run.probe.get("recompute") if isinstance(run.probe, dict) else None
    rels = [r.get("max_rel_logit_diff") for r in (rec or {}).values() if isinstance(r, dict)]
    if rels and all(isinstance(x, (int, float)) for x in rels):
        out["probe_recompute_rel"] = max(rels)
    s = sample_check(run)
    if s is not None:
        out["sample_mismatches"] = s["different"]
    return out
