"""What a run's records support: a run that ended early, and what its length and vocabulary imply.

Two verdict rules (verdicts.VERDICT_RULES):

  incomplete     the run ended before its planned last step: a "stop" record for an error (the trainer writes
                 one when an exception ends the run), or no "end" record and a last logged step short of the
                 planned one (a kill leaves only a torn last line). The evidence says where it ended, the error,
                 the last checkpoint; a note says what the losses did up to there, and a learning judgement is
                 made only where the records reach far enough (LN_V_EXIT_STEPS). A non-finite stop is "diverged".
  uniform_phase  no unigram entropy is known (a foreign log without --data or --unigram-entropy): after at least
                 LN_V_EXIT_STEPS steps at a working LR, a loss still at or above UNIGRAM_CEILING_FRAC x ln V has
                 not reached even the token-frequency level: "not_learning", said as an inference. Healthy runs
                 leave ln V within ~50 steps at vocab 50257 and ~10 at vocab 256, and the unigram entropy of
                 tokenized text sits well below ln V (docs/debugging.md has the numbers); a threshold on ln V alone
                 (NEAR_LN_V_FRAC) misses a run at 0.947 ln V after 4000 steps, as in the debugging report.

What this is not: a judgement of the curves' shape (verdicts.py does that for runs that completed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitnet_ref.doctor.records import fmt
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import LN_V_EXIT_STEPS, NEAR_LN_V_FRAC, UNIGRAM_CEILING_FRAC

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run


def _last_step(run: Run) -> int | None:
    steps = [r.get("step") for r in run.steps + run.evals if isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def ended_early(run: Run) -> bool:
    """The records say the run did not finish: an error's stop record, or no end record short of the plan."""
    if run.stopped or run.ended:
        return False
    last, planned = _last_step(run), run.planned_steps
    return run.error is not None or (planned is not None and last is not None and last < planned)


def _so_far(c) -> str:
    """What the logged losses support about learning, up to where the run ended."""
    run, ln_v, uni = c.run, c.ln_v, c.uni
    losses = [(r["step"], v) for r in run.steps if (v := number_or_none(r.get("loss"))) is not None]
    if not losses:
        return "no training step was logged after the run began: nothing to judge learning by"
    (s0, l0), (s1, l1) = losses[0], losses[-1]
    where = f"the train loss went from {l0:.3f} (step {s0}) to {l1:.3f} (step {s1})"
    if uni is not None and l1 < uni:
        return f"{where}, below the unigram entropy {uni:.3f}: it was learning when it ended"
    if ln_v and l1 < NEAR_LN_V_FRAC * ln_v:
        return f"{where}, below {NEAR_LN_V_FRAC} x ln V ({ln_v:.3f}): it had begun to learn when it ended"
    if s1 < LN_V_EXIT_STEPS:
        return (
            f"{where}: still near ln V ({fmt(ln_v)}), but {s1} steps are fewer than the {LN_V_EXIT_STEPS} after "
            "which a healthy run has long left it: too early to say whether it learns"
        )
    return f"{where}: still near ln V ({fmt(ln_v)}) after {s1} steps: not learning, as far as the records go"


def incomplete(c) -> str | None:
    run = c.run
    if not ended_early(run):
        return None
    ck = run.ckpt if run.ckpt and "error" not in run.ckpt else None
    parts = [
        f"the run ended early: last logged step {_last_step(run)} of {run.planned_steps or '?'} planned, no end record",
        run.error,
        "the log ends in a torn line (killed mid-write)" if run.skipped_lines else None,
        f"last checkpoint at step {ck.get('step')}" if ck else "no checkpoint",
    ]
    c.evidence.insert(0, "; ".join(p for p in parts if p))
    c.notes.append(f"judged only on what its records hold: {_so_far(c)}")
    return "incomplete"


def working_steps(run: Run) -> int:
    """Steps logged at a working LR: from the first step whose LR is at least half the run's highest (all the
    steps when the log has no LR) to the last step logged."""
    lrs = [(r.get("step"), lr) for r in run.steps if (lr := number_or_none(r.get("lr"))) is not None]
    last = _last_step(run) or 0
    if not lrs:
        return last
    top = max(lr for _, lr in lrs)
    first = next(s for s, lr in lrs if lr >= 0.5 * top)
    return last - first if top > 0 else 0


def uniform_phase(c) -> str | None:
    run, ln_v = c.run, c.ln_v
    if c.uni is not None or not ln_v:
        return None
    vals = run.val_losses
    final = vals[-1] if vals else next(((r["step"], number_or_none(r.get("loss"))) for r in reversed(run.steps)), None)
    working = working_steps(run)
    if final is None or final[1] is None or working < LN_V_EXIT_STEPS or final[1] < UNIGRAM_CEILING_FRAC * ln_v:
        return None
    c.evidence.insert(
        1,
        f"never left the uniform phase: the loss is still {final[1] / ln_v:.3f} x ln V ({final[1]:.3f} nats, ln V "
        f"{ln_v:.3f}) at step {final[0]}, after {working} steps at a working LR: not yet a token-frequency model",
    )
    uniq = [(r.get("step"), u) for r in run.evals if (u := number_or_none(r.get("unique_tokens"))) is not None]
    if uniq:
        c.evidence.append(
            "unique tokens: " + ", ".join(f"{int(u)}@{s}" for s, u in uniq[-10:]) + ": greedy decoding of a model "
            "that has not yet learned token frequencies repeats whatever token it ranks first; not a collapse"
        )
    c.notes.append(
        f"an inference (no unigram entropy given: --data or --unigram-entropy would measure it): the unigram "
        f"entropy of tokenized text is well below ln V (Python source 0.58 ln V as bytes, 0.62 as a 50257-token "
        f"BPE), so a loss at or above {UNIGRAM_CEILING_FRAC} ln V is not yet even a token-frequency model; healthy "
        f"runs at vocab 50257 leave ln V within ~50 steps and pass the unigram entropy within ~100, and this one "
        f"had {working}: it has not started learning, whatever its samples do"
    )
    return "not_learning"
