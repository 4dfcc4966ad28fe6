"""The quantization warmup: lambda's properties for every shape (as the LR schedule's are tested), the blended
forward at its two ends, the straight-through gradient between them, and the trainer's per-step record."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_ref import quant as Q
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.train import loop as T
from bitnet_ref.train.quant_warmup import SHAPES, TARGETS, QuantWarmup, quant_lambda, strengths


@st.composite
def warmups(draw):
    shape = draw(st.sampled_from(SHAPES))
    k = None if shape == "linear" else draw(st.one_of(st.none(), st.floats(0.1, 200)))
    return QuantWarmup(draw(st.integers(0, 3000)), shape, k, draw(st.sampled_from(TARGETS)))


@settings(max_examples=300)
@given(warmups(), st.integers(0, 4000))
def test_lambda_is_bounded_and_exactly_one_from_step_n(w, step):
    lam = quant_lambda(step, w)
    assert 0.0 <= lam <= 1.0
    if step >= w.steps:
        assert lam == 1.0  # exactly: the recipe's forward, not a blend that rounds to it
    if step == 0 and w.steps > 0:
        assert lam == 0.0  # evaluation 0 of a warmed run is the full-precision model


@settings(max_examples=200)
@given(warmups())
def test_lambda_never_falls(w):
    lams = [quant_lambda(s, w) for s in range(0, w.steps + 3, max(1, w.steps // 200))]
    assert all(b >= a for a, b in zip(lams, lams[1:]))


@settings(max_examples=200)
@given(warmups(), st.integers(0, 4000))
def test_strengths_warm_only_what_is_asked(w, step):
    lam, (sw, sa) = quant_lambda(step, w), strengths(step, w)
    assert (sw, sa) == {"both": (lam, lam), "weights": (lam, 1.0), "activations": (1.0, lam)}[w.on]


@pytest.mark.parametrize("n, step", [(1000, 1), (1000, 250), (1000, 999), (7, 3)])
def test_the_shapes_are_the_studys(n, step):
    t = step / n
    assert quant_lambda(step, QuantWarmup(n)) == t  # lambda = min(step / N, 1)
    for k in (4, 6, 10):
        assert quant_lambda(step, QuantWarmup(n, "exponential", k)) == pytest.approx(1 - (1 - t) ** k, abs=1e-15)
    for k in (15, 20, 100):
        study = 1 / (1 + math.exp(-k * (t - 0.5)))  # not exactly 0 at t = 0 nor 1 at t = 1
        lo = 1 / (1 + math.exp(k / 2))  # the study's value at t = 0: the normalised curve differs by lo / (1 - 2 lo)
        assert abs(quant_lambda(step, QuantWarmup(n, "sigmoid", k)) - study) <= lo / (1 - 2 * lo) + 1e-15


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=-1), "steps"),
        (dict(steps=10, shape="cosine"), "shape"),
        (dict(steps=10, k=3.0), "linear"),
        (dict(steps=10, shape="sigmoid", k=0.0), "k must"),
        (dict(steps=10, on="head"), "applies to"),
    ],
)
def test_bad_warmups_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        QuantWarmup(**kw)


# ---- the blended forward -------------------------------------------------------------------------------------


def _pair(layout="official", seed=0):
    cfg = ModelConfig.preset("tiny", layout=layout)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    fp = Transformer(ModelConfig.preset("tiny", layout=layout, quant="none"))
    fp.load_state_dict(model.state_dict())
    return model, fp


@pytest.mark.parametrize("layout", ["official", "per-linear-norm", "llama"])
def test_strength_one_is_the_recipe_and_zero_is_full_precision_bit_for_bit(layout):
    model, fp = _pair(layout)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    recipe = model(idx)[0]
    w = QuantWarmup(50, "sigmoid")
    model.set_quant_strength(*strengths(0, w))
    assert torch.equal(model(idx)[0], fp(idx)[0])
    model.set_quant_strength(*strengths(25, w))
    middle = model(idx)[0]
    assert not torch.equal(middle, recipe) and not torch.equal(middle, fp(idx)[0])
    model.set_quant_strength(*strengths(50, w))
    assert torch.equal(model(idx)[0], recipe)


def test_blend_gradient_is_straight_through():
    x = torch.randn(5, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    g = torch.randn(5, 8)
    Q.blended_linear(x, w, 0.3, 0.7).backward(g)
    x_hat = (x + 0.7 * (Q.act_dequant(x) - x)).detach()
    w_hat = (w + 0.3 * (Q.weight_dequant(w) - w)).detach()
    assert torch.allclose(w.grad, g.t() @ x_hat, atol=1e-5)  # d/dw through the blend is the identity
    assert torch.allclose(x.grad, g @ w_hat, atol=1e-5)


def test_strength_is_checked():
    model, _ = _pair()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.set_quant_strength(1.5, 1.0)
    no_ste = Transformer(ModelConfig.preset("tiny", ablate=["no-ste"]))
    with pytest.raises(ValueError, match="replace the quantizer"):
        no_ste.set_quant_strength(0.5, 0.5)


# ---- the trainer ------------------------------------------------------------------------------------------------


def test_trainer_logs_lambda_and_evaluates_step_zero_in_full_precision(tmp_path, corpus_file):
    cfg = T.TrainConfig(
        preset="tiny",
        steps=6,
        batch_size=2,
        warmup=1,
        eval_every=3,
        eval_batches=1,
        probe_prompts=1,
        probe_prompt_len=4,
        probe_tokens=4,
        data=corpus_file,
        out=str(tmp_path / "run"),
        threads=1,
        quant_warmup=4,
        quant_warmup_shape="exponential",
    )
    T.train(cfg, log=lambda *a: None)
    recs = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    w = QuantWarmup(4, "exponential")
    assert [r["quant_lambda"] for r in recs if r["kind"] == "step"] == [quant_lambda(s, w) for s in range(1, 7)]
    # evaluations at 0 (full precision), 3, 6, and at 4: the first step at full strength
    assert [(r["step"], r["quant_lambda"]) for r in recs if r["kind"] == "eval"] == [
        (0, 0.0),
        (3, quant_lambda(3, w)),
        (4, 1.0),
        (6, 1.0),
    ]
    assert recs[0]["quant_warmup"] == {"steps": 4, "shape": "exponential", "k": 6.0, "on": "both"}


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(quant="none", quant_warmup=5), "no effect with --quant none"),
        (dict(quant_warmup_shape="sigmoid"), "no effect without --quant-warmup"),
        (dict(quant_warmup=5, ablate=["no-ste"]), "replaces the quantizer"),
    ],
)
def test_trainer_refuses_warmups_without_effect(over, match):
    with pytest.raises(T.ConfigError, match=match):
        T.plan(T.TrainConfig(**over))
