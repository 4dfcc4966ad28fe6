"""Probe inputs, probe weights and the reference of the BitLinear conformance checker (checker.py).

The probes are built so that one property of a layer shows at a time:

- exact tokens: zero-mean vectors of integers (or half-integers) holding a +-peak pair, whose mean square is a
  power of 4 (>= 256). RMSNorm divides them by a power of two exactly: an eps <= 1e-5 vanishes next to 256 in
  float32, and a mean subtraction (LayerNorm) subtracts an exact 0. With peak 127 the int8 scale 127/absmax is
  then exactly rms, so x_n * 127 / absmax gives back the integers themselves: the int8 grid, rounding and .5
  ties are visible exactly, and every per-token/per-tensor/rounding variant agrees on an integer token.
- sign tokens: zero-mean +-1 vectors. Every activation quantizer seen in the wild agrees on them up to a factor
  (RMSNorm, LayerNorm and sign() all give +-1, and +-1 is exactly +-127 on the int8 grid), so the weight and
  latent-gradient probes run on them: a deviation of the activation side cannot leak into a weight question.
- dense +-a weights: mean, median and max of |W| all equal a, every code is +-1, and every row and group has
  the same statistic, so every weight-quantizer variant (binary ones included) turns them into the same +-a.
- block weights: each block of 8 consecutive weights in a row holds the same magnitudes, so a row's or a
  group's statistic equals the tensor's; the magnitudes make the candidate statistics differ by known ratios,
  or put |W|/beta on exact .5 ties, exact +-1, or in the clamp region.

`simulate` is the reference forward in float64 (norm in float32, as the layers compute it) with knobs for the
known deviations: a check predicts each candidate on its probe and reports the one the layer matches.
layer.py builds and runs the layer under test. Not a test suite.
"""

import math

import torch
import torch.nn.functional as F

EPS = 1e-5  # the reference's weight and activation scale floor (quant.EPS)


# ---- rounding rules and the reference with knobs ----------------------------------------------------------------

ROUNDING = {
    "half-to-even": torch.round,  # torch.round, the reference
    "half-up": lambda v: torch.floor(v + 0.5),  # floor(v + 0.5), Falcon-Edge's Triton kernels
    "half-away": lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5),  # libdevice.round, C round()
    "half-down": lambda v: torch.ceil(v - 0.5),
    "half-to-zero": lambda v: torch.sign(v) * torch.ceil(v.abs() - 0.5),
    "none": lambda v: v,
    "floor": torch.floor,
    "trunc": torch.trunc,
}


def rms_norm(x, eps):
    """The reference RMSNorm (gain 1), computed in float32 as model.RMSNorm does; eps None = no norm."""
    if eps is None:
        return x
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def layer_norm(x, eps):
    xf = x.float()
    return F.layer_norm(xf, xf.shape[-1:], eps=eps).to(x.dtype)


def act_quant_sim(x, levels=127, rounding="half-to-even", per_token=True):
    """Dequantized activations with the STE, in float64: scale levels/absmax, clamp [-levels-1, levels].

    levels "sign": 1-bit activations sign(x) (BitNet b1-style layers that binarize their input)."""
    x = x.double()
    if levels == "sign":
        return x + (torch.sign(x) - x).detach()
    amax = x.abs().amax(-1, keepdim=True) if per_token else x.abs().amax()
    s = levels / amax.clamp(min=EPS)
    lo, hi = (-128, 127) if levels == 128 else (-levels - 1, levels)  # 128/absmax: still clamped to int8
    q = ROUNDING[rounding](x * s).clamp(lo, hi) / s
    return x + (q - x).detach()


def weight_quant_sim(w, stat="mean", rounding="half-to-even", codes="ternary"):
    """Dequantized weights with the STE, in float64; stat sets beta, codes is ternary, binary or none."""
    w = w.double()
    a = w.detach().abs()
    beta = {"mean": a.mean(), "median": a.flatten().median(), "max": a.max(), "rms": a.pow(2).mean().sqrt()}[
        stat
    ].clamp(min=EPS)
    if codes == "binary":
        q = torch.sign(w - w.mean()) * beta
    elif codes == "none":
        q = w
    else:
        q = ROUNDING[rounding](w / beta).clamp(-1, 1) * beta
    return w + (q - w).detach()


def simulate(x, w, norm_eps=1e-5, norm="rms", **knobs):
    """The reference BitLinear, y = F.linear(Q(RMSNorm(x)), T(W)) in float64; knobs select known deviations.

    norm_eps None: no norm (the layer's norm lives outside it). Knobs: levels, act_rounding, per_token (act),
    stat, weight_rounding, codes (weights).
    """
    xn = (layer_norm if norm == "layer" else rms_norm)(x, norm_eps) if norm_eps is not None else x
    xq = act_quant_sim(
        xn, knobs.get("levels", 127), knobs.get("act_rounding", "half-to-even"), knobs.get("per_token", True)
    )
    wq = weight_quant_sim(
        w, knobs.get("stat", "mean"), knobs.get("weight_rounding", "half-to-even"), knobs.get("codes", "ternary")
    )
    return F.linear(xq, wq)


# ---- fits ---------------------------------------------------------------------------------------------------------


def ratio(y, p) -> float:
    """Least-squares factor a in y ~ a * p (0 when p is all zero)."""
    y, p = y.double().flatten(), p.double().flatten()
    pp = float((p * p).sum())
    return float((y * p).sum()) / pp if pp > 0 else 0.0


def misfit(y, p) -> float:
    """How far y is from any multiple of p: ||y - a p|| / ||y|| with the best a (1.0 when y is zero)."""
    y, p = y.double().flatten(), p.double().flatten()
    ny = float(y.norm())
    if ny == 0 or not math.isfinite(ny):
        return 1.0 if ny == 0 else math.inf
    return float((y - ratio(y, p) * p).norm()) / ny


def best_candidate(y, predictions: dict):
    """(name, misfit) of the prediction y is closest to, up to a factor, and every misfit."""
    fits = {name: misfit(y, p) for name, p in predictions.items()}
    name = min(fits, key=fits.get)
    return name, fits[name], fits


# ---- probe inputs ------------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _squares_summing_to(total: int, count: int, cap: int, avoid=()):
    """count integers in [0, cap], none in avoid, whose squares sum to total; greedy, then a four-square search."""
    out, left = [], total
    for i in range(count - 4):
        u = min(cap, math.isqrt(left // (count - i)))
        while u in avoid:
            u -= 1
        out.append(u)
        left -= u * u
    ok = [u for u in range(min(cap, math.isqrt(left)), -1, -1) if u not in avoid]
    for a in ok:
        for b in (u for u in ok if u <= a and a * a + u * u <= left):
            r = left - a * a - b * b
            for c in (u for u in ok if u <= b and u * u <= r):
                d = math.isqrt(r - c * c)
                if d * d == r - c * c and d <= c and d not in avoid:
                    return out + [a, b, c, d]
    raise ValueError(f"no filler for sum of squares {total}")  # not reached for the probes below


def exact_token(k: int, fixed=(), peak=127.0, min_ms=256, avoid=(), seed=0) -> torch.Tensor:
    """A float32 vector of length k (even): +-peak, +-each fixed magnitude, +-integer fillers below peak.

    Zero mean, mean square an exact power of 4 (>= min_ms), so RMSNorm divides it exactly by a power of two.
    The fixed magnitudes' squares must sum to an integer (e.g. half-integers in fours).
    """
    mags = [float(peak)] + [float(v) for v in fixed]
    free = k // 2 - len(mags)
    sumsq = sum(v * v for v in mags)
    if free < 4 or sumsq != int(sumsq):
        raise ValueError(f"cannot build an exact token of length {k} from {len(mags)} fixed values")
    cap = math.ceil(peak) - 1
    ms = min_ms
    while (ms * k) // 2 - sumsq < 0 or (ms * k) // 2 - sumsq > 0.8 * free * cap * cap:
        ms *= 4
        if ms > 127**2:
            raise ValueError(f"cannot build an exact token of length {k}")
    fill = _squares_summing_to(int((ms * k) // 2 - sumsq), free, cap, set(avoid))
    half = torch.tensor(mags + [float(u) for u in fill])
    x = torch.cat([half, -half])
    return x[torch.randperm(k, generator=_gen(seed))]


def grid_token(k, seed=0):
    """Integers with absmax 127 and a ramp of values in [64, 126] (where a 128-level grid rounds them up)."""
    n = max(4, k // 8)
    ramp = [64 + (62 * i) // (n - 1) for i in range(n)]
    return exact_token(k, ramp, seed=seed)


def frac_token(k, seed=0):
    """Quarter-fractions (k + 0.25, k + 0.75, no ties) that rounding moves; absmax 127, exact norm."""
    return exact_token(k, [e + f for e in (0, 2, 4, 6) for f in (0.25, 0.75)] * 2, seed=seed)


TIE_VALUES = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 64.5, 90.5, 100.5, 120.5)


def tie_token(k, seed=0):
    """Exact .5 ties after the int8 scale (+-0.5 ... +-120.5), absmax 127, exact norm."""
    return exact_token(k, TIE_VALUES, seed=seed)


def unit_token(k, seed=0):
    """Values in {0, +-2}, a quarter nonzero: mean square exactly 1 (RMSNorm is the identity), codes +-127 or 0."""
    x = torch.zeros(k)
    x[: k // 8], x[k // 8 : k // 4] = 2.0, -2.0
    return x[torch.randperm(k, generator=_gen(seed))]


def mean_token(k, seed=0):
    """Values +-1, three quarters +1: mean square 1, mean 0.5 (a mean-subtracting norm changes it)."""
    x = torch.ones(k)
    x[: k // 4] = -1.0
    return x[torch.randperm(k, generator=_gen(seed))]


def spike_token(k, seed=0):
    """A +-127 pair over +-1: absmax / rms about sqrt(k / 2), the token that sets a shared scale."""
    x = torch.where(torch.rand(k, generator=_gen(seed)) < 0.5, -1.0, 1.0)
    x[0], x[1] = 127.0, -127.0
    return x[torch.randperm(k, generator=_gen(seed + 1))]


def sign_token(k, seed=0):
    """+-1, half each: zero mean, mean square 1, absmax 1; every activation quantizer agrees on it."""
    x = torch.ones(k)
    x[: k // 2] = -1.0
    return x[torch.randperm(k, generator=_gen(seed))]


def normal_token(k, seed=0):
    return torch.randn(k, generator=_gen(seed))


def permuted(x, count, seed=0):
    """count permutations of x, alternately negated: same rms, absmax and (zero) mean, so any scale granularity
    and any mean subtraction agree."""
    g = _gen(seed)
    return torch.stack([(-1) ** i * x[torch.randperm(x.numel(), generator=g)] for i in range(count)])


# ---- probe weights -----------------------------------------------------------------------------------------------


def signs(n, k, seed=0):
    return torch.where(torch.rand(n, k, generator=_gen(seed)) < 0.5, -1.0, 1.0)


def dense(n, k, a=1.0, seed=0):
    """Dense +-a: every weight-quantizer variant gives the same +-a."""
    return a * signs(n, k, seed)


def block_weights(n, k, block, seed=0):
    """Every 8 consecutive weights of a row hold the magnitudes in `block` (permuted), with random signs."""
    g = _gen(seed + 7)
    mags = torch.tensor(block, dtype=torch.float32)
    idx = torch.stack([torch.randperm(8, generator=g) for _ in range(n * (k // 8))])
    return mags[idx].reshape(n, k) * signs(n, k, seed)


# magnitudes per block of 8 (each block's mean is the tensor's mean)
STAT_BLOCK = (1.0, 1.0, 1.0, 1.0, 1.0, 1.6, 1.6, 1.9)  # mean 1.2625, median 1.0, max 1.9, rms 1.31; all codes +-1
CODES_BLOCK = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3, 0.3)  # mean 0.825: 0.3 -> code 0 (ternary), +-1 (binary)
TIES_BLOCK = (0.5, 0.5, 1.0, 1.0, 1.25, 1.25, 1.25, 1.25)  # mean exactly 1: +-0.5 are exact ties
GRAD_BLOCK = (0.25, 0.75, 0.75, 1.0, 1.0, 1.25, 1.25, 1.75)  # mean exactly 1: code 0, +-1, at the bound, clamped
