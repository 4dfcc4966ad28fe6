"""The framework of the conformance checks (Check, Probing, what each deviation does) and the output checks.

Every check compares the layer with itself or with the reference so that other deviations cancel: a ratio of
two runs that differ only in the property (weight scale statistic, bias, input scale, dtype, batching), or a
fit up to a free factor (so an output scale error does not leak into a question about codes or rounding).
Where a question has no meaning after an earlier finding (tie rounding of codes that are not ternary, the eps
of a norm that is absent), the check says "not-checkable" and why, instead of failing for the other reason.
The checks themselves: here (forward, output scale), norms.py, quantizers.py, gradients.py, layer_checks.py;
the probes are in harness.py; checker.py runs the checks in CHECKS order and reports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bitnet_ref.conform.harness import dense, misfit, ratio, rms_norm, signs, simulate, unit_token
from bitnet_ref.conform.layer import ProbeError

EXACT = 5e-4  # misfit where the reference is exact up to float rounding (integer tokens, +-a weights)
LOOSE = 2e-2  # misfit for weight questions, where an act deviation may leak in at <= 1%
SCALE = 1e-2  # relative tolerance on output ratios that should be exactly 1 (or 2, 4)
SPREAD = 2e-2  # per-row ratios of a per-tensor scale agree to this
BATCH = 5e-3  # a token's output may change this much (relative) when batched with others
SHAPE = 1e-3  # ... or when the same tokens come as 2-D, 3-D or one at a time
# mean (bf16 output / f32 output) - 1: a scale held in bf16 moves it by 2e-3 to 4e-3 on the bf16 probe; an autocast
# matmul whose bf16 output is rounded again after the dequantization moves it by up to ~5e-4
BF16_BIAS = 1e-3
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
    "act-scale-per-token": "a token's output depends on the other tokens in the batch: one outlier token "
    "wipes out the resolution of the rest, and batched training differs from one-token decoding",
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
    "output-dtype": "the layer hands the next one another dtype than it got: a bf16 model's residual stream is "
    "silently upcast to float32 (twice the activation memory, and outputs that differ from the bf16 model's)",
    "extra-parameters": "a trainable tensor the reference has no counterpart for: it trains, is saved and is "
    "exported as nothing (a norm bias shifts every token before the quantizer; the packed formats have no "
    "place for it)",
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

    def no_latent(self, name):
        """not-checkable for a layer that holds codes (a loader wrote them), else None."""
        if self.lut.latent:
            return None
        return skip(
            name,
            f"the layer holds codes and a scale (loader {self.lut.loader.name}: {self.lut.loader.what}): the "
            f"weights were quantized by the loader, the exporter's job, and there is no latent weight to train",
        )

    def run(self, w, x, **kw):
        return self.lut.run(w, x, **kw)

    def ref(self, x, w, **knobs):
        return simulate(x, w, self.norm_eps, **knobs)

    @property
    def inside(self):
        return self.norm_eps is not None


def near(v, target, tol=SCALE):
    return abs(v - target) <= tol * abs(target)


def named_factor(v: float, factors: dict, tol=0.02) -> str | None:
    """The name of the factor v equals (within tol, relative), or None: e.g. {"beta": 3.0, "1/beta": 1/3}."""
    hits = [name for name, f in factors.items() if f and near(v, f, tol)]
    return min(hits, key=lambda n: abs(v / factors[n] - 1)) if hits else None


def finite(t):
    return bool(torch.isfinite(t).all())


def fmt(v: float) -> str:
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
    if not finite(y):
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
    elif near(rho_w, ratio(p.ref(x, w, levels="sign"), ref), 0.02):
        why.append("as sign(x) activations give it (1 bit: a token's magnitudes are lost, see act-range)")
    elif not near(rho_w, 1) and why == []:
        why.append("matching no known cause")
    elif not near(rho_w, 1):
        why.append(f"and a remaining factor x{fmt(rho_w)} (see act-range and norm)")
    text = f"output / reference = {fmt(rho)}"
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
    if not finite(y):
        return verdict(
            "output-scale-width", False, f"NaN/inf in the output at in_features={k} (accumulator overflow?)", nums
        )
    if near(drift, 1) and fit < SCALE:
        return verdict(
            "output-scale-width", True, f"output / reference = {fmt(rho_w)} at in_features={k}, as at {p.k}", nums
        )
    if not near(drift, 1):
        return verdict(
            "output-scale-width",
            False,
            f"output / reference = {fmt(rho_w)} at in_features={k} but "
            f"{fmt(rho)} at {p.k}: the scale goes as in_features**{expo:.2f}",
            nums,
        )
    return verdict(
        "output-scale-width",
        False,
        f"at in_features={k} the output differs from the reference by "
        f"{fit:.2%} beyond a factor (accumulator precision?)",
        nums,
    )
