"""The quantizer checks of the conformance checker: the activation quantizer and the weight quantizer.

Activation probes are single exact tokens (integers with absmax 127 after an exact RMSNorm, zero mean so a
LayerNorm normalises them alike) through dense +-1 weights, so every weight-quantizer variant gives the same
+-beta and only the activation grid shows. Weight probes are block weights (every row and group with the same
magnitudes) under sign tokens (+-1, on which every activation quantizer agrees), judged by a ratio to a flat
twin or by a fit up to a free factor, so neither an output-scale error nor an activation deviation leaks in.
A layer that holds codes (a loader wrote them) has no weight quantizer of its own to check.
See checks.py for Check and Probing, gradients.py for the STEs.
"""

from __future__ import annotations

import math

import torch

from bitnet_ref.conform.checks import BATCH, EXACT, LOOSE, SPREAD, Check, Probing, near, skip, verdict
from bitnet_ref.conform.harness import (
    CODES_BLOCK,
    STAT_BLOCK,
    TIES_BLOCK,
    best_candidate,
    block_weights,
    dense,
    frac_token,
    grid_token,
    misfit,
    normal_token,
    permuted,
    ratio,
    rms_norm,
    sign_token,
    signs,
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
    p.facts["tokens_coupled"] = True
    batched = y2 if d2 > BATCH else y3
    rescaled = [ratio(batched[i], alone[i]) for i in (1, 2)]
    if all(misfit(batched[i], alone[i]) <= EXACT for i in (1, 2)):
        return verdict(
            "act-scale-per-token",
            False,
            f"a token's output is rescaled (x{rescaled[0]:.3g}, x{rescaled[1]:.3g}) when batched with a token "
            f"whose absmax/rms is {peak:.1f}, its int8 codes unchanged: the layer normalises by statistics taken "
            f"across {where} (a norm over the sequence or batch), not per token; reference: RMSNorm per token",
            nums,
            "parity_mismatch",
        )
    return verdict(
        "act-scale-per-token",
        False,
        f"a token's output changes by {max(d2, d3):.1%} when batched with "
        f"a token whose absmax/rms is {peak:.1f}: one activation scale shared across {where}; "
        f"reference: per token",
        nums,
        "parity_mismatch",
    )


def check_act_range(p: Probing) -> Check:
    x, w = grid_token(p.k)[None], dense(p.n, p.k)
    y = p.run(w, x)
    preds = {f"{L}/absmax": p.ref(x, w, levels=L) for L in (127, 128, 255, 63, 15, 7)}
    preds["sign"] = p.ref(x, w, levels="sign")
    name, _, fits = best_candidate(y, preds)
    nums = {"misfit_" + n: round(f, 6) for n, f in fits.items()}
    ok = fits["127/absmax"] <= EXACT
    p.facts["act_grid_ok"] = ok
    if name != "sign" and fits[name] <= EXACT:
        p.facts["act_levels"] = int(name.split("/")[0])  # the grid act-rounding then asks its question on
    if ok:
        return verdict(
            "act-range", True, "integer activations with absmax 127 come through exactly: int8 127/absmax grid", nums
        )
    what = (
        "the activations are binarized with sign(x) (1 bit, every magnitude lost)"
        if name == "sign" and fits[name] <= LOOSE
        else f"the activations sit on a {name} grid"
        if fits[name] <= EXACT
        else f"the activations are not on the 127/absmax grid (misfit {fits['127/absmax']:.2%}; nearest {name})"
    )
    return verdict("act-range", False, f"{what}; reference clamp(round(x * 127/absmax), -128, 127)", nums)


def check_act_rounding(p: Probing) -> Check:
    levels = p.facts.get("act_levels")
    if levels is None:
        return skip("act-rounding", "the activations are on no known grid (see act-range)")
    if p.facts.get("norm_kind") == "other":
        return skip(
            "act-rounding", "exact .5 ties need the layer's norm to be an RMSNorm, a LayerNorm or none (see norm)"
        )
    w = dense(p.n, p.k)
    xf, xt = frac_token(p.k)[None], tie_token(p.k)[None]
    yf, yt = p.run(w, xf), p.run(w, xt)
    name_f, _, fits_f = best_candidate(
        yf, {m: p.ref(xf, w, act_rounding=m, levels=levels) for m in ("half-to-even", "none", "floor", "trunc")}
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
    if levels != 127:
        return verdict(
            "act-rounding",
            True,
            f"rounded (torch.round) on the layer's {levels}/absmax grid (see act-range); .5 ties not checkable "
            f"off the 127/absmax grid",
            nums,
        )
    if p.facts.get("norm_kind") == "layer":
        return verdict(
            "act-rounding",
            True,
            "rounded (torch.round); .5 ties not checkable behind a LayerNorm: torch's layer_norm computes the "
            "mean and variance with rounding of its own, which moves exact ties by an ulp",
            nums,
        )
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
    if (s := p.no_latent(name)) is not None:
        return s
    if p.facts.get("codes") == "none":
        return skip(name, "the weights are not quantized (see weight-codes): there is no weight scale to measure")
    if not p.facts.get("weight_scale_applied"):
        return skip(name, "the weight scale does not reach the output (see output-scale)")
    return None


def check_weight_scale(p: Probing) -> Check:
    if (s := _need_weight_scale(p, "weight-scale")) is not None:
        return s
    x = permuted(sign_token(p.k), 2)
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
    x, sg = permuted(sign_token(p.k), 4), signs(p.n, p.k)
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
    if (s := p.no_latent("weight-codes")) is not None:
        return s
    x, w = permuted(sign_token(p.k), 2), block_weights(p.n, p.k, CODES_BLOCK)
    y = p.run(w, x)
    name, _, fits = best_candidate(y, {c: p.ref(x, w, codes=c) for c in ("ternary", "binary", "none")})
    nums = {"misfit": {c: round(f, 5) for c, f in fits.items()}}
    ok = fits["ternary"] <= LOOSE
    p.facts["codes_ternary"] = ok
    p.facts["codes"] = name if fits[name] <= LOOSE else "other"
    if ok:
        return verdict("weight-codes", True, "ternary: weights at 0.36 beta give code 0, the others +-1", nums)
    what = {
        "binary": "binary codes (sign, no 0): weights at 0.36 beta count as +-1",
        "none": "the weights are not quantized (latent weights used as they are)",
        "ternary": "the codes are not the ternary reference",
    }[name if fits[name] <= LOOSE else "ternary"]
    return verdict("weight-codes", False, f"{what}; reference clamp(round(W/beta), -1, 1)", nums)


def check_weight_ties(p: Probing) -> Check:
    if (s := p.no_latent("weight-rounding-ties")) is not None:
        return s
    if not p.facts.get("codes_ternary"):
        return skip("weight-rounding-ties", "the codes are not ternary (see weight-codes)")
    x, w = permuted(sign_token(p.k), 2), block_weights(p.n, p.k, TIES_BLOCK)
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
