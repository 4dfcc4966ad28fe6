"""The quantizer checks of the conformance checker: activation and weight quantizers and their STEs.

Activation probes are single exact tokens (integers with absmax 127 after an exact RMSNorm) through dense
+-1 weights, so every weight-quantizer variant gives the same +-beta and only the activation grid shows;
weight probes are block weights (every row and group with the same magnitudes) under integer tokens, judged
by a ratio to a flat twin or by a fit up to a free factor, so output-scale errors do not leak in. Gradient
probes compare the layer's gradients with the reference STE's, per class of weights and per input element.
See checks.py for Check, Probing and the layer-level checks.
"""

from __future__ import annotations

import math

import torch

from bitnet_ref.conform.checks import BATCH, DEAD, EXACT, GRAD_COS, LOOSE, SPREAD, Check, Probing, near, skip, verdict
from bitnet_ref.conform.harness import (
    CODES_BLOCK,
    GRAD_BLOCK,
    STAT_BLOCK,
    TIES_BLOCK,
    act_quant_sim,
    best_candidate,
    block_weights,
    dense,
    frac_token,
    grid_token,
    normal_token,
    permuted,
    ratio,
    rms_norm,
    signs,
    simulate,
    spike_token,
    tie_token,
)

# ---- activation quantizer ---------------------------------------------------------------------------------------


def check_act_per_token(p: Probing) -> Check:
    w = dense(p.n, p.k)
    a, b, c = spike_token(p.k), normal_token(p.k, 1), normal_token(p.k, 2)
    alone = {i: p.run(w, t[None])[0] for i, t in enumerate((a, b, c))}
    y2 = p.run(w, torch.stack([a, b, c]))
    y3 = p.run(w, torch.stack([a, b, c])[None])[0]  # one sequence: a per-sequence scale shows here
    rel = lambda y, i: float((y - alone[i]).norm() / alone[i].norm().clamp_min(1e-30))
    d2, d3 = max(rel(y2[i], i) for i in range(3)), max(rel(y3[i], i) for i in range(3))
    xn = rms_norm(a[None], p.norm_eps)[0]
    peak = float(xn.abs().max() / xn.pow(2).mean().sqrt())
    nums = {"change_batched_2d": round(d2, 6), "change_batched_3d": round(d3, 6), "spike_absmax_over_rms": peak}
    if max(d2, d3) <= BATCH:
        return verdict(
            "act-scale-per-token",
            True,
            "a token's output does not change when batched with an "
            f"outlier token (absmax/rms {peak:.1f}): per-token scale",
            nums,
        )
    where = "tokens of a batch" if d2 > BATCH else "the tokens of a sequence"
    return verdict(
        "act-scale-per-token",
        False,
        f"a token's output changes by {max(d2, d3):.1%} when batched with "
        f"a token whose absmax/rms is {peak:.1f}: one activation scale shared across {where}; "
        f"reference: per token",
        nums,
    )


def check_act_range(p: Probing) -> Check:
    x, w = grid_token(p.k)[None], dense(p.n, p.k)
    y = p.run(w, x)
    preds = {f"{L}/absmax": p.ref(x, w, levels=L) for L in (127, 128, 255, 63, 15, 7)}
    name, _, fits = best_candidate(y, preds)
    nums = {"misfit_" + n: round(f, 6) for n, f in fits.items()}
    ok = fits["127/absmax"] <= EXACT
    p.facts["act_grid_ok"] = ok
    if ok:
        return verdict(
            "act-range", True, "integer activations with absmax 127 come through exactly: int8 127/absmax grid", nums
        )
    what = (
        f"the activations sit on a {name} grid"
        if fits[name] <= EXACT
        else f"the activations are not on the 127/absmax grid (misfit {fits['127/absmax']:.2%}; nearest {name})"
    )
    return verdict("act-range", False, f"{what}; reference clamp(round(x * 127/absmax), -128, 127)", nums)


def check_act_rounding(p: Probing) -> Check:
    if not p.facts.get("act_grid_ok"):
        return skip("act-rounding", "the activations are not on the 127/absmax grid (see act-range)")
    if p.facts.get("norm_kind") in ("layer", "other"):
        return skip("act-rounding", "exact .5 ties need the layer's norm to be an RMSNorm or none (see norm)")
    w = dense(p.n, p.k)
    xf, xt = frac_token(p.k)[None], tie_token(p.k)[None]
    yf, yt = p.run(w, xf), p.run(w, xt)
    name_f, _, fits_f = best_candidate(
        yf, {m: p.ref(xf, w, act_rounding=m) for m in ("half-to-even", "none", "floor", "trunc")}
    )
    name_t, _, fits_t = best_candidate(
        yt,
        {
            m: p.ref(xt, w, act_rounding=m)
            for m in ("half-to-even", "half-up", "half-away", "half-down", "half-to-zero")
        },
    )
    nums = {
        "quarter_values_misfit": {m: round(f, 6) for m, f in fits_f.items()},
        "ties_misfit": {m: round(f, 6) for m, f in fits_t.items()},
    }
    if fits_f["half-to-even"] > EXACT:
        what = (
            "the activations are not rounded (x * 127/absmax used as is)"
            if name_f == "none" and fits_f[name_f] <= EXACT
            else f"activations round like {name_f}"
            if fits_f[name_f] <= EXACT
            else f"activation values off the rounded grid by {fits_f['half-to-even']:.2%}"
        )
        return verdict("act-rounding", False, f"{what}; reference torch.round", nums)
    eps = p.facts.get("measured_norm_eps", p.norm_eps) if p.facts.get("norm_kind") == "rms" else 0.0
    ms = float(xt.pow(2).mean())
    if float(torch.tensor(ms + eps, dtype=torch.float32)) != ms:  # the norm's eps moves the ties off .5
        return verdict(
            "act-rounding",
            True,
            f"rounded (torch.round); .5 ties not checkable: the norm's eps "
            f"({eps:.2g}) is not negligible next to the probe's mean square {ms:g}",
            nums,
        )
    if fits_t["half-to-even"] > EXACT:
        what = (
            f"activation .5 ties round {name_t}"
            if fits_t[name_t] <= EXACT
            else f"activation .5 ties follow no known rule (misfit {fits_t['half-to-even']:.2%})"
        )
        return verdict("act-rounding", False, f"{what}; reference torch.round (half to even: 0.5 -> 0, 2.5 -> 2)", nums)
    return verdict("act-rounding", True, "rounded, .5 ties to even (torch.round)", nums)


# ---- weight quantizer -------------------------------------------------------------------------------------------


def _need_weight_scale(p, name):
    if not p.facts.get("weight_scale_applied"):
        return skip(name, "the weight scale does not reach the output (see output-scale)")
    return None


def check_weight_scale(p: Probing) -> Check:
    if (s := _need_weight_scale(p, "weight-scale")) is not None:
        return s
    x = permuted(grid_token(p.k), 2)
    ws = block_weights(p.n, p.k, STAT_BLOCK)
    a = ws.abs().double()
    stats = {"mean": a.mean(), "median": a.flatten().median(), "max": a.max(), "rms": a.pow(2).mean().sqrt()}
    flat = torch.sign(ws) * float(stats["mean"])  # same signs, every statistic = mean|W|
    r = ratio(p.run(ws, x), p.run(flat, x))
    expect = {k: float(v / stats["mean"]) for k, v in stats.items()}
    nums = {"output_ratio": round(r, 5), "expected_ratio": {k: round(v, 4) for k, v in expect.items()}}
    if near(r, 1):
        return verdict(
            "weight-scale",
            True,
            f"beta = mean|W| (absmean): output ratio {r:.4f} on weights whose "
            f"median/mean = {expect['median']:.3f}, max/mean = {expect['max']:.3f}",
            nums,
        )
    name = min(expect, key=lambda k: abs(expect[k] - r))
    what = (
        f"the weight scale is the {name} of |W|, not the mean"
        if near(r, expect[name])
        else "the weight scale matches no known statistic"
    )
    return verdict(
        "weight-scale", False, f"output / absmean reference = {r:.4f} ({name}/mean = {expect[name]:.4f}): {what}", nums
    )


def check_weight_per_tensor(p: Probing) -> Check:
    if (s := _need_weight_scale(p, "weight-scale-per-tensor")) is not None:
        return s
    x, sg = permuted(grid_token(p.k), 4), signs(p.n, p.k)
    y_flat = p.run(sg, x)
    row_mag = torch.where(torch.arange(p.n) < p.n // 2, 0.75, 1.25)[:, None]
    col_mag = torch.where(torch.arange(p.k) < p.k // 2, 0.75, 1.25)[None, :]
    spreads = {}
    for kind, w in (("rows", sg * row_mag), ("columns", sg * col_mag)):
        y = p.run(w, x)
        per_row = torch.tensor([ratio(y[:, i], y_flat[:, i]) for i in range(p.n)])
        mid = float(per_row.median())
        spreads[kind] = (
            float((per_row / mid - 1).abs().max()) if mid else math.inf,
            float(per_row.min()),
            float(per_row.max()),
        )
    nums = {f"{k}_probe_ratio_range": [round(v[1], 4), round(v[2], 4)] for k, v in spreads.items()}
    bad = [k for k, v in spreads.items() if not v[0] <= SPREAD]
    if not bad:
        return verdict(
            "weight-scale-per-tensor",
            True,
            "one weight scale per tensor: rows and columns of different magnitude share it",
            nums,
        )
    k = bad[-1]
    what = (
        "one scale per output row (or group of rows)"
        if bad == ["rows"]
        else "one scale per group of input columns" + (" in each row" if len(bad) == 2 else "")
    )
    return verdict(
        "weight-scale-per-tensor",
        False,
        f"with |W| 0.75 in half the {k} and 1.25 in the other, "
        f"output rows scale by {spreads[k][1]:.3f}..{spreads[k][2]:.3f} (per tensor: all equal): "
        f"{what}",
        nums,
    )


def check_weight_codes(p: Probing) -> Check:
    x, w = permuted(grid_token(p.k), 2), block_weights(p.n, p.k, CODES_BLOCK)
    y = p.run(w, x)
    name, _, fits = best_candidate(y, {c: p.ref(x, w, codes=c) for c in ("ternary", "binary", "none")})
    nums = {"misfit": {c: round(f, 5) for c, f in fits.items()}}
    ok = fits["ternary"] <= LOOSE
    p.facts["codes_ternary"] = ok
    if ok:
        return verdict("weight-codes", True, "ternary: weights at 0.36 beta give code 0, the others +-1", nums)
    what = {
        "binary": "binary codes (sign, no 0): weights at 0.36 beta count as +-1",
        "none": "the weights are not quantized (latent weights used as they are)",
        "ternary": "the codes are not the ternary reference",
    }[name if fits[name] <= LOOSE else "ternary"]
    return verdict("weight-codes", False, f"{what}; reference clamp(round(W/beta), -1, 1)", nums)


def check_weight_ties(p: Probing) -> Check:
    if not p.facts.get("codes_ternary"):
        return skip("weight-rounding-ties", "the codes are not ternary (see weight-codes)")
    x, w = permuted(grid_token(p.k), 2), block_weights(p.n, p.k, TIES_BLOCK)
    y = p.run(w, x)
    name, _, fits = best_candidate(
        y, {m: p.ref(x, w, weight_rounding=m) for m in ("half-to-even", "half-up", "half-away", "half-down")}
    )
    nums = {"misfit": {m: round(f, 5) for m, f in fits.items()}}
    if fits["half-to-even"] <= LOOSE:
        return verdict(
            "weight-rounding-ties", True, "weights at exactly +-beta/2 give code 0 (torch.round, half to even)", nums
        )
    what = (
        f"weights at exactly +-beta/2 round {name}"
        if fits[name] <= LOOSE
        else "weights at exactly +-beta/2 follow no known rule"
    )
    return verdict("weight-rounding-ties", False, f"{what}; reference torch.round: +-0.5 -> 0", nums)


# ---- straight-through estimators -----------------------------------------------------------------------------------

GRAD_CLASSES = {
    0.25: "code 0",
    0.75: "code +-1",
    1.0: "code +-1, |W| = beta",
    1.25: "code +-1, |W| > beta",
    1.75: "clamped (|W| >= 1.5 beta)",
}


def check_grad_weights(p: Probing) -> Check:
    """Reference STE: d loss / dW = g^T x_hat for every latent weight, whatever its code."""
    x, w = permuted(grid_token(p.k), 4), block_weights(p.n, p.k, GRAD_BLOCK)
    g = torch.randn(4, p.n, generator=torch.Generator().manual_seed(11))
    _, _, gw = p.run(w, x, grad=g)
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
    xhat = act_quant_sim(rms_norm(x, p.norm_eps)).detach()
    ref = g.double().t() @ xhat  # (n, k)
    cos = float(torch.nn.functional.cosine_similarity(gw.flatten(), ref.flatten(), 0))
    alpha = {m: ratio(gw[w.abs() == m], ref[w.abs() == m]) for m in GRAD_CLASSES}
    top = max(alpha.values())
    share = {m: a / top if top > 0 else 0.0 for m, a in alpha.items()}
    nums = {
        "cosine_with_ste_gradient": round(cos, 4),
        "gradient_share_by_abs_W_over_beta": {str(m): round(v, 4) for m, v in share.items()},
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
    if not dead:
        return verdict(
            "grad-latent-weights",
            True,
            "every latent weight gets the STE gradient: code 0, +-1, exactly +-beta and clamped alike",
            nums,
        )
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


def check_grad_input(p: Probing) -> Check:
    """Loss <y, y_ref>: its gradient lies mostly along x, which the norm's Jacobian removes (scale invariance)."""
    kind, eps, note = p.facts.get("norm_kind"), p.norm_eps, ""
    if kind not in ("rms", "none"):
        return skip("grad-input", "the layer's norm is neither the reference RMSNorm nor absent (see norm)")
    if kind == "none" and p.inside:
        eps, note = None, " (no norm inside: compared with the reference without one)"
    x, w = permuted(grid_token(p.k), 4), dense(p.n, p.k)
    g = simulate(x, w, eps).float()
    _, gx, _ = p.run(w, x, grad=g)
    if gx is None or not gx.any():
        return verdict(
            "grad-input",
            False,
            "no gradient reaches the input: the activation quantizer has no straight-through estimator",
        )
    xr = x.double().requires_grad_(True)
    (simulate(xr, w, eps) * g.double()).sum().backward()
    ref = xr.grad
    # the absmax element of each token lands exactly on code +-127, the clamp bound: judged on its own
    at_peak = x.abs() == 127
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, 0))
    cos = min(cosine(gx[i][~at_peak[i]], ref[i][~at_peak[i]]) for i in range(4))
    radial = max(abs(cosine(gx[i], x[i].double())) for i in range(4))
    live = float((gx != 0).double().mean())
    peaks = at_peak & (ref.abs() > 0.2 * ref.pow(2).mean(-1, keepdim=True).sqrt())
    a = torch.tensor([ratio(gx[i], ref[i]) for i in range(4)])[:, None]
    peak_share = float((gx / (a * ref))[peaks].min()) if peaks.any() else None
    nums = {
        "min_cosine_with_reference": round(cos, 5),
        "max_share_along_input": round(radial, 5),
        "share_of_elements_with_gradient": round(live, 4),
        "absmax_element_share": None if peak_share is None else round(peak_share, 4),
    }
    if live < 0.5:
        return verdict(
            "grad-input",
            False,
            f"only {live:.1%} of the input elements get a gradient (the absmax "
            f"ones, through the scale): the activation quantizer has no straight-through estimator",
            nums,
        )
    if cos < GRAD_COS:
        what = (
            "the gradient runs along the input, which the norm's Jacobian removes: the STE bypasses the norm "
            "(the forward uses norm(x), the STE passes the gradient to x)"
            if eps and radial > 0.3
            else f"the input gradient is unrelated to the STE's (cosine {cos:.2f}): no straight-through estimator "
            f"on the activation quantizer, only what passes through its scale arrives"
            if abs(cos) < 0.3
            else f"the input gradient points elsewhere than the reference STE's (cosine {cos:.3f})"
        )
        return verdict("grad-input", False, what + note, nums)
    if peak_share is not None and abs(peak_share - 1) > DEAD:
        return verdict(
            "grad-input",
            False,
            f"the other elements match, but the absmax element of a token (code "
            f"127, on the clamp bound) gets x{peak_share:.2f} of its STE gradient: a clamp/hardtanh "
            f"after the STE",
            nums,
        )
    return verdict(
        "grad-input",
        True,
        f"the input gradient is the reference STE's (cosine {cos:.4f}), absmax "
        f"elements included" + (note or ", through the norm"),
        nums,
    )


def check_latent_kept(p: Probing) -> Check:
    """The latent weight must hold what was loaded after a forward and backward: quantize only inside forward."""
    x, w = permuted(grid_token(p.k), 2), block_weights(p.n, p.k, GRAD_BLOCK)
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
