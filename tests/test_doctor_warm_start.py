"""The doctor on warm starts: quantization shock (abrupt, or a warmup too short), a warmup that never finished,
and a warmed run called healthy; on synthetic records shaped like the real runs of report-warmup.md."""

import math
from pathlib import Path

import pytest

from bitnet_ref.doctor.quant_shock import measure_shock
from bitnet_ref.doctor.run import Run
from bitnet_ref.doctor.verdicts import diagnose

LN_V, UNI, START = math.log(256), 3.23, 1.76


def warm_run(lam, loss, *, steps=200, planned=None, warmup=0, init=True, eval0=None) -> Run:
    """A warm-started run: lam(step) and loss(step) for steps 1..steps, evals every 25 steps."""
    header = {
        "ln_vocab": LN_V,
        "unigram_entropy": UNI,
        "config": {"vocab_size": 256},
        "train_config": {"steps": planned or steps, "quant_warmup": warmup, "quant_warmup_shape": "linear"},
    }
    if init:
        header["init"] = {
            "from": "fp/ckpt.pt",
            "kind": "bitnet_ref",
            "val_loss_unquantized": START,
            "train_loss_unquantized": START,
            "train_loss_steps": 10,
        }
    recs = [
        {"kind": "step", "step": s, "loss": loss(s), "lr": 1e-3, "quant_lambda": lam(s)} for s in range(1, steps + 1)
    ]
    evals = [
        {
            "kind": "eval",
            "step": s,
            "val_loss": (eval0 if s == 0 and eval0 is not None else loss(max(s, 1))),
            "quant_lambda": lam(s),
            "unique_tokens": 20,
            "top_token_share": 0.3,
        }
        for s in range(0, steps + 1, 25)
    ]
    return Run(Path("no-such-run"), header, recs, evals, ended=planned is None)


def wobble(s):  # one batch's noise, deterministic
    return 0.06 * math.sin(1.7 * s)


def abrupt_loss(s):  # the shape measured on the d_model-128 arm: +0.75 nats at once, back within ~50 steps
    return START + 0.1 + 0.65 * math.exp(-s / 15) + wobble(s)


def test_abrupt_quantization_is_a_shock_with_its_cause():
    d = diagnose(warm_run(lambda s: 1.0, abrupt_loss, eval0=START + 0.75))
    assert (d.verdict, d.cause) == ("quantization_shock", "abrupt_quantization")
    assert "jumped +0.750 nats" in d.evidence[0] and "20% of the way" in d.evidence[0]
    assert "val loss at step 0 vs the start's" in d.evidence[0]


def test_a_warmed_run_is_healthy_with_a_note():
    def drift(s):  # the loss rises by 0.3 nats over the warmup (lambda and the LR rising), then falls back
        return START + 0.3 * min(s / 100, 1.0) - 0.2 * max(0, s - 100) / 100 + wobble(s)

    run = warm_run(lambda s: min(s / 100, 1.0), drift, warmup=100)
    d = diagnose(run)
    assert (d.verdict, d.cause) == ("healthy", None)
    assert any(n.startswith("warm start: where the quantization came in") for n in d.notes)


def test_a_warmup_too_short_for_the_model():
    run = warm_run(lambda s: min(s / 5, 1.0), lambda s: abrupt_loss(max(s - 5, 0)), warmup=5)
    d = diagnose(run)
    assert (d.verdict, d.cause) == ("quantization_shock", "short_quant_warmup")
    assert "mean train loss of steps 1-10 vs the start's on them" in d.evidence[0]
    assert "lambda rose to 1 in 5 steps" in d.evidence[-1]


def test_lambda_that_never_reaches_one():
    d = diagnose(warm_run(lambda s: s / 400, lambda s: START + wobble(s), warmup=400))
    assert (d.verdict, d.cause) == ("quant_unfinished", "warmup_longer_than_run")
    assert "lambda is 0.500 at the last logged step 200" in d.evidence[0]


def test_an_unfinished_warmup_of_a_run_still_going_is_only_a_note():
    d = diagnose(warm_run(lambda s: s / 400, lambda s: START + wobble(s), warmup=400, planned=1000))
    assert d.verdict != "quant_unfinished"
    assert any("warmup still under way: lambda 0.500" in n for n in d.notes)


@pytest.mark.parametrize("init", [False, True])
def test_no_shock_without_a_trained_start_or_a_logged_lambda(init):
    run = warm_run(lambda s: 1.0, lambda s: LN_V - 2.5 * (1 - math.exp(-s / 30)), init=init)
    if init:  # a start that is worse than where the run ends: no shock, whatever the curve
        run.header["init"]["val_loss_unquantized"] = LN_V
    assert measure_shock(run) is None
    assert diagnose(run).verdict != "quantization_shock"


def test_a_nonfinite_loss_is_divergence_not_shock():
    run = warm_run(lambda s: 1.0, abrupt_loss, eval0=START + 0.75)
    run.steps[30]["loss"] = None
    assert diagnose(run).verdict == "diverged"
