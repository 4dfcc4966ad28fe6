"""The norm checks of the conformance checker: is there an RMSNorm right before the activation quantizer, and
what is its eps.

The reference normalises each token by rsqrt(mean(x^2) + eps) with gain 1 (a trained gain is the census's
business, layer_checks.py). A layer is probed for scale invariance (4x the input, 1x the output), for mean
subtraction (a LayerNorm), for 1-bit activations (sign(x) is scale-invariant too, with no norm at all), and for
where its eps sits (under the square root, or added to the RMS as x / (rms + eps)).
"""

from __future__ import annotations

import math

from bitnet_ref.conform.checks import LOOSE, Check, Probing, near, skip, verdict
from bitnet_ref.conform.harness import dense, grid_token, mean_token, misfit, ratio, simulate, unit_token


def _sign_activations(p: Probing, w, nums) -> bool:
    """True when the layer's output follows sign(x), not the int8 quantization of RMSNorm(x)."""
    xg = grid_token(p.k)[None]  # integers of many magnitudes: sign() keeps none of them
    yg = p.run(w, xg)
    fit_ref, fit_sign = misfit(yg, p.ref(xg, w)), misfit(yg, p.ref(xg, w, levels="sign"))
    nums.update(misfit_int8_on_varied_token=round(fit_ref, 5), misfit_sign_on_varied_token=round(fit_sign, 5))
    return fit_sign <= LOOSE < fit_ref


def check_norm(p: Probing) -> Check:
    x, w = unit_token(p.k)[None], dense(p.n, p.k)
    r = ratio(p.run(w, 4 * x), p.run(w, x))
    nums = {"output_ratio_for_4x_input": round(r, 4)}
    if near(r, 1) and _sign_activations(p, w, nums):
        p.facts["norm_kind"] = "sign"
        return skip(
            "norm",
            "the activations are sign(x) (see act-range), which ignores every token's scale with or without a "
            "norm before it, so whether the layer normalises cannot be seen",
        )
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


def _eps_under_root(r: float, ms: float) -> float:
    """eps of x * rsqrt(ms + eps) from the ratio r of a token of mean square ms to a unit one."""
    return ms * (1 / r**2 - 1) if 0 < r <= 1 else 0.0


def _eps_on_rms(r: float, ms: float) -> float:
    """eps of x / (rms + eps) from the same ratio."""
    return math.sqrt(ms) * (1 / r - 1) if 0 < r <= 1 else 0.0


def check_norm_eps(p: Probing) -> Check:
    """Two tokens, of mean square eps and eps / 10^4: the two places an eps can sit predict different ratios."""
    if not p.inside:
        return skip("norm-eps", "the norm lives outside the layer (--norm-outside); its eps is the model's")
    if p.facts.get("norm_kind") not in ("rms", "layer"):
        return skip("norm-eps", "no RMSNorm found inside the layer (see norm)")
    if not p.facts.get("act_scale_applied", True):
        return skip(
            "norm-eps",
            "the activation scale is not undone (see output-scale), so the norm's output "
            "scale does not reach the output",
        )
    eps, x, w = p.norm_eps, unit_token(p.k)[None], dense(p.n, p.k)
    y1 = p.run(w, x)
    ms1, ms2 = eps, eps * 1e-4
    r1, r2 = (ratio(p.run(w, x * math.sqrt(ms)), y1) for ms in (ms1, ms2))
    eps_hat = _eps_under_root(r1, ms1)
    p.facts["measured_norm_eps"] = eps_hat
    nums = {
        "token_mean_square": eps,
        "output_ratio": round(r1, 5),
        "reference_ratio": round(math.sqrt(0.5), 5),
        "measured_eps": float(f"{eps_hat:.3g}"),
        "reference_eps": eps,
        "output_ratio_at_mean_square_eps_1e-4": round(r2, 5),
    }
    if eps / 1.5 <= eps_hat <= eps * 1.5:
        return verdict("norm-eps", True, f"norm eps measured {eps_hat:.2g} (reference {eps:g})", nums)
    on_rms = _eps_on_rms(r1, ms1)
    predict_root = math.sqrt(ms2 / (ms2 + eps_hat)) if eps_hat > 0 else 1.0
    predict_rms = math.sqrt(ms2) / (math.sqrt(ms2) + on_rms)
    if on_rms > 0 and abs(r2 - predict_rms) < 0.02 < abs(r2 - predict_root):
        nums["measured_eps_added_to_rms"] = float(f"{on_rms:.3g}")
        return verdict(
            "norm-eps",
            False,
            f"the eps ({on_rms:.2g}) is added to the RMS, x / (rms + eps), not under the square root as in "
            f"x / sqrt(mean(x^2) + eps): a token of mean square {eps:g} comes out x{r1:.3f} of a unit one, "
            f"the reference x{math.sqrt(0.5):.3f}",
            nums,
        )
    return verdict(
        "norm-eps",
        False,
        f"norm eps measured {eps_hat:.2g}, reference {eps:g}: a token of mean "
        f"square {eps:g} comes out x{r1:.3f} of a unit one, the reference x{math.sqrt(0.5):.3f}",
        nums,
    )
