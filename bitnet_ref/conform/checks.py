"""The checks of the BitLinear conformance checker: each runs a user's layer on probes that isolate one property.

Every check compares the layer with itself or with the reference so that other deviations cancel: a ratio of
two runs that differ only in the property (weight scale statistic, bias, input scale, dtype, batching), or a
fit up to a free factor (so an output scale error does not leak into a question about codes or rounding).
Where a question has no meaning after an earlier finding (tie rounding of codes that are not ternary, the eps
of a norm that is absent), the check says "not-checkable" and why, instead of failing for the other reason.
The probes are in harness.py; checker.py runs the checks in CHECKS order and reports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bitnet_ref.conform.harness import (
    ProbeError,
    dense,
    exact_token,
    grid_token,
    mean_token,
    misfit,
    normal_token,
    permuted,
    ratio,
    rms_norm,
    signs,
    simulate,
    unit_token,
)

EXACT = 5e-4  # misfit where the reference is exact up to float rounding (integer tokens, +-a weights)
LOOSE = 2e-2  # misfit for weight questions, where an act deviation may leak in at <= 1%
SCALE = 1e-2  # relative tolerance on output ratios that should be exactly 1 (or 2, 4)
SPREAD = 2e-2  # per-row ratios of a per-tensor scale agree to this
BATCH = 5e-3  # a token's output may change this much (relative) when batched with others
SHAPE = 1e-3  # ... or when the same tokens come as 2-D, 3-D or one at a time
BF16_BIAS = 5e-4  # mean (bf16 output / f32 output) - 1: a bf16 scale is 0.2-0.4% off
BF16_NOISE = 2e-2  # relative rms error of the bf16 output against the f32 one
GRAD_COS = 0.99  # cosine of the input gradient with the reference's
DEAD = 0.5  # a weight class with under half the gradient of the best class is "without gradient"

# what each deviation does in training, shown with a failing check
EFFECTS = {
    "forward": "the layer cannot be trained or checked as it is",
    "output-scale": "every BitLinear output is off by beta or 127/absmax: activations and gradients are "
    "mis-scaled through the residual stream (one report: loss 7.5 instead of 2.5)",
    "output-scale-width": "the output scale changes with the layer width, so wide layers (FFN down_proj) are "
    "mis-scaled against narrow ones; output variance far from nn.Linear's",
    "norm": "without an RMSNorm right before the int8 quantizer its input scale drifts with depth (b1 paper; "
    "HF blog: PPL 6.3 vs 5.9); a mean-subtracting norm computes another function than the checkpoint's",
    "norm-eps": "tokens with a small mean square (padding, early residual streams) are scaled differently from "
    "the reference; a checkpoint moved between implementations shifts its outputs",
    "act-scale-per-token": "a token's int8 codes depend on the other tokens in the batch: one outlier token "
    "wipes out the resolution of the rest, and batched training differs from decoding",
    "act-range": "activations are quantized on another grid than int8 127/absmax; the int8 kernels and "
    "exported checkpoints compute something else than training did",
    "act-rounding": "activation codes differ from the int8 reference (no rounding trains an unquantized "
    "model; another tie rule disagrees with torch.round-based kernels at every .5)",
    "weight-scale": "beta is not mean|W|: a different share of weights rounds to 0 (FAQ: raising it hurts), "
    "and the packed checkpoint's scale disagrees with training",
    "weight-scale-per-tensor": "one beta per row or group where the recipe has one per tensor: not the b1.58 "
    "model, and a per-tensor packed format cannot store it",
    "weight-codes": "weights are not ternary {-1, 0, +1}: binary or unquantized weights train another model "
    "(FAQ: {0,1} was highly unstable) and cannot be packed as 2-bit ternary",
    "weight-rounding-ties": "latent weights at exactly beta/2 round differently from torch.round, so packed "
    "codes disagree with training on those weights",
    "bias": "the bias is lost (no gradient, a trained bias silently ignored) or mis-scaled by the weight scale",
    "degenerate-input": "an all-zero or tiny row/token gives NaN/inf or a nonzero output: one padded token or "
    "dead weight row poisons the loss",
    "grad-latent-weights": "latent weights without gradient never move: with no STE nothing learns (loss stalls "
    "at the level the FP path reaches); with a clamp STE saturated weights freeze",
    "latent-weights-kept": "the latent weights lose their full precision: updates smaller than a quantization "
    "step vanish, so learning stalls (eladhoffer/quantized.pytorch#12: 15-20% accuracy)",
    "grad-input": "the gradient to the layer's input is not the STE through the norm: earlier layers get a "
    "wrong or zero signal",
    "bf16-input": "a scale held in bf16 is up to 0.4% off (a bf16 accumulator loses bits too): the layer's output "
    "under bf16 differs from the float32-scale reference and packed kernel it is exported to "
    "(parameter-golf: fp32 vs fp16 scales cost 0.05 BPB until matched)",
    "input-shapes": "a token's output depends on the batch shape: training (T > 1) and decoding (T = 1) "
    "disagree (train/decode parity)",
}


@dataclass
class Check:
    """One check's outcome: status is "pass", "fail" or "not-checkable"."""

    name: str
    status: str
    summary: str
    numbers: dict = field(default_factory=dict)
    effect: str = ""  # what the deviation does in training (failing checks only)
    cause: str | None = None  # the doctor's cause name (causes.CAUSES), where one fits

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "numbers": _plain(self.numbers),
            "effect": self.effect,
            "cause": self.cause,
        }


def _plain(v):
    """Numbers as JSON allows them: NaN and inf become None."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def verdict(name, ok, summary, numbers=None, cause=None) -> Check:
    return Check(
        name, "pass" if ok else "fail", summary, numbers or {}, "" if ok else EFFECTS[name], None if ok else cause
    )


def skip(name, reason) -> Check:
    return Check(name, "not-checkable", reason)


class Probing:
    """The layer under test, the reference's settings, and the facts earlier checks established."""

    def __init__(self, lut, norm_eps, wide_in):
        self.lut, self.norm_eps, self.wide_in = lut, norm_eps, wide_in  # norm_eps None: the norm is outside
        self.k, self.n = lut.k, lut.n
        self.facts = {}

    def run(self, w, x, **kw):
        return self.lut.run(w, x, **kw)

    def ref(self, x, w, **knobs):
        return simulate(x, w, self.norm_eps, **knobs)

    @property
    def inside(self):
        return self.norm_eps is not None


def near(v, target, tol=SCALE):
    return abs(v - target) <= tol * abs(target)


def _finite(t):
    return bool(torch.isfinite(t).all())


def _fmt(v: float) -> str:
    return f"{v:.4f}" if 0.01 <= abs(v) < 1000 else f"{v:.3g}"


# ---- forward and output scale -------------------------------------------------------------------------------------


def check_forward(p: Probing) -> Check:
    w, x, note = dense(p.n, p.k), unit_token(p.k)[None], ""
    try:
        y = p.run(w, x)
    except ProbeError as e:
        if e.needs_gpu:
            raise
        try:  # some layers take only (B, T, in) (e.g. a Triton activation kernel): probe them that way
            y = p.run(w, x, layout="3d")
        except ProbeError:
            raise e from None
        p.lut.as_3d, note = True, f"; 2-D input fails ({e}), so the probes run as (1, T, in)"
    if not _finite(y):
        return verdict("forward", False, "NaN/inf in the output on an ordinary input (values 0, +-2; weights +-1)")
    if not y.any():
        return verdict("forward", False, "the output is all zero on an ordinary input (values 0, +-2; weights +-1)")
    return verdict("forward", True, f"runs: input (1, {p.k}) -> output (1, {p.n}), finite{note}")


def check_output_scale(p: Probing) -> Check:
    """Single unit-RMS token (norm or not gives the same), dense +-3 weights: every quantizer agrees but scale."""
    x, w, beta = unit_token(p.k)[None], dense(p.n, p.k, 3.0), 3.0
    y1, y2, ref = p.run(w, x), p.run(2 * w, x), p.ref(x, w)
    rho, wf = ratio(y1, ref), ratio(y2, y1)
    gamma = float(rms_norm(x, p.norm_eps).abs().max()) / 127
    nums = {
        "output_over_reference": round(rho, 6),
        "output_when_W_doubled": round(wf, 4),
        "beta": beta,
        "gamma": round(gamma, 6),
    }
    p.facts["rho"] = rho
    why, rho_w = [], rho
    if near(wf, 2, 0.02):
        p.facts["weight_scale_applied"] = True
    elif near(wf, 1, 0.02):
        why.append("the weight scale is not multiplied back (doubling W leaves the output unchanged)")
        rho_w = rho * beta
    elif near(wf, 0.5, 0.02):
        why.append("the weight scale is divided, not multiplied (the inverse 1/beta convention)")
        rho_w = rho * beta**2
    else:
        why.append(f"doubling W scales the output by {wf:.3g}, not 2")
    act_missing = near(rho_w * gamma, 1, 0.02)
    p.facts["act_scale_applied"] = not act_missing
    if act_missing:
        why.append(f"the activation scale is not undone (output in int8 units, x127/absmax = x{1 / gamma:.1f})")
    elif near(rho_w * p.k, 1, 0.02):
        why.append("the output is 1/in_features of the reference (a norm scaled by dim**-0.5 on F.normalize)")
    elif not near(rho_w, 1) and why == []:
        why.append("matching no known cause")
    text = f"output / reference = {_fmt(rho)}"
    if near(rho, 1) and not why:
        return verdict("output-scale", True, text + "; doubling W doubles the output", nums)
    cause = "missing_dequant" if act_missing or not near(wf, 2, 0.02) else None
    return verdict("output-scale", False, text + ": " + "; ".join(why), nums, cause)


def check_output_scale_width(p: Probing) -> Check:
    k = p.wide_in
    x = unit_token(k)[None]
    w = 3.0 * signs(p.n, k, seed=3)
    w[: p.n // 4] = 3.0 * torch.where(x[0] < 0, -1.0, 1.0)  # rows that add up every code: a large accumulator
    try:
        y = p.run(w, x)
    except ProbeError as e:
        return skip("output-scale-width", f"the layer does not run at in_features={k}: {e}")
    ref = p.ref(x, w)
    rho_w, fit, rho = ratio(y, ref), misfit(y, ref), p.facts.get("rho", 1.0)
    drift = rho_w / rho if rho else math.inf
    expo = math.log(drift) / math.log(k / p.k) if drift > 0 and math.isfinite(drift) else math.nan
    nums = {
        "in_features": k,
        "output_over_reference": round(rho_w, 6),
        f"same_at_in_{p.k}": round(rho, 6),
        "scale_exponent_in_width": round(expo, 3),
        "misfit": round(fit, 6),
    }
    if not _finite(y):
        return verdict(
            "output-scale-width", False, f"NaN/inf in the output at in_features={k} (accumulator overflow?)", nums
        )
    if near(drift, 1) and fit < SCALE:
        return verdict(
            "output-scale-width", True, f"output / reference = {_fmt(rho_w)} at in_features={k}, as at {p.k}", nums
        )
    if not near(drift, 1):
        return verdict(
            "output-scale-width",
            False,
            f"output / reference = {_fmt(rho_w)} at in_features={k} but "
            f"{_fmt(rho)} at {p.k}: the scale goes as in_features**{expo:.2f}",
            nums,
        )
    return verdict(
        "output-scale-width",
        False,
        f"at in_features={k} the output differs from the reference by "
        f"{fit:.2%} beyond a factor (accumulator precision?)",
        nums,
    )


# ---- the norm ---------------------------------------------------------------------------------------------------


def check_norm(p: Probing) -> Check:
    x, w = unit_token(p.k)[None], dense(p.n, p.k)
    r = ratio(p.run(w, 4 * x), p.run(w, x))
    nums = {"output_ratio_for_4x_input": round(r, 4)}
    if not p.inside:
        if not p.facts.get("act_scale_applied", True):
            return skip(
                "norm",
                "the activation scale is not undone (output-scale), so the output does not "
                "follow the input's scale with or without a norm",
            )
        ok = near(r, 4)
        p.facts["norm_kind"] = "none" if ok else "other"
        if ok:
            return verdict(
                "norm", True, "4x the input gives 4x the output: no norm inside, as --norm-outside says", nums
            )
        return verdict(
            "norm",
            False,
            f"4x the input gives {r:.3g}x the output: the layer normalises its input, "
            f"but --norm-outside says its norm lives outside (check it without that option)",
            nums,
        )
    p.facts["norm_kind"] = "other"
    if near(r, 4, 0.04):
        p.facts["norm_kind"] = "none"
        return verdict(
            "norm",
            False,
            f"no norm inside the layer: 4x the input gives {r:.3g}x the output "
            f"(reference: RMSNorm before the quantizer, 1x)",
            nums,
            "no_subln",
        )
    if not near(r, 1):
        return verdict("norm", False, f"4x the input gives {r:.3g}x the output (reference: 1x, RMSNorm inside)", nums)
    xm = mean_token(p.k)[None]
    ym = p.run(w, xm)
    fit_rms, fit_ln = misfit(ym, p.ref(xm, w)), misfit(ym, simulate(xm, w, p.norm_eps, norm="layer"))
    nums.update(misfit_rmsnorm=round(fit_rms, 5), misfit_layernorm=round(fit_ln, 5))
    if fit_rms > 0.05:
        p.facts["norm_kind"] = "layer" if fit_ln < 0.05 else "other"
        what = (
            "the norm subtracts the mean (LayerNorm); the reference is RMSNorm"
            if fit_ln < 0.05
            else f"on a token with mean 0.5 the output is {fit_rms:.1%} off the RMSNorm reference"
        )
        return verdict("norm", False, what, nums)
    p.facts["norm_kind"] = "rms"
    return verdict(
        "norm",
        True,
        "scale-invariant (4x the input gives 1x the output) and no mean subtraction: an RMSNorm inside",
        nums,
    )


def check_norm_eps(p: Probing) -> Check:
    if not p.inside:
        return skip("norm-eps", "the norm lives outside the layer (--norm-outside); its eps is the model's")
    if p.facts.get("norm_kind") != "rms":
        return skip("norm-eps", "no RMSNorm found inside the layer (see norm)")
    if not p.facts.get("act_scale_applied", True):
        return skip(
            "norm-eps",
            "the activation scale is not undone (see output-scale), so the norm's output "
            "scale does not reach the output",
        )
    eps, x, w = p.norm_eps, unit_token(p.k)[None], dense(p.n, p.k)
    xs = x * math.sqrt(eps)  # mean square = eps: the reference scales it by sqrt(1/2) relative to x
    r = ratio(p.run(w, xs), p.run(w, x))
    eps_hat = eps * (1 / r**2 - 1) if 0 < r <= 1 else 0.0
    p.facts["measured_norm_eps"] = eps_hat
    nums = {
        "token_mean_square": eps,
        "output_ratio": round(r, 5),
        "reference_ratio": round(math.sqrt(0.5), 5),
        "measured_eps": float(f"{eps_hat:.3g}"),
        "reference_eps": eps,
    }
    if eps / 1.5 <= eps_hat <= eps * 1.5:
        return verdict("norm-eps", True, f"norm eps measured {eps_hat:.2g} (reference {eps:g})", nums)
    return verdict(
        "norm-eps",
        False,
        f"norm eps measured {eps_hat:.2g}, reference {eps:g}: a token of mean "
        f"square {eps:g} comes out x{r:.3f} of a unit one, the reference x{math.sqrt(0.5):.3f}",
        nums,
    )


# ---- bias, degenerate input ---------------------------------------------------------------------------------------


def check_bias(p: Probing) -> Check:
    if not p.lut.has_bias():
        return verdict("bias", True, "no bias parameter, as in the reference")
    x, w, beta = unit_token(p.k)[None], dense(p.n, p.k, 3.0), 3.0
    b = 0.25 * ((torch.arange(p.n) % 7) - 3.0) + 0.125
    d = (p.run(w, x, bias=b) - p.run(w, x))[0]
    r, fit = ratio(d, b), misfit(d, b)
    nums = {"output_change_over_bias": round(r, 5), "misfit": round(fit, 5), "beta": beta}
    if near(r, 1) and fit <= SCALE:
        return verdict("bias", True, "the bias is added after the matmul, unscaled (the official model has none)", nums)
    what = (
        "the bias parameter is ignored"
        if abs(r) < 1e-3 and not d.any()
        else f"the bias is multiplied by the weight scale (x{r:.3g}, beta = {beta:g})"
        if near(r, beta)
        else f"the bias is divided by the weight scale (x{r:.3g})"
        if near(r, 1 / beta)
        else f"the output moves by {r:.3g} x bias (misfit {fit:.2%})"
    )
    return verdict("bias", False, f"{what}; reference: y + bias", nums)


def check_degenerate(p: Probing) -> Check:
    g = grid_token(p.k)
    x = torch.stack([g, torch.zeros(p.k), torch.full((p.k,), 3.0), 1e-30 * g])
    names = ["ordinary", "all-zero", "constant", "tiny (1e-30)"]
    w = dense(p.n, p.k)
    gy = torch.ones(4, p.n)
    y, gx, gw = p.run(w, x, grad=gy)
    ref = p.ref(x, w)
    scale = float(y[0].abs().max()) if _finite(y[0]) else 1.0
    problems = []
    for i, name in enumerate(names):
        if not _finite(y[i]):
            problems.append(f"NaN/inf output on the {name} token")
        elif not ref[i].any() and float(y[i].abs().max()) > 1e-6 * scale:
            problems.append(
                f"nonzero output ({float(y[i].abs().max()):.3g}) on the {name} token, where the reference gives 0"
            )
    for what, t in (("input", gx), ("weight", gw)):
        if t is not None and not _finite(t):
            problems.append(f"NaN/inf {what} gradient with zero/constant/tiny tokens in the batch")
    yz = p.run(torch.zeros(p.n, p.k), x[:1])
    if not _finite(yz) or yz.abs().max() > 0:
        problems.append(
            f"all-zero weights give {'NaN/inf' if not _finite(yz) else 'a nonzero output'} "
            f"(reference: 0; beta floored at 1e-5)"
        )
    wr = w.clone()
    wr[0] = 0
    yr = p.run(wr, x[:1])
    if not _finite(yr) or yr[0, 0] != 0:
        problems.append(f"an all-zero weight row gives {'NaN/inf' if not _finite(yr) else 'a nonzero output'}")
    if problems:
        return verdict("degenerate-input", False, "; ".join(problems), {"problems": len(problems)})
    return verdict(
        "degenerate-input",
        True,
        "zero, constant and tiny tokens, zero weights and a zero weight row: finite, and 0 where the reference gives 0",
    )


# ---- dtypes and shapes ----------------------------------------------------------------------------------------------


def _bf16_off(v: float) -> float:
    """Relative error of v rounded to bf16."""
    return float(torch.tensor(v).to(torch.bfloat16).float()) / v - 1


def check_bf16(p: Probing) -> Check:
    """The same exact bf16-representable tokens in bf16 and in float32: only the scales' precision can differ.

    The absmax 96 over an exact power-of-two rms puts gamma = absmax/127 0.25% off a bf16 value and 127/absmax
    0.2% off one; beta = 0.2509 is 0.36% above bf16's 0.25. A scale held in bf16 shows as a bias in the mean
    (bf16 output / float32 output rounded to bf16), which is 0 for float32 scales.
    """
    x = permuted(exact_token(p.k, peak=96, avoid=(48,)), 16)
    beta = 0.2509
    w = dense(p.n, p.k, beta)
    y32, note = p.run(w, x), ""
    try:
        y16 = p.run(w, x, dtype=torch.bfloat16)
    except ProbeError as e:
        try:
            y16, note = p.run(w, x, dtype=torch.bfloat16, autocast=True), " (ran under bf16 autocast)"
        except ProbeError:
            return verdict("bf16-input", False, f"bf16 input fails, with and without autocast: {e}")
    if not _finite(y16):
        return verdict("bf16-input", False, "NaN/inf in the output for bf16 input" + note)
    ref16 = y32.to(torch.bfloat16).double()  # what float32 scales give, rounded once at the end
    big = ref16.abs() > 0.1 * ref16.abs().max()
    bias = float((y16[big] / ref16[big]).mean()) - 1
    noise = float((y16 - ref16).norm() / ref16.norm().clamp_min(1e-30))
    w_off = _bf16_off(beta)
    nums = {
        "mean_bf16_over_f32_minus_1": float(f"{bias:.3g}"),
        "relative_error_vs_f32_rounded": round(noise, 5),
        "expected_if_beta_in_bf16": float(f"{w_off:.3g}"),
    }
    if abs(bias) <= BF16_BIAS and noise <= BF16_NOISE:
        how = "exactly" if noise == 0 else f"within {noise:.1e} (mean ratio 1{bias:+.1e})"
        return verdict(
            "bf16-input",
            True,
            f"bf16 input gives the float32 output rounded to bf16, {how}: scales in float32{note}",
            nums,
        )
    if abs(bias) > BF16_BIAS:
        what = (
            "the dequantized weight codes * beta is rounded to bf16"
            if abs(bias - w_off) <= 2 * BF16_BIAS
            else "the activation scale or the quantized activations are held in bf16"
        )
        return verdict(
            "bf16-input",
            False,
            f"bf16 output / float32 output = 1{bias:+.2%} on average (beta rounded "
            f"to bf16 alone: 1{w_off:+.2%}): {what}; reference: scales in float32{note}",
            nums,
        )
    return verdict(
        "bf16-input",
        False,
        f"bf16 output is {noise:.2%} off the float32 output rounded to bf16: the "
        f"matmul or its accumulator runs in bf16{note}",
        nums,
    )


def check_input_shapes(p: Probing) -> Check:
    """Six tokens of equal rms and absmax (any scale granularity agrees) as 2-D, 3-D and one at a time."""
    xs, w = permuted(normal_token(p.k, 5), 6, seed=5), dense(p.n, p.k)
    y3 = p.run(w, xs.reshape(2, 3, p.k)).reshape(6, p.n)
    y2 = p.run(w, xs, layout="as is")  # a ProbeError here (2-D refused) is this check's finding
    y1 = torch.cat([p.run(w, xs[i : i + 1], layout="as is") for i in range(6)])
    rel = lambda a, b: float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-30)).max())
    d3, d1 = rel(y3, y2), rel(y1, y2)
    nums = {"3d_vs_2d": float(f"{d3:.3g}"), "one_token_vs_batch": float(f"{d1:.3g}")}
    if max(d3, d1) <= SHAPE:
        return verdict("input-shapes", True, "2-D (6, in), 3-D (2, 3, in) and one token at a time agree", nums)
    what = (
        f"3-D input (2, 3, in) differs from the same tokens as 2-D by {d3:.2%}"
        if d3 > SHAPE
        else f"a token run alone differs from the same token in a batch of 6 by {d1:.2%}"
    )
    return verdict("input-shapes", False, what, nums, "parity_mismatch")
