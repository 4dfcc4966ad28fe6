"""The doctor on the full-precision-to-ternary path: quantization shock, and a warmup that never finished.

A run that starts from trained full-precision weights (``--init-from``; the metrics header's ``init`` records
the start and its val loss without quantization, measured on the run's own validation batches) and logs its
quantization strength per step (``quant_lambda``) can fail in two ways of its own:

  quantization_shock (verdict)  where the quantization comes in (the steps with lambda < 1 and the
      SHOCK_SETTLE steps after it first reaches 1), the loss jumps, over one short span, by at least SHOCK_FRAC
      of the way from the start's unquantized val loss to ln V: the quantization destroyed much of what the
      start knew (Hugging Face's "Fine-tuning LLMs to 1.58bit": Llama3-8B from ~2 to ~13 nats, above ln V,
      abruptly quantized). A span is measured like with like (``_jumps``): evaluation 0 against the start's
      unquantized val loss, consecutive evaluations at most SHOCK_WINDOW steps apart (the same validation
      batches), SHOCK_WINDOW-step means of the train loss against the start's unquantized loss on the same
      batches or the SHOCK_WINDOW steps before. A jump, not a drift: a warmup the model follows, or the LR
      rising, moves the loss little over one span. Its cause:
        abrupt_quantization  lambda is 1 from the first step: no warmup (--quant-warmup N to warm it in);
        short_quant_warmup   a warmup of N steps that did not prevent it: too short for this model.
  quant_unfinished (verdict)  the last logged lambda is below 1 in a run that is complete or was planned too
      short to reach 1: every logged loss is of a partly full-precision model, and the ternary model (what the
      checkpoint decodes as) was never trained or evaluated. Its cause: warmup_longer_than_run.

The rules read the logged lambdas and losses; the header's warmup settings only label the evidence. Thresholds
are in thresholds.py. What this is not: a judge of runs from a random init (no trained start, no shock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import SHOCK_FRAC, SHOCK_SETTLE, SHOCK_WINDOW

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run


@dataclass(frozen=True)
class Shock:
    """The largest jump of the loss where the quantization came in, in a warm-started run."""

    start: float  # the start's val loss without quantization
    ln_v: float
    jump: float  # nats: the largest rise over a short span (see ``measure_shock``)
    before: float  # the loss before that rise ...
    after: float  # ... and after it
    what: str  # where it was measured, in words
    step: int  # the step the higher loss was measured at
    lam: float | None  # lambda there
    full_step: int  # the first step logged at lambda 1 (0: evaluation 0 already was)
    warmup_steps: int  # steps logged below lambda 1 before it (0: abrupt)
    end: float | None  # the mean train loss over the last SHOCK_WINDOW steps

    @property
    def frac(self) -> float:
        """How far toward ln V the jump took the loss, from the start: 0 = not at all, 1 = all the way."""
        return self.jump / (self.ln_v - self.start)

    @property
    def is_shock(self) -> bool:
        return self.frac >= SHOCK_FRAC


def _ln_v(run: Run) -> float | None:
    import math

    v = number_or_none(run.header.get("ln_vocab"))
    cfg = run.header.get("config")
    size = number_or_none(cfg.get("vocab_size")) if isinstance(cfg, dict) else None
    return v if v is not None else (math.log(size) if size else None)


def _lambdas(run: Run) -> list:
    """[(step, lambda, loss)] of the step records that log both."""
    out = []
    for r in run.steps:
        lam, loss, step = (number_or_none(r.get(k)) for k in ("quant_lambda", "loss", "step"))
        if lam is not None and loss is not None and step is not None:
            out.append((int(step), lam, loss))
    return out


def _init(run: Run, key: str) -> float | None:
    init = run.header.get("init")
    return number_or_none(init.get(key)) if isinstance(init, dict) else None


def start_loss(run: Run) -> float | None:
    """The start's val loss without quantization, on the run's evaluation batches (the metrics header's)."""
    return _init(run, "val_loss_unquantized")


def _jumps(run: Run, lams: list, last: int) -> list:
    """(rise, before, after, what, step, lambda) for every short span that ends by step ``last``.

    Each compares like with like: an evaluation with the one before it when they are at most SHOCK_WINDOW
    steps apart (the same validation batches; evaluation 0 with the start's unquantized val loss), the first
    SHOCK_WINDOW steps' mean train loss with the start's unquantized loss on those very batches, and each later
    SHOCK_WINDOW-step mean with the SHOCK_WINDOW steps before it. A slow drift (a warmup followed, a rising LR)
    moves little over one span; a shock moves a lot."""
    out, w = [], SHOCK_WINDOW
    prev = ("the start's unquantized val loss", start_loss(run), 0)
    for r in run.evals:
        v, lam, step = (number_or_none(r.get(k)) for k in ("val_loss", "quant_lambda", "step"))
        if v is None or step is None or step > last:
            continue
        if prev[1] is not None and lam and step - prev[2] <= w:  # evaluations further apart than a span: a drift
            out.append((v - prev[1], prev[1], v, f"val loss at step {int(step)} vs {prev[0]}", int(step), lam))
        prev = (f"step {int(step)}'s", v, step)
    window = [x for x in lams if x[0] <= last]
    mean = [sum(x[2] for x in window[i : i + w]) / w for i in range(len(window) - w + 1)]
    first = _init(run, "train_loss_unquantized")
    if mean and first is not None and _init(run, "train_loss_steps") == w and window[w - 1][0] == w:
        out.append(
            (
                mean[0] - first,
                first,
                mean[0],
                f"mean train loss of steps 1-{w} vs the start's on them",
                w,
                window[w - 1][1],
            )
        )
    for i in range(w, len(mean)):
        a, b = window[i], window[i + w - 1]
        out.append(
            (
                mean[i] - mean[i - w],
                mean[i - w],
                mean[i],
                f"mean train loss of steps {a[0]}-{b[0]} vs the {w} before",
                b[0],
                b[1],
            )
        )
    return out


def measure_shock(run: Run) -> Shock | None:
    """The largest jump of a warm-started run whose lambda reached 1; None where the rule does not apply."""
    start, ln_v, lams = start_loss(run), _ln_v(run), _lambdas(run)
    if start is None or ln_v is None or not lams or start >= ln_v:
        return None
    full = next((s for s, lam, _ in lams if lam >= 1.0), None)
    if full is None:
        return None  # never reached 1: quant_unfinished's case
    if any(r.get("step") == 0 and number_or_none(r.get("quant_lambda")) == 1.0 for r in run.evals):
        full = 0  # evaluation 0 ran at full strength: abrupt
    jumps = _jumps(run, lams, full + SHOCK_SETTLE)
    if not jumps:
        return None
    rise, before, after, what, step, lam = max(jumps, key=lambda j: j[0])
    tail = [loss for *_, loss in lams[-SHOCK_WINDOW:]]
    warm = sum(1 for s, lam_, _ in lams if s < max(full, 1) and lam_ < 1.0)
    return Shock(start, ln_v, rise, before, after, what, step, lam, full, warm, sum(tail) / len(tail))


def _settings(run: Run) -> str:
    tc = run.header.get("train_config") if isinstance(run.header.get("train_config"), dict) else {}
    init = run.header.get("init") if isinstance(run.header.get("init"), dict) else {}
    n, shape = tc.get("quant_warmup", 0), tc.get("quant_warmup_shape", "linear")
    return f"from {init.get('from', '?')} ({init.get('kind', '?')}), " + (
        f"--quant-warmup {n} ({shape})" if n else "no --quant-warmup"
    )


def _shock_lines(s: Shock, run: Run) -> list:
    lam = f", lambda {s.lam:.2f}" if s.lam is not None else ""
    lines = [
        f"quantization shock: the loss jumped {s.jump:+.3f} nats, {s.before:.3f} -> {s.after:.3f} ({s.what}{lam}), "
        f"{s.frac:.0%} of the way from the start's {s.start:.3f} to ln V {s.ln_v:.3f} (a shock from "
        f"{SHOCK_FRAC:.0%}); {_settings(run)}"
    ]
    if s.end is not None:
        lines.append(
            f"after it: mean train loss {s.end:.3f} over the last {SHOCK_WINDOW} steps (the start's val loss "
            f"{s.start:.3f} unquantized)"
        )
    return lines


def abrupt_quantization(run: Run) -> list | None:
    """Cause: a shock in a run quantized at full strength from its first step."""
    s = measure_shock(run)
    if s is None or not s.is_shock or s.warmup_steps > 0:
        return None
    return [*_shock_lines(s, run), "lambda was 1 from the first step: warm the quantization in with --quant-warmup N"]


def short_quant_warmup(run: Run) -> list | None:
    """Cause: a shock despite a warmup: it reached full strength too fast for this model."""
    s = measure_shock(run)
    if s is None or not s.is_shock or s.warmup_steps == 0:
        return None
    return [
        *_shock_lines(s, run),
        f"lambda rose to 1 in {s.full_step} steps: a warmup too short for this model; try a longer --quant-warmup "
        "(or the linear shape)",
    ]


def _unfinished(run: Run) -> tuple[int, float, int | None] | None:
    """(last step, its lambda, the planned steps) when the run's lambda never reached 1."""
    lams = _lambdas(run)
    if not lams or lams[-1][1] >= 1.0:
        return None
    return lams[-1][0], lams[-1][1], run.planned_steps


def warmup_longer_than_run(run: Run) -> list | None:
    """Cause: lambda never reached 1 in a run that is over (or planned too short for the warmup)."""
    u = _unfinished(run)
    tc = run.header.get("train_config") if isinstance(run.header.get("train_config"), dict) else {}
    n = tc.get("quant_warmup") if isinstance(tc.get("quant_warmup"), int) else None
    if u is None or not (run.complete or (n is not None and u[2] is not None and n > u[2])):
        return None
    step, lam, planned = u
    plan = (
        f"--quant-warmup {n} over a {planned}-step run" if n is not None and planned else "the warmup outlasts the run"
    )
    return [
        f"quantization strength lambda is {lam:.3f} at the last logged step {step} ({plan}): every logged loss is "
        "of a partly full-precision model; the ternary model the checkpoint decodes as was never trained or "
        "evaluated at full strength (shorten --quant-warmup or train longer)"
    ]


def summary(run: Run) -> dict:
    """The shock as a plain number (for --json and the fault zoo's margins); empty where no rule applies."""
    s = measure_shock(run)
    return {} if s is None else {"shock_frac": s.frac, "shock_nats": s.jump}


# ---------------------------------------------------------------------------- verdict rules (doctor.verdicts)


def quant_unfinished(c) -> str | None:
    """The verdict for a run whose lambda never reached 1 (a note when it is still on its way)."""
    if warmup_longer_than_run(c.run):
        return "quant_unfinished"
    u = _unfinished(c.run)
    if u is not None:
        c.notes.append(f"quantization warmup still under way: lambda {u[1]:.3f} at step {u[0]}")
    return None


def quant_shock(c) -> str | None:
    """The verdict for a warm-started run whose loss jumped toward ln V when the quantization came in."""
    if c.run.stopped or any(number_or_none(r.get("loss")) is None for r in c.run.steps):
        return None  # a non-finite loss is the divergence verdict's
    s = measure_shock(c.run)
    if s is None:
        return None
    if s.is_shock:
        return "quantization_shock"
    c.notes.append(
        f"warm start: where the quantization came in the loss jumped at most {s.jump:+.3f} nats ({s.what}), "
        f"{s.frac:.0%} of the way to ln V (a shock from {SHOCK_FRAC:.0%})"
    )
    return None
