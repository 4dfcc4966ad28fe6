"""BitNet b1.58 quantizers: absmean ternary weights, per-token absmax int8 activations, and their STEs.

The formulas are the official ones (Microsoft "Training Tips, Code and FAQ", p.5; HF `integrations/bitnet.py`):

    weights:      beta  = max(mean|W|, 1e-5)            per tensor
                  codes = clamp(round(W / beta), -1, 1)  int8 in {-1, 0, 1};  W_hat = codes * beta
    activations:  s     = max(max|x|, 1e-5)              per token (last dim)
                  q     = clamp(round(x * 127 / s), -128, 127)  int8;  gamma = s / 127;  x_hat = q * gamma

Scales are always computed in float32 (float64 inputs stay float64), whatever the input dtype, so bf16 inputs
under autocast get the same codes as their float32 copies.

The reference straight-through estimator keeps the *whole* quantizer inside `.detach()`:
`w + (dequant(w) - w).detach()`. Its value is the dequantized tensor and its gradient is the identity for every
element, saturated ones included. Two deliberately wrong variants exist only for the ablations `clamp-ste`
and `no-ste` (and the `no-dequant` helpers for the ablation of that name); nothing else should use them.

This module is not the packed runtime path (see runtime/kernels.py); it is the training-time arithmetic and the
oracle the packed path is checked against.
"""

import torch
import torch.nn.functional as F

EPS = 1e-5
QMAX = 127  # int8 activations: round(x * 127 / absmax) lies in [-127, 127]; clamp to [-128, 127] as specified


def _scale_dtype(t: torch.Tensor) -> torch.dtype:
    # float32 at least: bf16/fp16 inputs are upcast before any scale is computed
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def weight_quant(w: torch.Tensor):
    """Absmean ternary quantization, per tensor. Returns (codes int8 like w, beta 0-dim float32)."""
    w = w.detach().to(_scale_dtype(w))
    beta = w.abs().mean().clamp(min=EPS)  # ()
    codes = (w / beta).round().clamp(-1, 1).to(torch.int8)
    return codes, beta


def act_quant(x: torch.Tensor):
    """Per-token absmax int8 quantization. Returns (q int8 like x, gamma float32 of shape (..., 1))."""
    x = x.detach().to(_scale_dtype(x))
    s = x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)  # (..., 1)
    q = (x * (QMAX / s)).round().clamp(-128, 127).to(torch.int8)
    return q, s / QMAX


def weight_dequant(w: torch.Tensor) -> torch.Tensor:
    """codes * beta in w's dtype (no gradient)."""
    codes, beta = weight_quant(w)
    return (codes.to(beta.dtype) * beta).to(w.dtype)


def act_dequant(x: torch.Tensor) -> torch.Tensor:
    """q * gamma in x's dtype (no gradient)."""
    q, gamma = act_quant(x)
    return (q.to(gamma.dtype) * gamma).to(x.dtype)


# ---- reference straight-through estimators -------------------------------------------------------------------


def weight_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Value codes * beta; gradient identity to every latent weight (the FAQ's STE)."""
    return w + (weight_dequant(w) - w).detach()


def act_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Value q * gamma; gradient identity to every input element."""
    return x + (act_dequant(x) - x).detach()


class _FakeQuantLinear(torch.autograd.Function):
    """Value: (q @ codes.T) * (gamma * beta), the integer kernel's arithmetic. Gradient: the reference STEs."""

    @staticmethod
    def forward(ctx, x, w, act=None):
        q, gamma = act_quant(x) if act is None else act  # (..., K) int8, (..., 1)
        codes, beta = weight_quant(w)  # (N, K) int8, ()
        dt = gamma.dtype
        # integer-valued operands: every partial sum is an integer below 2**24 (K <= 2**17), so this matmul
        # is exact in float32 whatever the summation order, batch shape or BLAS kernel. Autocast is switched
        # off around it: under bf16 autocast F.linear would round the accumulator to 8 significant bits.
        with torch.autocast(q.device.type, enabled=False):
            acc = F.linear(q.to(dt), codes.to(dt))  # (..., N)
        ctx.save_for_backward(q, gamma, codes, beta)
        ctx.dtypes = (x.dtype, w.dtype)
        return (acc * (gamma * beta)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        q, gamma, codes, beta = ctx.saved_tensors
        dt, (x_dtype, w_dtype) = gamma.dtype, ctx.dtypes
        g = grad_y.to(dt)  # (..., N)
        grad_x = grad_w = None
        with torch.autocast(g.device.type, enabled=False):  # STE gradients in the scales' precision too
            if ctx.needs_input_grad[0]:  # d/dx of F.linear(x_hat, w_hat) is w_hat: STE identity through act_quant
                grad_x = (g @ (codes.to(dt) * beta)).to(x_dtype)  # (..., K)
            if ctx.needs_input_grad[1]:  # ... and d/dw is x_hat: STE identity through weight_quant, every weight
                x_hat = (q.to(dt) * gamma).reshape(-1, q.shape[-1])  # (M, K)
                grad_w = (g.reshape(-1, g.shape[-1]).t() @ x_hat).to(w_dtype)  # (N, K)
        return grad_x, grad_w, None


def fake_quant_linear(x: torch.Tensor, w: torch.Tensor, act=None) -> torch.Tensor:
    """F.linear(act_fake_quant(x), weight_fake_quant(w)): same gradients, value computed as the packed kernel does.

    ``act`` is ``act_quant(x)`` when the caller already has it (layers sharing one input quantize it once).

    The FAQ form sums float products q*gamma*c*beta, so its rounding depends on the batch shape and BLAS
    kernel, and round() in the next layer turns that noise into code flips (KV-cache decoding and full
    recompute then disagree by ~1e-2). Here the matmul runs on the integer codes, which is exact, and the
    scales multiply the result: y = acc * (gamma * beta). A runtime path that computes acc in int32 and scales
    it the same way reproduces this forward bit for bit.
    """
    return _FakeQuantLinear.apply(x, w, act)


def blended_linear(x: torch.Tensor, w: torch.Tensor, weights: float, activations: float) -> torch.Tensor:
    """F.linear(x + a * (act_dequant(x) - x), w + b * (weight_dequant(w) - w)), each difference detached.

    The quantization warmup of a full-precision-to-ternary fine-tune (Hugging Face's "Fine-tuning LLMs to
    1.58bit"): the strength b (weights) and a (activations) go from 0 to 1. The gradient is the identity to x and
    w (the straight-through estimator). At 0 the value is F.linear(x, w) exactly (0 * d = 0 and x + 0 = x); at 1
    it is the FAQ form, equal to ``fake_quant_linear`` up to float rounding, so callers at full strength use that.
    """
    x_hat = x if activations == 0 else x + activations * (act_dequant(x) - x).detach()
    w_hat = w if weights == 0 else w + weights * (weight_dequant(w) - w).detach()
    return F.linear(x_hat, w_hat.to(x_hat.dtype))


# ---- deliberately broken variants, for ablations only ----------------------------------------------------------


def weight_fake_quant_clamp_ste(w: torch.Tensor) -> torch.Tensor:
    """Ablation `clamp-ste`: STE on round() only, then a plain clamp, as many home-made BitLinears do.

    Entries whose rounded value lies outside [-1, 1] (|w| >= 1.5 beta) get zero gradient from clamp. Entries
    that round exactly onto +-1 sit on the clamp boundary: torch 2.13 still passes gradient there (see
    tests/test_quant.py), other versions may not. beta is detached so that only the clamp differs from the
    reference (a gradient through mean|w| would leak a little to every weight and blur the ablation).
    """
    beta = w.detach().to(_scale_dtype(w)).abs().mean().clamp(min=EPS).to(w.dtype)
    u = w / beta
    u = u + (u.round() - u).detach()  # STE through round only
    return u.clamp(-1, 1) * beta


def weight_fake_quant_no_ste(w: torch.Tensor) -> torch.Tensor:
    """Ablation `no-ste`: the dequantized weight with no gradient path at all to the latent weight."""
    return weight_dequant(w).detach()


def weight_codes_ste(w: torch.Tensor) -> torch.Tensor:
    """Ablation `no-dequant`: the ternary codes (as floats, beta never multiplied back), STE through w / beta."""
    codes, beta = weight_quant(w)
    u = w / beta.to(w.dtype)
    return u + (codes.to(w.dtype) - u).detach()


def act_codes_ste(x: torch.Tensor) -> torch.Tensor:
    """Ablation `no-dequant`: the int8 activation codes (as floats, gamma never multiplied back), with STE."""
    q, gamma = act_quant(x)
    u = x / gamma.to(x.dtype)
    return u + (q.to(x.dtype) - u).detach()


# ---- the inverse of weight_quant, for importing packed weights ---------------------------------------------------


def _f32(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).reshape(())


def _f32_step(x: torch.Tensor, k: int) -> torch.Tensor:
    """The float32 value k representable steps above (k > 0) or below (k < 0) the positive float32 x."""
    return (x.reshape(1).view(torch.int32) + k).view(torch.float32).reshape(())


def weight_latent(codes: torch.Tensor, beta) -> tuple[torch.Tensor, bool]:
    """A float32 latent W with ``weight_quant(W) == (codes, beta')``, and whether ``beta' == beta`` exactly.

    Packed checkpoints hold codes and beta, not latents, and ``codes * beta`` is the wrong latent: its absmean
    is beta * p (p the share of nonzero codes). torch computes the mean as fl(fl(sum) / n), so W must have a
    float32 sum S with fl(S / n) == beta. The nonzero magnitudes are made whole multiples of ulp(S) (k or k + 1
    of them, adding up to S), so every partial sum is exact in float32 whatever the summation order, and
    the mean is beta exactly. That works when such an S exists and the tensor has at most ~2**23 nonzeros.
    Otherwise a search finds the nearest mean it can reach: beta itself for most larger tensors, else a beta'
    a float32 step or so away, and the flag is False (with n not a power of two, about one float32 beta in
    five is the mean of no float32 tensor at all). All-zero codes quantize the same whatever beta is: W is zero.
    """
    codes = codes.to(torch.int8)
    b = _f32(beta)
    if not b >= _f32(EPS):  # the float32 floor weight_quant clamps to
        raise ValueError(f"beta {float(b)} is below the absmean floor {EPS}: weight_quant never produces it")
    mag = codes.abs().to(torch.float32)  # (N, K) 0/1
    n, nnz = codes.numel(), int(codes.count_nonzero())
    if nnz == 0:
        return torch.zeros(codes.shape, dtype=torch.float32), True
    s0 = _f32(float(b) * n)
    for k in (0, -1, 1, -2, 2, -3, 3):
        s = _f32_step(s0, k)
        if not torch.equal(s / n, b):
            continue
        q = _f32_step(s, 1) - s  # ulp(S): S / q < 2**24, so every multiple of q up to S is a float32
        whole, extra = divmod(int(s / q), nnz)
        if whole < 1:
            break
        rank = torch.cumsum(mag.flatten(), 0).view(mag.shape)  # 1..nnz at the nonzero positions
        w = mag * torch.where(rank <= extra, whole + 1, whole).to(torch.float32) * q * codes
        if _quantizes_to(w, codes, b):
            return w, True
    w = _nearest_latent(codes, mag, nnz, b)
    return w, torch.equal(weight_quant(w)[1], b)


def _quantizes_to(w, codes, beta) -> bool:
    c, b = weight_quant(w)
    return torch.equal(c, codes) and torch.equal(b, beta)


def _nearest_latent(codes, mag, nnz, beta) -> torch.Tensor:
    """codes * t with t (the first m nonzero magnitudes one float32 step higher) putting the mean nearest beta."""

    def mean_of(w):  # the scale weight_quant computes (w >= 0 here, so |w| is w itself)
        return w.mean().clamp(min=EPS)

    buf = torch.empty_like(mag)  # reused: large tensors make fresh allocations the slow part

    def scaled(t):
        return torch.mul(mag, t, out=buf)

    t = _f32(float(beta) * codes.numel() / nnz)
    lo, hi = _f32_step(t, -64), _f32_step(t, 64)
    while mean_of(scaled(lo)) > beta:
        lo = _f32_step(lo, -(1 << 16))
    while mean_of(scaled(hi)) <= beta:
        hi = _f32_step(hi, 1 << 16)
    bl, bh = int(lo.reshape(1).view(torch.int32)), int(hi.reshape(1).view(torch.int32))
    while bh - bl > 1:  # the largest t with mean(mag * t) <= beta: bisection on the bit pattern (monotone)
        mid = (bl + bh) // 2
        bl, bh = (mid, bh) if mean_of(scaled(torch.tensor([mid]).int().view(torch.float32))) <= beta else (bl, mid)
    t_lo = torch.tensor([bl]).int().view(torch.float32).reshape(())
    low, high = mag * t_lo, mag * _f32_step(t_lo, 1)  # (N, K) each
    ends = mag.flatten().nonzero().squeeze(1) + 1  # (nnz,) flat index just past each nonzero

    def mixed(m):  # the first m nonzero magnitudes at t_hi, the rest at t_lo
        buf.copy_(low)
        if m:
            buf.view(-1)[: ends[m - 1]] = high.view(-1)[: ends[m - 1]]
        return buf

    a, z = 0, nnz  # mean(mixed(a)) <= beta < mean(mixed(z)); the mean is monotone in m
    while z - a > 1:
        m = (a + z) // 2
        a, z = (m, z) if mean_of(mixed(m)) <= beta else (a, m)
    best = min((a, z), key=lambda m: abs(float(mean_of(mixed(m))) - float(beta)))
    w = mixed(best).mul_(codes)
    if not torch.equal(weight_quant(w)[0], codes):  # cannot happen: |W| >= mean|W| where codes are nonzero
        raise AssertionError("weight_latent: the codes did not survive re-quantization")
    return w
