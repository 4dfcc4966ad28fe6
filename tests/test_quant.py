"""Quantizers and STEs: exact formulas, invariances, eps, dtypes, and which weights receive gradient."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bitnet_ref import quant as Q

f32 = st.floats(-10, 10, width=32, allow_nan=False, allow_infinity=False)
mats = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=f32)
T = torch.from_numpy


# ---- weight_quant ----------------------------------------------------------------------------------------------


def test_weight_quant_worked_example():
    w = torch.tensor([[0.5, -0.2, 0.0], [0.1, 0.3, -0.7]])  # mean|w| = 1.8 / 6 = 0.3
    codes, beta = Q.weight_quant(w)
    assert codes.dtype == torch.int8 and beta.dtype == torch.float32 and beta.dim() == 0
    assert beta.item() == pytest.approx(0.3)
    # w / beta = [[1.67, -0.67, 0], [0.33, 1.0, -2.33]]
    assert codes.tolist() == [[1, -1, 0], [0, 1, -1]]


@settings(deadline=None)
@given(mats)
def test_weight_quant_round_trip_and_idempotence(w):
    w = T(w)
    codes, beta = Q.weight_quant(w)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    assert beta.item() == pytest.approx(max(w.abs().mean().item(), 1e-5), rel=1e-6)
    deq = Q.weight_dequant(w)
    assert torch.equal(deq, codes.float() * beta)  # round trip is codes * beta
    codes2, _ = Q.weight_quant(deq)
    assert torch.equal(codes2, codes)  # quantizing the dequantized weight is a no-op on the codes


@settings(deadline=None)
@given(mats, st.integers(-20, 20))
def test_weight_quant_scale_invariance_exact_for_powers_of_two(w, k):
    w = T(w)
    assume(w.abs().mean().item() > 1e-3)
    c = 2.0**k  # exact in floating point, so the codes must match exactly
    assume(w.abs().mean().item() * c > 2e-5)  # below eps, beta is eps and invariance does not hold
    codes, beta = Q.weight_quant(w)
    codes_c, beta_c = Q.weight_quant(w * c)
    assert torch.equal(codes_c, codes)
    assert beta_c.item() == beta.item() * c


@settings(deadline=None)
@given(mats, st.floats(1e-3, 1e3))
def test_weight_quant_scale_invariance_any_positive_scale(w, c):
    w = T(w)
    assume(w.abs().mean().item() > 1e-3 and w.abs().mean().item() * c > 2e-5)
    codes, beta = Q.weight_quant(w)
    codes_c, _ = Q.weight_quant(w * c)
    # away from the rounding thresholds |w / beta| = 0.5, 1.5, ... the codes must agree
    r = (w / beta).abs()
    near = ((r - r.floor()) - 0.5).abs() < 1e-4
    assert torch.equal(codes_c[~near], codes[~near])


def test_eps_on_all_zero_input():
    codes, beta = Q.weight_quant(torch.zeros(3, 4))
    assert beta.item() == pytest.approx(1e-5) and not codes.any()
    q, gamma = Q.act_quant(torch.zeros(2, 5))
    assert torch.allclose(gamma, torch.full((2, 1), 1e-5 / 127)) and not q.any()
    assert torch.isfinite(Q.act_fake_quant(torch.zeros(2, 5))).all()
    # tiny weights (mean below eps) are measured against eps, so they all round to 0
    codes, beta = Q.weight_quant(torch.full((2, 2), 1e-7))
    assert beta.item() == pytest.approx(1e-5) and not codes.any()


# ---- act_quant -------------------------------------------------------------------------------------------------


def test_act_quant_worked_example():
    x = torch.tensor([[5 / 3, 1 / 3, -1 / 3], [0.0, -2.0, 1.0]])
    q, gamma = Q.act_quant(x)
    # row 0: 127 / (5/3) * [5/3, 1/3, -1/3] = [127, 25.4, -25.4]; row 1: 127 / 2 * [0, -2, 1] = [0, -127, 63.5]
    assert q.tolist() == [[127, 25, -25], [0, -127, 64]]
    assert gamma.shape == (2, 1)
    assert gamma.flatten().tolist() == pytest.approx([(5 / 3) / 127, 2 / 127])


@settings(deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9)), elements=f32))
def test_act_quant_range_and_per_token(x):
    x = T(x)
    q, gamma = Q.act_quant(x)
    assert q.dtype == torch.int8 and gamma.dtype == torch.float32 and gamma.shape == (*x.shape[:-1], 1)
    absmax = x.abs().amax(-1, keepdim=True)
    assert torch.allclose(gamma, absmax.clamp(min=1e-5) / 127)
    assert q.abs().max() <= 127
    big = absmax.squeeze(-1) > 1e-5  # every such token uses its full range
    assert torch.equal(q.abs().amax(-1)[big], torch.full_like(q.abs().amax(-1)[big], 127))
    # per token: a token's codes do not depend on the other tokens
    q0, _ = Q.act_quant(x[..., :1, :])
    assert torch.equal(q0, q[..., :1, :])
    assert (Q.act_dequant(x) - x).abs().le(gamma / 2 + 1e-6).all()  # rounding error at most half a step


def test_scales_are_float32_for_bf16_input():
    torch.manual_seed(0)
    x = torch.randn(4, 16).bfloat16()
    q, gamma = Q.act_quant(x)
    q32, gamma32 = Q.act_quant(x.float())
    assert gamma.dtype == torch.float32 and torch.equal(gamma, gamma32) and torch.equal(q, q32)
    w = torch.randn(8, 16).bfloat16()
    codes, beta = Q.weight_quant(w)
    codes32, beta32 = Q.weight_quant(w.float())
    assert beta.dtype == torch.float32 and beta.item() == beta32.item() and torch.equal(codes, codes32)
    assert Q.act_fake_quant(x).dtype == torch.bfloat16


def test_fake_quant_runs_under_bf16_autocast():
    torch.manual_seed(0)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(Q.act_fake_quant(x), Q.weight_fake_quant(w))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w.grad is not None and w.grad.abs().gt(0).all()


# ---- straight-through estimators -------------------------------------------------------------------------------


@settings(deadline=None)
@given(mats)
def test_reference_ste_gradient_is_identity_for_every_weight(w):
    w = T(w).requires_grad_()
    g = torch.arange(1.0, w.numel() + 1).view_as(w)
    out = Q.weight_fake_quant(w)
    # value = w + (dequant - w): the dequantized weight up to float rounding of that sum
    assert torch.allclose(out.detach(), Q.weight_dequant(w), rtol=0, atol=1e-6 * (1 + w.abs().max().item()))
    (out * g).sum().backward()
    assert torch.equal(w.grad, g)  # saturated entries included


def _saturating_weight():
    # beta = mean|w| = 1.0; w / beta spans zero, +-1 inside the clamp, exactly-rounding-to-1, and clipped
    return torch.tensor([[0.1, -0.3, 0.9, -1.2], [2.0, -2.5, 0.6, 0.4]], requires_grad=True)


def test_ste_grad_on_saturated_weights_reference_vs_clamp_ste():
    w = _saturating_weight()
    codes, beta = Q.weight_quant(w)
    assert beta.item() == pytest.approx(1.0)
    clipped = (w / beta).abs().detach() >= 1.5  # round() lands outside [-1, 1]: clamp saturates
    assert clipped.tolist() == [[False, False, False, False], [True, True, False, False]]
    assert codes[clipped].abs().eq(1).all()

    Q.weight_fake_quant(w).sum().backward()
    assert w.grad.ne(0).all()  # reference: every latent weight, saturated ones included
    ref_value = Q.weight_dequant(w)

    w2 = _saturating_weight()
    out = Q.weight_fake_quant_clamp_ste(w2)
    assert torch.allclose(out.detach(), ref_value)  # same forward value ...
    out.sum().backward()
    assert w2.grad[clipped].eq(0).all()  # ... but the saturated weights lose their gradient
    # Codes of +-1 that did not need clipping (round(w/beta) == +-1 exactly, on the clamp boundary): torch 2.13
    # passes gradient at the boundary. This asserts the behaviour of the installed torch, whatever it is.
    boundary = codes.ne(0) & ~clipped
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    x.clamp(-1, 1).sum().backward()
    clamp_passes_at_boundary = bool(x.grad.ne(0).all())
    assert w2.grad[boundary].ne(0).all() == clamp_passes_at_boundary
    assert w2.grad[codes.eq(0)].ne(0).all()


def test_no_ste_gives_no_gradient_path():
    w = _saturating_weight()
    out = Q.weight_fake_quant_no_ste(w)
    assert not out.requires_grad
    assert torch.equal(out, Q.weight_dequant(w))


def test_act_ste_reaches_every_input():
    x = torch.tensor([[3.0, -0.001, 0.0, 1.5]], requires_grad=True)
    Q.act_fake_quant(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_no_dequant_helpers_return_raw_codes():
    w = torch.tensor([[0.5, -0.2, 0.0], [0.1, 0.3, -0.7]], requires_grad=True)
    assert Q.weight_codes_ste(w).tolist() == [[1, -1, 0], [0, 1, -1]]
    x = torch.tensor([[5 / 3, 1 / 3, -1 / 3]], requires_grad=True)
    assert Q.act_codes_ste(x).tolist() == [[127, 25, -25]]
    (Q.weight_codes_ste(w).sum() + Q.act_codes_ste(x).sum()).backward()
    assert w.grad.ne(0).all() and x.grad.ne(0).all()


# ---- fake_quant_linear: the reference BitLinear arithmetic -----------------------------------------------------


def _faq_linear(x, w):  # the FAQ's formula, written out
    return torch.nn.functional.linear(Q.act_fake_quant(x), Q.weight_fake_quant(w))


def test_fake_quant_linear_matches_faq_formula_value_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32, requires_grad=True)
    w = (torch.randn(16, 32) * 0.02).requires_grad_()
    g = torch.randn(3, 5, 16)
    y = Q.fake_quant_linear(x, w)
    ref = _faq_linear(x, w)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-7)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, w))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, w))
    assert torch.allclose(gx, rx, rtol=1e-5, atol=1e-8) and torch.allclose(gw, rw, rtol=1e-5, atol=1e-7)
    assert gw.ne(0).all()


def test_fake_quant_linear_is_the_integer_kernel_bit_for_bit():
    torch.manual_seed(1)
    x, w = torch.randn(6, 48), torch.randn(24, 48)
    q, gamma = Q.act_quant(x)
    codes, beta = Q.weight_quant(w)
    acc = q.long() @ codes.long().t()  # exact int64 matmul, as the packed kernel's int32 result
    expected = acc.float() * (gamma * beta)
    assert torch.equal(Q.fake_quant_linear(x, w), expected)
    # and so a row's output does not depend on which batch it is computed in
    assert torch.equal(Q.fake_quant_linear(x[2:3], w), expected[2:3])


def test_fake_quant_linear_accumulates_exactly_under_bf16_autocast():
    # Under autocast F.linear runs in bf16 (8 significant bits); the integer accumulator q @ codes.T reaches
    # thousands here, so it is only exact if the quantized matmul is kept out of autocast.
    torch.manual_seed(0)
    x, w = torch.randn(3, 512), torch.randn(64, 512)
    q, gamma = Q.act_quant(x)
    codes, beta = Q.weight_quant(w)
    acc = q.long() @ codes.long().t()  # exact, int64
    assert acc.abs().max() > 512  # large enough that bf16 accumulation would round it
    expected = acc.float() * (gamma * beta)  # the fp32 forward, computed outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = Q.fake_quant_linear(x, w)
    assert y.dtype == torch.float32  # x was float32, so the output keeps x's dtype
    assert torch.equal(y, expected)


# ---- weight_latent: the latent of given codes and beta (packed imports) ----------------------------------------


def _reachable(n: int, beta: torch.Tensor) -> bool:
    """Is beta fl(S / n) for some float32 S? (torch's float32 mean is fl(fl(sum) / n), monotone in S.)"""
    s0 = torch.tensor(float(beta) * n, dtype=torch.float32)
    return any(torch.equal(Q._f32_step(s0, k) / n, beta) for k in range(-3, 4))


@settings(max_examples=150)
@given(
    st.integers(1, 96),
    st.integers(1, 96),
    st.integers(0, 2**32 - 1),
    st.floats(9.999999747378752e-06, 10.0, width=32),
    st.floats(0.0, 1.0),
)
def test_weight_latent_gives_back_the_codes_and_beta(n, k, seed, beta, density):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    codes[torch.rand(n, k, generator=g) > density] = 0
    beta = torch.tensor(beta, dtype=torch.float32).clamp(min=Q.EPS)  # the float32 floor, 9.99999975e-06
    w, exact = Q.weight_latent(codes, beta)
    c2, b2 = Q.weight_quant(w)
    assert w.dtype == torch.float32 and w.shape == codes.shape
    assert torch.equal(c2, codes)  # always: the codes survive re-quantization
    if not codes.any():  # zero codes quantize the same whatever beta is
        assert exact and not w.any()
        return
    assert exact == torch.equal(b2, beta)
    if _reachable(codes.numel(), beta):
        assert exact  # whenever float32 can hold such a mean, it is found
    else:  # otherwise the nearest reachable scale, a float32 step or two away
        assert abs(float(b2) - float(beta)) <= 2.5e-7 * float(beta)


def test_weight_latent_is_not_codes_times_beta():
    """The naive latent codes * beta re-quantizes to beta * p (p = share of nonzero codes): why weight_latent exists."""
    codes = torch.tensor([[1, 0, -1, 0], [0, 0, 1, 1]], dtype=torch.int8)
    beta = torch.tensor(0.02)
    assert torch.allclose(Q.weight_quant(codes * beta)[1], beta * 0.5)
    w, exact = Q.weight_latent(codes, beta)
    assert exact and torch.equal(Q.weight_quant(w)[1], beta) and torch.equal(Q.weight_quant(w)[0], codes)


def test_weight_latent_unreachable_beta_is_flagged():
    n = 3 * 4096  # 3 * 2**k elements: about one float32 beta in five is the mean of no float32 tensor
    codes = torch.ones(3, 4096, dtype=torch.int8)
    found = None
    b = torch.tensor(1.9, dtype=torch.float32)
    for _ in range(64):
        if not _reachable(n, b):
            found = b
            break
        b = Q._f32_step(b, 1)
    assert found is not None
    w, exact = Q.weight_latent(codes, found)
    b2 = Q.weight_quant(w)[1]
    assert not exact and torch.equal(Q.weight_quant(w)[0], codes) and abs(float(b2) - float(found)) <= 2.5e-7 * 1.9


def test_weight_latent_refuses_a_beta_below_the_floor():
    with pytest.raises(ValueError, match="below the absmean floor"):
        Q.weight_latent(torch.ones(2, 2, dtype=torch.int8), 1e-6)
    w, exact = Q.weight_latent(torch.zeros(2, 2, dtype=torch.int8), 0.5)  # all zero: any beta, W = 0
    assert exact and not w.any()
