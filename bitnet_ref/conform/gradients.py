"""The gradient checks of the conformance checker: the straight-through estimators, direction and magnitude.

The reference STE keeps the whole quantizer inside .detach(): d loss / dW = g^T x_hat for every latent weight
(x_hat the dequantized activations), and d loss / dx = the norm's Jacobian applied to W_hat^T g. The probes
put beta = 3 and gamma = absmax/127 (1/127 on the sign tokens, 1/16 on the grid tokens after the norm, 0.25/127
and 0.25 outside it) far from 1 and from each other, so a gradient that carries a scale the forward does not
(the STE taken on the integer codes, the scale multiplied after it) shows as that scale. A gradient that
carries the same factor as the layer's output (a layer whose output is off by a scale, output-scale's finding)
is the STE of that layer's own forward, and is not reported again here.
"""

from __future__ import annotations

import torch

from bitnet_ref.conform.checks import DEAD, GRAD_COS, Check, Probing, named_factor, near, skip, verdict
from bitnet_ref.conform.harness import (
    GRAD_BLOCK,
    act_quant_sim,
    block_weights,
    dense,
    grid_token,
    permuted,
    ratio,
    rms_norm,
    sign_token,
    simulate,
)

BETA = 3.0  # the gradient probes' weight scale
OUTSIDE_SCALE = 0.25  # input scale without a norm inside, so that gamma is not 1 there either
MAGNITUDE = 0.02  # a gradient's size may differ from the reference's (or the output's factor) by this much

GRAD_CLASSES = {
    0.25: "code 0",
    0.75: "code +-1",
    1.0: "code +-1, |W| = beta",
    1.25: "code +-1, |W| > beta",
    1.75: "clamped (|W| >= 1.5 beta)",
}


def _scaled(p: Probing, x):
    return x if p.inside else OUTSIDE_SCALE * x


def _factors(p: Probing, gamma: float) -> dict:
    return {
        "beta": BETA,
        "1/beta": 1 / BETA,
        "gamma = absmax/127": gamma,
        "1/gamma = 127/absmax": 1 / gamma,
        "beta*gamma": BETA * gamma,
        "1/(beta*gamma)": 1 / (BETA * gamma),
        "in_features": p.k,
        "1/in_features": 1 / p.k,
    }


def _magnitude(p: Probing, a: float, rho: float, gamma: float, what: str) -> str | None:
    """None when a gradient a times the reference's is right: 1, or the output's own factor (rho on this probe,
    or output-scale's on weights every quantizer agrees on, when another deviation moves this probe's); else why."""
    if any(near(a, f, MAGNITUDE) for f in (1, rho, p.facts.get("rho", 1.0))):
        return None
    name = named_factor(a, _factors(p, gamma))
    told = f" (= {name})" if name else ""
    how = {
        "beta": "the STE passes the gradient to the integer codes and beta multiplies after it",
        "1/beta": "the STE divides by the weight scale that the forward multiplies back",
        "gamma = absmax/127": "the STE is taken on x * 127/absmax and the activation scale undone after it",
        "1/gamma = 127/absmax": "the activation scale enters the gradient but not the forward",
    }.get(name or "", "a scale enters the gradient that the forward does not carry")
    return (
        f"the {what} gradient is x{a:.4g}{told} the STE's, while the output is x{rho:.4g} the reference's: "
        f"{how}, so every update is mis-sized (SGD steps, and the balance between layers under Adam)"
    )


def _size(a: float) -> str:
    return "at its size" if near(a, 1, MAGNITUDE) else f"times x{a:.4g}, the output's own factor (see output-scale)"


def check_grad_weights(p: Probing) -> Check:
    """Reference STE: d loss / dW = g^T x_hat for every latent weight, whatever its code, at its size."""
    if (s := p.no_latent("grad-latent-weights")) is not None:
        return s
    x, w = _scaled(p, permuted(sign_token(p.k), 4)), BETA * block_weights(p.n, p.k, GRAD_BLOCK)
    g = torch.randn(4, p.n, generator=torch.Generator().manual_seed(11))
    y, _, gw = p.run(w, x, grad=g)
    if gw is None or not gw.any():
        return verdict(
            "grad-latent-weights",
            False,
            "no gradient reaches the latent weight "
            f"({'weight.grad is None' if gw is None else 'all zero'}): no straight-through estimator",
            {},
            "missing_ste",
        )
    if not bool(torch.isfinite(gw).all()):
        return verdict("grad-latent-weights", False, "NaN/inf in the latent-weight gradient on ordinary input")
    xn = rms_norm(x, p.norm_eps)
    xhat = act_quant_sim(xn).detach()
    ref = g.double().t() @ xhat  # (n, k)
    cos = float(torch.nn.functional.cosine_similarity(gw.flatten(), ref.flatten(), 0))
    alpha = {m: ratio(gw[w.abs() == m * BETA], ref[w.abs() == m * BETA]) for m in GRAD_CLASSES}
    top = max(alpha.values())
    share = {m: a / top if top > 0 else 0.0 for m, a in alpha.items()}
    a, rho = ratio(gw, ref), ratio(y, p.ref(x, w))
    gamma = float(xn.abs().max()) / 127
    nums = {
        "cosine_with_ste_gradient": round(cos, 4),
        "gradient_share_by_abs_W_over_beta": {str(m): round(v, 4) for m, v in share.items()},
        "gradient_over_ste_gradient": float(f"{a:.4g}"),
        "output_over_reference": float(f"{rho:.4g}"),
        "beta": BETA,
        "gamma": float(f"{gamma:.4g}"),
    }
    if cos < 0.3:
        return verdict(
            "grad-latent-weights",
            False,
            f"the latent-weight gradient is not the STE's (cosine "
            f"{cos:.2f} with g^T x_hat): no straight-through estimator, only what passes through the "
            f"scale reaches W",
            nums,
            "missing_ste",
        )
    dead = [m for m in GRAD_CLASSES if not share[m] >= DEAD]
    if dead:
        return _dead_classes(dead, share, nums)
    off = _magnitude(p, a, rho, gamma, "latent-weight")
    if off:
        return verdict("grad-latent-weights", False, off, nums)
    return verdict(
        "grad-latent-weights",
        True,
        f"every latent weight gets the STE gradient {_size(a)}: code 0, +-1, exactly +-beta and clamped alike",
        nums,
    )


def _dead_classes(dead, share, nums) -> Check:
    listed = ", ".join(f"{GRAD_CLASSES[m]}: {share[m]:.2f}" for m in dead)
    if dead == [1.75]:
        what = "clamped weights (|W| >= 1.5 beta) get no gradient: the STE stops at the clamp (clamp-STE bug)"
    elif set(dead) >= {0.75, 1.0, 1.25}:
        what = (
            "weights with code +-1 get no gradient: the clamp bound kills it (pytorch/ao PR #4806; keep the "
            "whole quantizer inside .detach())"
        )
    else:
        what = "some weights get less gradient than the STE gives"
    return verdict(
        "grad-latent-weights",
        False,
        f"{what}; gradient relative to the best class: {listed}",
        nums,
        "clamp_ste" if 1.75 in dead else None,
    )


def _input_grad_numbers(p: Probing, x, w, g, y, gx, eps, norm) -> dict:
    """The layer's input gradient against the reference's: direction (cosine, share along x), coverage, the
    absmax elements' share, and size (with the output's own factor beside it)."""
    xr = x.double().requires_grad_(True)
    yr = simulate(xr, w, eps, norm)
    (yr * g.double()).sum().backward()
    ref = xr.grad
    at_peak = x.abs() == x.abs().amax(-1, keepdim=True)  # code +-127, the clamp bound: judged on its own
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, 0))
    peaks = at_peak & (ref.abs() > 0.2 * ref.pow(2).mean(-1, keepdim=True).sqrt())
    per_token = torch.tensor([ratio(gx[i], ref[i]) for i in range(len(x))])[:, None]
    return {
        "min_cosine_with_reference": min(cosine(gx[i][~at_peak[i]], ref[i][~at_peak[i]]) for i in range(len(x))),
        "max_share_along_input": max(abs(cosine(gx[i], x[i].double())) for i in range(len(x))),
        "share_of_elements_with_gradient": float((gx != 0).double().mean()),
        "absmax_element_share": float((gx / (per_token * ref))[peaks].min()) if peaks.any() else None,
        "gradient_over_reference": ratio(gx[~at_peak], ref[~at_peak]),
        "output_over_reference": ratio(y, yr.detach()),
        "beta": BETA,
        "gamma": float((rms_norm(x, eps) if eps else x).abs().max()) / 127,
    }


def check_grad_input(p: Probing) -> Check:
    """Loss <y, y_ref>: its gradient lies mostly along x, which the norm's Jacobian removes (scale invariance).

    The tokens have zero mean, so a LayerNorm normalises them as an RMSNorm does; its Jacobian (which also
    removes the mean direction) is the reference's then."""
    kind, eps, note = p.facts.get("norm_kind"), p.norm_eps, ""
    if kind == "sign":
        return _grad_input_arrives(p)
    if kind not in ("rms", "none", "layer"):
        return skip("grad-input", "the layer's norm is neither an RMSNorm, a LayerNorm nor absent (see norm)")
    if kind == "none" and p.inside:
        eps, note = None, " (no norm inside: compared with the reference without one)"
    held = "" if p.lut.latent else " (a layer holding codes: this matters when training through it, e.g. adapters)"
    norm = "layer" if kind == "layer" else "rms"
    x, w = _scaled(p, permuted(grid_token(p.k), 4)), dense(p.n, p.k, BETA)
    g = simulate(x, w, eps, norm).float()
    y, gx, _ = p.run(w, x, grad=g)
    if gx is None and not p.lut.latent and not p.lut.last_output_grad:
        return skip("grad-input", "an inference layer: its output carries no gradient at all (codes loaded)")
    if gx is None or not gx.any():
        return verdict(
            "grad-input",
            False,
            "no gradient reaches the input: the activation quantizer has no straight-through estimator" + note + held,
            {},
            "grad_flow",
        )
    m = _input_grad_numbers(p, x, w, g, y, gx, eps, norm)
    nums = {k: v if v is None or k == "beta" else float(f"{v:.5g}") for k, v in m.items()}
    cos, live, peak_share = (
        m["min_cosine_with_reference"],
        m["share_of_elements_with_gradient"],
        m["absmax_element_share"],
    )
    if live < 0.5:
        return verdict(
            "grad-input",
            False,
            f"only {live:.1%} of the input elements get a gradient (the absmax "
            f"ones, through the scale): the activation quantizer has no straight-through estimator" + note + held,
            nums,
            "grad_flow",
        )
    if cos < GRAD_COS:
        what = (
            "the gradient runs along the input, which the norm's Jacobian removes: the STE bypasses the norm "
            "(the forward uses norm(x), the STE passes the gradient to x)"
            if eps and m["max_share_along_input"] > 0.3
            else f"the input gradient is unrelated to the STE's (cosine {cos:.2f}): no straight-through estimator "
            f"on the activation quantizer, only what passes through its scale arrives"
            if abs(cos) < 0.3
            else f"the input gradient points elsewhere than the reference STE's (cosine {cos:.3f})"
            + ("; the tokens of a batch are coupled (see act-scale-per-token)" if p.facts.get("tokens_coupled") else "")
        )
        return verdict("grad-input", False, what + note + held, nums, "grad_flow" if abs(cos) < 0.3 else None)
    if peak_share is not None and abs(peak_share - 1) > DEAD:
        return verdict(
            "grad-input",
            False,
            f"the other elements match, but the absmax element of a token (code "
            f"127, on the clamp bound) gets x{peak_share:.2f} of its STE gradient: a clamp/hardtanh "
            f"after the STE" + note + held,
            nums,
        )
    off = _magnitude(p, m["gradient_over_reference"], m["output_over_reference"], m["gamma"], "input")
    if off:
        return verdict("grad-input", False, off + note + held, nums)
    where = {"rms": ", through the norm", "layer": ", through the LayerNorm"}.get(kind, "") if eps else ""
    return verdict(
        "grad-input",
        True,
        f"the input gradient is the reference STE's {_size(m['gradient_over_reference'])} (cosine {cos:.4f}), "
        f"absmax elements included" + (note or where),
        nums,
    )


def _grad_input_arrives(p: Probing) -> Check:
    """sign(x) activations hide whether a norm sits before them, so only whether a gradient arrives is judged."""
    x, w = _scaled(p, permuted(grid_token(p.k), 4)), dense(p.n, p.k, BETA)
    _, gx, _ = p.run(w, x, grad=torch.ones(4, p.n))
    live = 0.0 if gx is None else float((gx != 0).double().mean())
    if live < 0.5:
        return verdict(
            "grad-input",
            False,
            f"only {live:.1%} of the input elements get a gradient: sign(x) without a straight-through estimator "
            f"passes none to earlier layers",
            {"share_of_elements_with_gradient": round(live, 4)},
            "grad_flow",
        )
    return skip(
        "grad-input",
        "a gradient reaches every input element; its direction is not judged, as sign(x) activations hide "
        "whether a norm (and its Jacobian) sits before them",
    )


def check_latent_kept(p: Probing) -> Check:
    """The latent weight must hold what was loaded after a forward and backward: quantize only inside forward."""
    if (s := p.no_latent("latent-weights-kept")) is not None:
        return s
    x, w = permuted(sign_token(p.k), 2), block_weights(p.n, p.k, GRAD_BLOCK)
    p.run(w, x, grad=torch.ones(2, p.n))
    after = p.lut.last_weight
    changed = float((after != w.double()).double().mean())
    nums = {"share_of_latent_weights_changed": round(changed, 4)}
    if changed == 0:
        return verdict("latent-weights-kept", True, "forward and backward leave the latent weights as loaded", nums)
    ternary = (
        bool(torch.isin(after.unique(), torch.tensor([-1.0, 0.0, 1.0], dtype=after.dtype)).all())
        or after.abs().unique().numel() <= 2
    )
    what = "overwritten by their quantized values" if ternary else "changed"
    return verdict(
        "latent-weights-kept",
        False,
        f"{changed:.0%} of the latent weights are {what} by forward/"
        f"backward; reference: full-precision latent weights, quantized only inside forward",
        nums,
    )
