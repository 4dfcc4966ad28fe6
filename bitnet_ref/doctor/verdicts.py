"""The doctor's verdicts: is a training run healthy, and if not, what kind of unhealthy? ``diagnose(run)``.

``diagnose`` takes a run as run.py loads it (``RUN_DIR/metrics.jsonl`` through metrics_log.py, a torn or garbled
line skipped and reported; ``RUN_DIR/ckpt.pt`` when the metrics lack something it holds; ``decode_probe.json``
when the decode probe left one), applies ``VERDICT_RULES`` in order and then the cause rules of causes.py, and
returns a ``Diagnosis``: a verdict, a cause, and the evidence lines with the numbers. The command line
(``python -m bitnet_ref.doctor RUN_DIR [--baseline FP_RUN_DIR] [--json]``) is command.py.

Verdicts (from the losses and the diversity probe; the first that applies; every upper-case name is a number
in thresholds.py):
  quant_unfinished    a warm start whose quantization strength never reached 1 (quant_shock.py)
  log_mismatch        the checkpoint's next-token loss on the very windows of the log's evaluation differs from the
                      logged one by > REPRO_TOL_* (reproduce.py), or on fresh windows (the doctor's, or
                      decode_probe.json's) by > LOG_MISMATCH_NATS and LOG_MISMATCH_Z standard errors
  implausible_loss    the logged loss < IMPLAUSIBLE_LOSS_FRAC x unigram entropy (or < BASELINE_IMPLAUSIBLE_FRAC
                      x the FP baseline's): better than held-out data allows
  quantization_shock  a warm start whose loss jumped >= SHOCK_FRAC of the way to ln V where the quantization came
                      in (quant_shock.py)
  diverged            a non-finite loss, or the train loss ends > DIVERGE_RISE nats above its best
  incomplete          the run ended before its planned last step (progress.py): said, with the error where the log
                      has one, and judged only on what the records hold
  decode_mismatch     a decode path disagrees with a full recompute or with training (decode_check.py)
  not_learning        final val loss >= NEAR_LN_V_FRAC x ln(vocab)
  stuck_unigram       final val loss >= NEAR_UNIGRAM_FRAC x unigram entropy, and the FP baseline (when given)
                      ends at least BASELINE_GAP_FRAC x unigram entropy lower
  not_learning        (also, without a unigram entropy) after LN_V_EXIT_STEPS steps the loss is still >=
                      UNIGRAM_CEILING_FRAC x ln V: an inference from the step count and the vocabulary (progress.py)
  diversity_collapse  past the unigram phase (evals with val loss < NEAR_UNIGRAM_FRAC x unigram entropy), the
                      final unique tokens are <= COLLAPSE_FRAC of the best there (or of the baseline's final),
                      that best being >= MIN_UNIQUE_SIGNAL, while the val loss still fell by >= LOSS_FELL
  diversity_collapse  (also) every greedy sample repeats one token (min_sample_top_share >= COLLAPSE_TOP_SHARE)
                      with top-1 >= COLLAPSE_TOP1, or decode_probe.json says collapsed
  transient_dip       past the unigram phase, unique tokens fell to <= DIP_FRAC of an earlier value (itself
                      >= MIN_UNIQUE_SIGNAL) by >= DIP_Z x its counting noise, then came back to >= RECOVER_FRAC of
                      it by the end
  A fall in unique tokens while the val loss is still at unigram level is the expected "unigram phase"
  (greedy decoding of a frequency-only model repeats its most frequent token): a note, not a verdict. A
  final greedy output with one token >= REPETITIVE_TOP_SHARE of it that did not fall is also only a note.
  faulty              the loss and samples look fine, but the health metrics show a known fault
  healthy             none of the above

Causes: the table of rules in causes.py (some living in the modules it lists), read from the health metrics in the
eval records, the checkpoint and the data, never from the run's ablation list (the optimizer rules hold the run
against its own configuration). The first that applies is "the" cause; all that apply are listed. The numbers the
checks measured go into ``Diagnosis.measurements`` (``--json``).

What it is not: a replacement for reading the curves, nor the command line (command.py prints and exits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from bitnet_ref.doctor import decode_check, optimizer_config, reproduce
from bitnet_ref.doctor.causes import CAUSE_TEXT, find_causes, flip_trend, fmt
from bitnet_ref.doctor.decode_check import decode_path
from bitnet_ref.doctor.measure import log_check, sample_collapse
from bitnet_ref.doctor.progress import incomplete, uniform_phase
from bitnet_ref.doctor.quant_shock import quant_shock, quant_unfinished
from bitnet_ref.doctor.quant_shock import summary as quant_shock_summary
from bitnet_ref.doctor.run import Run
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import (
    BASELINE_GAP_FRAC,
    COLLAPSE_FRAC,
    DIP_FRAC,
    DIP_Z,
    DIVERGE_RISE,
    FLIP_KEEP_FRAC,
    LOSS_FELL,
    MIN_UNIQUE_SIGNAL,
    NEAR_LN_V_FRAC,
    NEAR_UNIGRAM_FRAC,
    RECOVER_FRAC,
    REPETITIVE_TOP_SHARE,
    UNIGRAM_CEILING_FRAC,
)

VERDICTS = {
    "healthy": "healthy",
    "log_mismatch": "the log is not the model's next-token loss: a target/shift or evaluation bug",
    "implausible_loss": "the logged loss is better than held-out data allows: targets leaking into inputs?",
    "faulty": "learning, but the health metrics show a known fault",
    "not_learning": "not learning: the loss stays near ln(vocab)",
    "stuck_unigram": "stuck at unigram level: no better than a context-free table of token frequencies",
    "diversity_collapse": "diversity collapse while the loss still falls",
    "transient_dip": "transient dip, recovered: unique tokens fell and came back",
    "diverged": "diverged: the loss became NaN/inf or blew up",
    "incomplete": "incomplete: the run ended before its planned last step; judged only on what its records hold",
    "decode_mismatch": "the decode path does not compute what the model computes: its samples are not the model's",
    "quantization_shock": "quantization shock: the loss jumped toward ln V when the quantization came in",
    "quant_unfinished": "the quantization warmup never finished: the logged losses are of a partly "
    "full-precision model",
}


@dataclass
class Diagnosis:
    verdict: str
    cause: str | None
    evidence: list = field(default_factory=list)
    findings: list = field(default_factory=list)  # every cause that applied: {"cause", "evidence"}
    notes: list = field(default_factory=list)
    measurements: dict = field(default_factory=dict)  # the numbers the checks measured (reproduce.py, ...)

    def as_dict(self, run: Run | None = None) -> dict:
        d = {
            "verdict": self.verdict,
            "verdict_text": VERDICTS[self.verdict],
            "cause": self.cause,
            "cause_text": CAUSE_TEXT.get(self.cause) if self.cause else None,
            "evidence": self.evidence,
            "findings": self.findings,
            "notes": self.notes,
            "measurements": self.measurements,
        }
        if run is not None:
            d["run"] = str(run.path)
            d["config"] = {
                k: run.header.get(k) for k in ("config", "train_config", "model", "schedule", "data") if k in run.header
            }
        return d


# ---------------------------------------------------------------------------- reading


def baselines(run: Run) -> tuple[float | None, float | None]:
    """(ln V, unigram entropy): from the metrics header, else the checkpoint, else (ln V only) the config."""
    ck = run.ckpt if run.ckpt and "error" not in run.ckpt else {}
    ln_v = number_or_none(run.header.get("ln_vocab")) or number_or_none(ck.get("ln_vocab"))
    uni = number_or_none(run.header.get("unigram_entropy")) or number_or_none(ck.get("unigram_entropy"))
    if ln_v is None:
        cfg = run.header.get("config")
        v = number_or_none(cfg.get("vocab_size")) if isinstance(cfg, dict) else None
        ln_v = math.log(v) if v else None
    return ln_v, uni


def _smooth_tail(values: list, frac: float = 0.1) -> float:
    k = max(1, int(len(values) * frac))
    return sum(values[-k:]) / k


def _best_smoothed(values: list, frac: float = 0.1) -> float:
    k = max(1, int(len(values) * frac))
    return min(sum(values[i : i + k]) / k for i in range(0, len(values) - k + 1))


# ---------------------------------------------------------------------------- verdict


@dataclass
class _Case:
    """What the verdict rules share: the run, the causes found, and the evidence and notes gathered so far."""

    run: Run
    baseline: Run | None
    cause: str | None
    evidence: list
    notes: list
    ln_v: float | None
    uni: float | None
    dip_z: float | None = None  # the largest dip candidate's fall in units of counting noise (for the margins)


class _Eval(NamedTuple):  # one eval record's diversity numbers
    step: int | None
    unique: float
    top_share: float | None
    val_loss: float | None


def _nonfinite(r: dict, k: str) -> bool:
    return k in r and (r[k] is None or (number_or_none(r[k]) is not None and not math.isfinite(r[k])))


def diverged(c: _Case) -> str | None:
    """A non-finite loss (the trainer logs it as null and writes a "stop" record), or a blow-up."""
    run = c.run
    bad = [r.get("step") for r in run.steps + run.evals if _nonfinite(r, "loss") or _nonfinite(r, "val_loss")]
    if run.stopped or bad:
        c.evidence.insert(0, run.stopped or f"non-finite loss first at step {bad[0]}")
        return "diverged"
    losses = [number_or_none(r.get("loss")) for r in run.steps]
    if len(losses) >= 10:
        best, end = _best_smoothed(losses), _smooth_tail(losses)
        if end > best + DIVERGE_RISE:
            c.evidence.insert(
                0, f"train loss ends at {end:.3f} (mean of last 10%), {end - best:.2f} nats above its best {best:.3f}"
            )
            return "diverged"
    return None


def _final_loss(c: _Case) -> float | None:
    """The loss the run is judged by: its last val loss, or its recent train loss when it went well past its last
    evaluation or has none (a note says so); it leads the evidence, beside ln V and the unigram entropy."""
    run, vals = c.run, c.run.val_losses
    last_step = run.steps[-1].get("step") if run.steps else None
    losses = [number_or_none(r.get("loss")) for r in run.steps]
    final, kind = None, "val"
    if vals:
        final = vals[-1][1]
        after = [number_or_none(r.get("loss")) for r in run.steps if (r.get("step") or 0) > (vals[-1][0] or 0)]
        if last_step is not None and last_step - (vals[-1][0] or 0) > max(10, 0.1 * last_step) and after:
            final, kind = _smooth_tail(after), "train"
            c.notes.append(
                f"the run went {last_step - vals[-1][0]} steps past its last evaluation (step "
                f"{vals[-1][0]}): judged from the recent train loss"
            )
    elif losses:
        c.notes.append("no evaluation records: verdict from the train loss only")
        final, kind = _smooth_tail(losses), "train"
    if final is not None:
        c.evidence.insert(
            0,
            f"final {kind} loss {final:.3f} nats (ln(V) {fmt(c.ln_v)}, unigram entropy "
            f"{fmt(c.uni)}" + (f"; first eval {vals[0][1]:.3f} at step {vals[0][0]}" if vals else "") + ")",
        )
    return final


def loss_level(c: _Case) -> str | None:
    """not_learning (the final loss is near ln V) or stuck_unigram (near the unigram entropy, FP does better)."""
    final = _final_loss(c)
    if final is not None and c.ln_v and final >= NEAR_LN_V_FRAC * c.ln_v:
        return "not_learning"
    base_final = None
    if c.baseline is not None:
        bv = [v for _, v in c.baseline.val_losses]
        base_final = bv[-1] if bv else None
        c.evidence.append(f"FP baseline {c.baseline.path}: final val loss {fmt(base_final)}")
    if final is not None and c.uni and final >= NEAR_UNIGRAM_FRAC * c.uni:
        if c.baseline is None:
            c.notes.append("no FP baseline given: 'stuck at unigram level' judged from the unigram entropy alone")
            return "stuck_unigram"
        if base_final is not None and base_final <= final - BASELINE_GAP_FRAC * c.uni:
            return "stuck_unigram"
    return None


def diversity(c: _Case) -> str | None:
    """diversity_collapse or transient_dip. While the val loss is still at or above unigram level, greedy decoding
    repeats the most frequent token (spaces, for code): a dip there is the expected "unigram phase", not a
    collapse. Only evaluations past it (val loss < NEAR_UNIGRAM_FRAC x unigram entropy) can show one."""
    div = [
        _Eval(r.get("step"), *(number_or_none(r.get(k)) for k in ("unique_tokens", "top_token_share", "val_loss")))
        for r in c.run.evals
        if number_or_none(r.get("unique_tokens")) is not None
    ]
    if not div:
        return None
    c.evidence.append("unique tokens: " + ", ".join(f"{int(d.unique)}@{d.step}" for d in div[-10:]))
    past = [d for d in div if _past_unigram_phase(c, d.val_loss)]
    early = [d for d in div if d not in past and d.step != 0]
    if early and past and min(d.unique for d in early) <= DIP_FRAC * max(div[0].unique, 1):
        low = min(early, key=lambda d: d.unique)
        c.notes.append(
            f"unique tokens fell to {int(low.unique)} at step {low.step} while the val loss "
            f"({fmt(low.val_loss)}) was still at unigram level: the expected unigram phase (greedy "
            f"decoding repeats the most frequent token), not a collapse"
        )
    best_u = max((d.unique for d in past), default=None)
    if c.baseline is not None:
        bu = [
            number_or_none(r.get("unique_tokens"))
            for r in c.baseline.evals
            if number_or_none(r.get("unique_tokens")) is not None
        ]
        if bu and best_u is not None:
            c.evidence.append(f"FP baseline: {int(bu[-1])} unique tokens at its last eval")
            best_u = max(best_u, bu[-1])
    if past and past[-1] is div[-1] and best_u and best_u >= MIN_UNIQUE_SIGNAL:
        verdict = _collapsed(c, past, best_u) or _dipped(c, past)
        if verdict:
            return verdict
    _note_plateau_and_repetition(c, div[-1])
    return None


def _past_unigram_phase(c: _Case, loss: float | None) -> bool:
    """An eval past the unigram phase: its loss below NEAR_UNIGRAM_FRAC x the unigram entropy. Without one, only a
    loss at or above UNIGRAM_CEILING_FRAC x ln V is known to be in it (what the vocabulary implies)."""
    if c.uni is not None:
        return loss is not None and loss < NEAR_UNIGRAM_FRAC * c.uni
    return loss is None or not c.ln_v or loss < UNIGRAM_CEILING_FRAC * c.ln_v


def _collapsed(c: _Case, past: list, best_u: float) -> str | None:
    vals, last = c.run.val_losses, past[-1]
    fell = len(vals) >= 2 and vals[-1][1] <= vals[0][1] - LOSS_FELL
    if last.unique <= COLLAPSE_FRAC * best_u and fell:
        where = (
            "past the unigram phase"
            if c.uni
            else f"(unigram entropy unknown: only evals at or above {UNIGRAM_CEILING_FRAC} x ln V, surely in the "
            "unigram phase, were left out)"
        )
        c.evidence.append(
            f"unique tokens {int(last.unique)} at the end vs {int(best_u)} earlier {where}"
            + (f"; top-token share {last.top_share:.2f}" if last.top_share is not None else "")
        )
        return "diversity_collapse"
    return None


def _dip_candidates(us: list) -> list:
    """[(z, i, j)]: evals i < j (j not the last) where unique tokens fell to DIP_FRAC of a value >= MIN_UNIQUE_SIGNAL
    and came back to RECOVER_FRAC of it by the end; z is the fall over its counting noise, sqrt(a + b)."""
    return [
        ((us[i] - us[j]) / math.sqrt(us[i] + us[j]), i, j)
        for i in range(len(us))
        for j in range(i + 1, len(us) - 1)
        if us[i] >= MIN_UNIQUE_SIGNAL and us[j] <= DIP_FRAC * us[i] and us[-1] >= RECOVER_FRAC * us[i]
    ]


def _dipped(c: _Case, past: list) -> str | None:
    cands = _dip_candidates([d.unique for d in past])
    c.dip_z = max((z for z, _, _ in cands), default=None)
    for z, i, j in cands:
        if z >= DIP_Z:
            c.evidence.append(
                f"dip past the unigram phase: {int(past[i].unique)} -> {int(past[j].unique)} unique tokens (step "
                f"{past[i].step} -> {past[j].step}; {z:.1f} x the counting noise), back to {int(past[-1].unique)} "
                f"at step {past[-1].step}"
            )
            return "transient_dip"
    return None


def _note_plateau_and_repetition(c: _Case, last: _Eval) -> None:
    trend = flip_trend(c.run)
    if trend is not None and c.cause != "flip_not_falling" and trend[1] >= FLIP_KEEP_FRAC * trend[0] > 0:
        c.notes.append(
            f"the flip rate plateaus ({trend[0]:.3g} -> {trend[1]:.3g} per step, middle -> last third): "
            "the LR stays high (stage 1 only?); the recipe's stage 2 (LR drop, WD 0) brings it down"
        )
    if last.top_share is not None and last.top_share >= REPETITIVE_TOP_SHARE:
        c.notes.append(
            f"greedy output is still repetitive (top-token share {last.top_share:.2f}, {int(last.unique)} "
            "unique tokens) but did not fall past the unigram phase; small or short runs do this; compare "
            "with --baseline"
        )


VERDICT_RULES = (
    quant_unfinished,
    log_check,
    quant_shock,
    diverged,
    incomplete,
    decode_path,
    loss_level,
    uniform_phase,
    sample_collapse,
    diversity,
)  # in order: the first verdict one returns is the verdict


def diagnose(run: Run, baseline: Run | None = None) -> Diagnosis:
    """The verdict, the most likely cause, and the evidence behind both."""
    notes = []
    if run.skipped_lines:
        notes.append(f"{run.skipped_lines} line(s) of metrics.jsonl were torn or not JSON and were skipped")
    par = run.probe.get("parity") if isinstance(run.probe, dict) else None
    if isinstance(par, dict) and par.get("ok") is True:
        notes.append(
            f"decode_probe.json: the packed decode path matches training (max relative logit difference "
            f"{fmt(number_or_none(par.get('max_rel_logit_diff')))})"
        )
    findings = find_causes(run, baseline)
    cause = findings[0]["cause"] if findings else None
    c = _Case(run, baseline, cause, [line for f in findings for line in f["evidence"]], notes, *baselines(run))
    for rule in VERDICT_RULES:
        verdict = rule(c)
        if verdict:
            break
    else:
        verdict = "faulty" if cause else "healthy"
    return Diagnosis(verdict, cause, c.evidence, findings, c.notes, measured(run, c))


def measured(run: Run, c: _Case) -> dict:
    """The numbers the checks measured, for --json and the fault zoo's margins."""
    out = {**reproduce.summary(run), **optimizer_config.summary(run), **decode_check.summary(run)}
    out.update(quant_shock_summary(run))
    final = run.val_losses[-1][1] if run.val_losses else None
    if final is not None and c.ln_v:
        out["loss_over_ln_v"] = final / c.ln_v
    if c.dip_z is not None:
        out["dip_z"] = c.dip_z
    return out
