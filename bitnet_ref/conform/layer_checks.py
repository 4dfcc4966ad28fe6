"""The layer-level checks of the conformance checker: bias, degenerate inputs, dtypes, shapes and the parameters.

These look at what a layer does around its quantizers: whether its bias is added after the dequantization,
whether all-zero, tiny and constant tokens (alone, in an all-zero batch, and beside ordinary tokens) and
all-zero weights come through finite, whether bf16 input gives the float32 result and comes back as bf16,
whether the batch shape changes a token's output, and which trainable tensors it holds beyond the latent
weight and bias (the census: an all-ones gain at initialisation is invisible to every other probe).
"""

from __future__ import annotations

import torch

from bitnet_ref.conform.checks import (
    BF16_BIAS,
    BF16_NOISE,
    SCALE,
    SHAPE,
    Check,
    Probing,
    finite,
    fmt,
    named_factor,
    near,
    verdict,
)
from bitnet_ref.conform.harness import (
    dense,
    exact_token,
    grid_token,
    misfit,
    normal_token,
    permuted,
    ratio,
    rms_norm,
    unit_token,
)
from bitnet_ref.conform.layer import ProbeError

# ---- bias --------------------------------------------------------------------------------------------------------


def check_bias(p: Probing) -> Check:
    if not p.lut.has_bias():
        return verdict("bias", True, "no bias parameter, as in the reference")
    x, w, beta = unit_token(p.k)[None], dense(p.n, p.k, 3.0), 3.0
    absmax = float(rms_norm(x, p.norm_eps).abs().max())
    b = 0.25 * ((torch.arange(p.n) % 7) - 3.0) + 0.125
    d = (p.run(w, x, bias=b) - p.run(w, x))[0]
    r, fit = ratio(d, b), misfit(d, b)
    nums = {"output_change_over_bias": round(r, 5), "misfit": round(fit, 5), "beta": beta, "token_absmax": absmax}
    if near(r, 1) and fit <= SCALE:
        return verdict("bias", True, "the bias is added after the matmul, unscaled (the official model has none)", nums)
    factors = {
        "beta": beta,
        "1/beta": 1 / beta,
        "beta*absmax/127": beta * absmax / 127,
        "beta*absmax/128": beta * absmax / 128,
        "absmax/127": absmax / 127,
        "127/absmax": 127 / absmax,
        "1/(beta*absmax/127)": 127 / (beta * absmax),
    }
    name = named_factor(r, factors, 0.003) if fit <= SCALE else None
    what = {
        None: f"the output moves by {fmt(r)} x bias (misfit {fit:.2%}), a factor matching no scale of the layer",
        "beta": f"the bias is multiplied by the weight scale (x{r:.3g}, beta = {beta:g}): it is added before the "
        "dequantization, (codes @ x + bias) * beta",
        "1/beta": f"the bias is divided by the weight scale (x{r:.3g}, beta = {beta:g})",
        "beta*absmax/127": f"the bias is multiplied by the weight scale and the token's activation scale "
        f"(x{r:.4g} = beta * absmax/127): it is added to the integer accumulator, before the dequantization, so "
        "its effect changes from token to token",
        "beta*absmax/128": f"the bias is multiplied by the weight scale and the token's activation scale "
        f"(x{r:.4g} = beta * absmax/128): it is added before the dequantization, so its effect changes from "
        "token to token",
        "absmax/127": f"the bias is multiplied by the token's activation scale (x{r:.4g} = absmax/127)",
        "127/absmax": f"the bias is divided by the token's activation scale (x{r:.4g} = 127/absmax)",
        "1/(beta*absmax/127)": f"the bias is divided by the weight and activation scales (x{r:.4g})",
    }[name]
    if abs(r) < 1e-3 and not d.any():
        what = "the bias parameter is ignored (forward never adds it: a trained bias is lost)"
    return verdict("bias", False, f"{what}; reference: y + bias", nums)


# ---- degenerate input ----------------------------------------------------------------------------------------------

SMALL_ABSMAX = 1e-4  # above the reference's 1e-5 scale floor: quantized like any token


def _problems_batched(p: Probing, w) -> list:
    g = grid_token(p.k)
    x = torch.stack([g, torch.zeros(p.k), torch.full((p.k,), 3.0), 1e-30 * g])
    names = ["ordinary", "all-zero", "constant", "tiny (1e-30)"]
    y, gx, gw = p.run(w, x, grad=torch.ones(4, p.n))
    ref = p.ref(x, w)
    scale = float(y[0].abs().max()) if finite(y[0]) else 1.0
    problems = []
    for i, name in enumerate(names):
        if not finite(y[i]):
            problems.append(f"NaN/inf output on the {name} token")
        elif not ref[i].any() and float(y[i].abs().max()) > 1e-6 * scale:
            problems.append(
                f"nonzero output ({float(y[i].abs().max()):.3g}) on the {name} token, where the reference gives 0"
            )
    for what, t in (("input", gx), ("weight", gw)):
        if t is not None and not finite(t):
            problems.append(f"NaN/inf {what} gradient with zero/constant/tiny tokens in the batch")
    return problems, scale


def _problems_alone(p: Probing, w, scale) -> list:
    """Degenerate tokens with no ordinary token beside them: a scale over the batch then has nothing to hold on."""
    z, problems = torch.zeros(p.k), []
    cases = [
        ("an all-zero token alone", z[None]),
        ("a batch of three all-zero tokens", torch.stack([z, z, z])),
        ("a sequence of three all-zero tokens (1, 3, in)", torch.stack([z, z, z])[None]),
        ("a tiny (1e-30) token alone", 1e-30 * grid_token(p.k)[None]),
    ]
    for name, x in cases:
        y, gx, _ = p.run(w, x, grad=torch.ones(*x.shape[:-1], p.n))
        if not finite(y):
            problems.append(f"NaN/inf output for {name}")
        elif float(y.abs().max()) > 1e-6 * scale:
            problems.append(f"nonzero output ({float(y.abs().max()):.3g}) for {name} (reference: 0)")
        elif gx is not None and not finite(gx):
            problems.append(f"NaN/inf input gradient for {name}")
    return problems


def _problem_small_token(p: Probing, w) -> list:
    """Norm outside only (inside, the norm lifts the token): a token of absmax 1e-4 is quantized like any other."""
    g = grid_token(p.k)
    x = torch.stack([g, g * (SMALL_ABSMAX / 127)])
    y, ref = p.run(w, x[:1]), p.ref(x, w)
    ys = p.run(w, x[1:])
    r_ord, r_small = ratio(y, ref[:1]), ratio(ys, ref[1:])
    if finite(ys) and r_ord and not near(r_small / r_ord, 1, 0.01):
        return [
            f"a token of absmax {SMALL_ABSMAX:g} comes out x{r_small / r_ord:.3g} of the reference's (an ordinary "
            f"token x1): its scale is floored above the reference's 1e-5 absmax floor, or floored for the codes "
            f"but not for the dequantization"
        ]
    return []


def check_degenerate(p: Probing) -> Check:
    w = dense(p.n, p.k)
    problems, scale = _problems_batched(p, w)
    problems += _problems_alone(p, w, scale)
    if not p.inside and p.facts.get("norm_kind") == "none":  # a norm the layer should not have lifts the token
        problems += _problem_small_token(p, w)
    yz = p.run(torch.zeros(p.n, p.k), grid_token(p.k)[None])
    if not finite(yz) or yz.abs().max() > 0:
        problems.append(
            f"all-zero weights give {'NaN/inf' if not finite(yz) else 'a nonzero output'} "
            f"(reference: 0; beta floored at 1e-5)"
        )
    wr = w.clone()
    wr[0] = 0
    yr = p.run(wr, grid_token(p.k)[None])
    if not finite(yr) or yr[0, 0] != 0:
        problems.append(f"an all-zero weight row gives {'NaN/inf' if not finite(yr) else 'a nonzero output'}")
    if problems:
        return verdict("degenerate-input", False, "; ".join(problems), {"problems": len(problems)})
    return verdict(
        "degenerate-input",
        True,
        "zero, constant and tiny tokens (alone, in an all-zero batch and beside ordinary ones), zero weights "
        "and a zero weight row: finite, and 0 where the reference gives 0",
    )


# ---- dtypes and shapes ----------------------------------------------------------------------------------------------


def _bf16_off(v: float) -> float:
    """Relative error of v rounded to bf16."""
    return float(torch.tensor(v).to(torch.bfloat16).float()) / v - 1


BF16_CODE_STEP = 6e-3  # one int8 code step is >= 1/127 = 0.79% of an element; bf16 roundings stay <= 0.4%


def _bf16_code_step(p: Probing, x, note) -> float:
    """The largest relative change of one dequantized activation element between float32 and bf16 input, the
    mean ratio divided out: each output row reads one input element (a selection weight), so an int8 code that
    bf16 arithmetic moves by one step shows as >= 0.79%, where rounding x_hat, beta or the output to bf16 alone
    moves an element by <= 0.4%."""
    w = torch.zeros(p.n, p.k)
    w[torch.arange(p.n), torch.arange(p.n)] = torch.where(torch.arange(p.n) % 2 == 0, 1.0, -1.0)
    y32 = p.run(w, x)
    y16 = p.run(w, x, dtype=torch.bfloat16, autocast="autocast" in note)
    big = y32.abs() > 0.1 * y32.abs().max()
    r = y16[big] / y32[big]
    return float((r / r.mean() - 1).abs().max())


def check_bf16(p: Probing) -> Check:
    """The same exact bf16-representable tokens in bf16 and in float32: only the scales' precision can differ.

    The absmax 96 over an exact power-of-two rms puts gamma = absmax/127 0.25% off a bf16 value and 127/absmax
    0.2% off one, both rounding up the output; beta = 0.3192 and 1/beta round so that a beta held in bf16 and a
    1/beta held in bf16 (transformers' packed BitLinear divides by it) both round it down, by 0.26% and 0.25%.
    A scale held in bf16 shows as a bias in the mean (bf16 output / float32 output rounded to bf16), which is 0
    for float32 scales, and its sign says which side it is on. An int8 code that bf16 arithmetic moves shows on
    single elements (_bf16_code_step).
    """
    x = permuted(exact_token(p.k, peak=96, avoid=(48,)), 16)
    beta = 0.3192
    w = dense(p.n, p.k, beta)
    y32, note = p.run(w, x), ""
    try:
        y16 = p.run(w, x, dtype=torch.bfloat16)
    except ProbeError as e:
        try:
            y16, note = p.run(w, x, dtype=torch.bfloat16, autocast=True), " (ran under bf16 autocast)"
        except ProbeError:
            return verdict("bf16-input", False, f"bf16 input fails, with and without autocast: {e}")
    if not finite(y16):
        return verdict("bf16-input", False, "NaN/inf in the output for bf16 input" + note)
    ref16 = y32.to(torch.bfloat16).double()  # what float32 scales give, rounded once at the end
    big = ref16.abs() > 0.1 * ref16.abs().max()
    bias = float((y16[big] / ref16[big]).mean()) - 1
    noise = float((y16 - ref16).norm() / ref16.norm().clamp_min(1e-30))
    step = _bf16_code_step(p, x, note)
    w_off, inv_off = _bf16_off(beta), -_bf16_off(1 / beta)
    nums = {
        "mean_bf16_over_f32_minus_1": float(f"{bias:.3g}"),
        "relative_error_vs_f32_rounded": round(noise, 5),
        "largest_element_change": round(step, 5),
        "expected_if_beta_in_bf16": float(f"{w_off:.3g}"),
        "expected_if_1/beta_in_bf16": float(f"{inv_off:.3g}"),
    }
    found = []
    if step > BF16_CODE_STEP:
        found.append(
            f"an activation element moves by {step:.2%} (an int8 code step; bf16 rounding alone moves one by "
            f"<= 0.4%): the activation scale 127/absmax or x * scale is computed in bf16, so codes come out one off"
        )
    if abs(bias) > BF16_BIAS:
        mean = f"the output is 1{bias:+.2%} of the float32 one on average"
        if bias < 0 and min(abs(bias - w_off), abs(bias - inv_off)) <= 1.5 * BF16_BIAS:
            found.append(
                f"{mean} (beta or 1/beta in bf16 alone: 1{w_off:+.2%}, 1{inv_off:+.2%}): the weight scale is held "
                f"in bf16 (beta, codes * beta, or a weight_scale = 1/beta)"
            )
        elif bias > 0 or not found:
            found.append(
                f"{mean} (a bf16 activation scale alone: about +0.2%): the activation scale (absmax/127 or "
                f"127/absmax) or the quantized activations are held in bf16"
            )
    if not found and noise > BF16_NOISE:
        found.append(
            f"the output is {noise:.2%} off the float32 one rounded to bf16: the matmul or its accumulator runs in bf16"
        )
    if found:
        return verdict(
            "bf16-input", False, "under bf16 input " + "; ".join(found) + f"; reference: scales in float32{note}", nums
        )
    how = "exactly" if noise == 0 else f"within {noise:.1e} (mean ratio 1{bias:+.1e})"
    return verdict(
        "bf16-input", True, f"bf16 input gives the float32 output rounded to bf16, {how}: scales in float32{note}", nums
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


def check_output_dtype(p: Probing) -> Check:
    """The output comes back in the input's dtype: float32 for float32, bf16 for bf16 (under autocast too)."""
    x, w = grid_token(p.k)[None], dense(p.n, p.k)
    p.run(w, x)
    out32 = p.lut.last_dtype
    note = ""
    try:
        p.run(w, x, dtype=torch.bfloat16)
    except ProbeError:
        try:
            p.run(w, x, dtype=torch.bfloat16, autocast=True)
            note = " (under bf16 autocast, as bf16 input alone fails)"
        except ProbeError as e:
            return verdict("output-dtype", False, f"bf16 input fails, with and without autocast: {e}")
    out16 = p.lut.last_dtype
    nums = {
        "float32_input_gives": str(out32).replace("torch.", ""),
        "bf16_input_gives": str(out16).replace("torch.", ""),
    }
    bad = [
        f"{a} input gives a {str(b).replace('torch.', '')} output"
        for a, b, want in (("float32", out32, torch.float32), ("bf16", out16, torch.bfloat16))
        if b != want
    ]
    if bad:
        return verdict("output-dtype", False, "; ".join(bad) + note + "; reference: the input's dtype", nums)
    return verdict("output-dtype", True, "the output comes back in the input's dtype (float32, bf16)" + note, nums)


def check_extra_parameters(p: Probing) -> Check:
    """The census of trainable tensors beyond the latent weight and bias, with what each one is."""
    found = p.lut.extra_parameters(dense(p.n, p.k), grid_token(p.k)[None])
    if not found:
        return verdict("extra-parameters", True, "no trainable tensors beyond the latent weight and bias")
    desc = lambda e: f"{e['name']} {tuple(e['shape'])}: {e['kind']}" + ("" if e["used"] else " (unused by forward)")
    nums = {"parameters": [{**e, "shape": list(e["shape"])} for e in found]}
    gains = [e for e in found if e["kind"].startswith("a norm gain") and e["used"]]
    others = [e for e in found if e not in gains]
    if not others:
        return verdict(
            "extra-parameters",
            True,
            "beyond the latent weight: " + "; ".join(desc(e) for e in gains) + " (the reference model's norms have "
            "a gain too; at 1 every probe sees it as absent)",
            nums,
        )
    return verdict(
        "extra-parameters",
        False,
        "trainable tensors the reference lacks: "
        + "; ".join(desc(e) for e in others)
        + ("; and " + "; ".join(desc(e) for e in gains) if gains else ""),
        nums,
    )
