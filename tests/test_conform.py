"""The conformance checker: each deviating layer fails the check that names it and no other; the CLI; bad input."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import conform_variants as V
import pytest
import torch

from bitnet_ref.conform import checker as conform
from bitnet_ref.conform import command
from bitnet_ref.conform.harness import exact_token, grid_token, simulate, tie_token
from bitnet_ref.conform.layer import ConformError
from bitnet_ref.model import BitLinear

ablated = lambda name: partial(BitLinear, ablate=[name])

# (layer, the checks it must fail (exactly), a phrase of the failing summary, the doctor cause)
CASES = {
    "reference BitLinear": (BitLinear, set(), None, None),
    "FAQ float form": (V.Faq, set(), None, None),
    "bias added unscaled": (V.BiasAdded, set(), None, None),
    "ablation quant-head (model-level: the BitLinear is the reference)": (ablated("quant-head"), set(), None, None),
    "ablation const-wd (schedule-level)": (ablated("const-wd"), set(), None, None),
    "ablation no-ste": (ablated("no-ste"), {"grad-latent-weights"}, "weight.grad is None", "missing_ste"),
    "ablation clamp-ste": (ablated("clamp-ste"), {"grad-latent-weights"}, "STE stops at the clamp", "clamp_ste"),
    "ablation no-subln": (ablated("no-subln"), {"norm"}, "no norm inside", "no_subln"),
    "ablation no-dequant": (ablated("no-dequant"), {"output-scale"}, "not multiplied back", "missing_dequant"),
    "binary codes": (V.BinaryCodes, {"weight-codes"}, "binary codes", None),
    "max scale": (V.MaxScale, {"weight-scale"}, "max of |W|", None),
    "median scale": (V.MedianScale, {"weight-scale"}, "median of |W|", None),
    "per-row scale": (V.PerRowScale, {"weight-scale-per-tensor"}, "per output row", None),
    "per-group scale": (V.GroupScale, {"weight-scale-per-tensor"}, "group of input columns", None),
    "weights half-up": (V.HalfUpWeights, {"weight-rounding-ties"}, "round half-up", None),
    "weights without STE": (V.NoWeightSTE, {"grad-latent-weights"}, "no straight-through", "missing_ste"),
    "hardtanh weight STE": (V.HardtanhWeightSTE, {"grad-latent-weights"}, "code +-1 get no gradient", "clamp_ste"),
    "activations not rounded": (V.NoActRounding, {"act-rounding"}, "not rounded", None),
    "activation ties away": (V.AwayActs, {"act-rounding"}, "half-away", None),
    "per-tensor activation scale": (
        V.PerTensorAct,
        {"act-scale-per-token"},
        "shared across tokens",
        "parity_mismatch",
    ),
    "128/absmax activations": (V.ActRange128, {"act-range"}, "128/absmax grid", None),
    "hardtanh activation STE": (V.HardtanhActSTE, {"grad-input"}, "absmax element", None),
    "activations without STE": (V.NoActSTE, {"grad-input"}, "no straight-through", "grad_flow"),
    "bf16 scales": (V.Bf16Scales, {"bf16-input"}, "in bf16", None),
    "no eps (NaN on a zero row)": (V.NoEps, {"degenerate-input"}, "NaN/inf output on the all-zero token", None),
    "no norm": (V.NoNorm, {"norm"}, "no norm inside", "no_subln"),
    "LayerNorm": (V.LayerNormInside, {"norm"}, "subtracts the mean", None),
    "norm eps 1e-6": (V.NormEps1e6, {"norm-eps"}, "measured 1e-06", None),
    "norm eps 1e-8": (V.NormEps1e8, {"norm-eps"}, "measured 1e-08", None),
    "norm eps 1e-3 (moves the exact ties: those are not judged)": (V.NormEps1e3, {"norm-eps"}, "measured 0.001", None),
    "forward and STE on different tensors": (V.STEBypassesNorm, {"grad-input"}, "bypasses the norm", None),
    "activation scale not undone": (
        V.MissingActDequant,
        {"output-scale"},
        "activation scale is not undone",
        "missing_dequant",
    ),
    "weight scale divided": (V.InverseWeightScale, {"output-scale"}, "divided", "missing_dequant"),
    # F.normalize * dim**-0.5: 1/in_features of the scale, and F.normalize's eps (1e-12 on the L2 norm) is ~0
    "scale 1/in_features": (
        V.ScaleOverWidth,
        {"output-scale", "output-scale-width", "norm-eps"},
        "1/in_features",
        None,
    ),
    "bias scaled by beta": (V.BiasScaled, {"bias"}, "multiplied by the weight scale", None),
    "bias ignored": (V.BiasIgnored, {"bias"}, "ignored", None),
    "3-D input only": (V.Only3D, {"input-shapes"}, "expected a 3-D", None),
    "3-D flattened in the wrong order": (V.WrongFlatten, {"input-shapes"}, "3-D input", "parity_mismatch"),
    "latent weights overwritten": (V.OverwritesLatent, {"latent-weights-kept"}, "overwritten by their quantized", None),
    # layers whose norm lives in the model, checked with norm_outside: they conform except that they hand
    # codes * beta to the matmul in the input dtype, so under bf16 beta is rounded to bf16
    "HF AutoBitLinear online (norm outside)": (
        V.HFOnline,
        {"bf16-input"},
        "the weight scale is held in bf16",
        None,
        {"norm_outside": True},
    ),
    "1bitLLM BitLinear (norm outside)": (
        V.OneBitLLM,
        {"bf16-input"},
        "the weight scale is held in bf16",
        None,
        {"norm_outside": True},
    ),
}

# the classes the checker missed or misread on public layers (issue 26), one layer of ours for each; a layer
# whose deviation has a second, genuine consequence lists both checks
MISSED = {
    "weight gradient beta times the STE's": (V.WeightGradTimesBeta, {"grad-latent-weights"}, "(= beta)", None),
    "input gradient carrying absmax/127": (V.InputGradTimesGamma, {"grad-input"}, "(= gamma = absmax/127)", None),
    "per-tensor activation scale, no floor: 0/0 on an all-zero batch": (
        V.PerTensorActNoEps,
        {"act-scale-per-token", "degenerate-input"},
        "shared across tokens",
        "parity_mismatch",
    ),
    "LayerNorm, activations never rounded": (
        V.LayerNormNoRounding,
        {"norm", "act-rounding"},
        "subtracts the mean",
        None,
    ),
    "affine LayerNorm on a square layer, bias ignored": (
        V.AffineLayerNorm,
        {"norm", "bias", "extra-parameters"},
        "subtracts the mean",
        None,
        {"in_features": 128, "out_features": 128},
    ),
    "affine LayerNorm on a square layer, no bias": (
        V.AffineLayerNorm,
        {"norm", "extra-parameters"},
        "subtracts the mean",
        None,
        {"in_features": 128, "out_features": 128, "init_kwargs": {"bias": False}},
    ),
    # sign(1e-30) = 1: the tiny token comes out whole, a genuine second finding
    "sign() activations, no norm": (
        V.SignActs,
        {"output-scale", "act-range", "degenerate-input"},
        "as sign(x) activations give it",
        None,
    ),
    "float32 output for bf16 input": (V.UpcastOutput, {"output-dtype"}, "bf16 input gives a float32 output", None),
    # the coupling also moves the input gradient of a batch, a genuine second finding
    "a norm over the sequence": (
        V.SequenceNorm,
        {"act-scale-per-token", "grad-input"},
        "normalises by statistics taken across",
        "parity_mismatch",
    ),
    "bias inside the dequantization": (
        V.BiasInsideDequant,
        {"bias"},
        "weight scale and the token's activation scale",
        None,
    ),
    "unquantized weights": (V.Unquantized, {"weight-codes"}, "not quantized", None),
    "eps added to the RMS": (V.EpsOnRms, {"norm-eps"}, "added to the RMS", None),
    "a faithful code-holding layer through a user's loader": (
        V.PackedCodes,
        set(),
        None,
        None,
        {"load": V.load_packed_codes},
    ),
}


@pytest.mark.parametrize("case", list(CASES) + list(MISSED))
def test_each_deviation_fails_its_own_check_and_no_other(case):
    factory, expected, phrase, cause, *kwargs = CASES.get(case) or MISSED[case]
    result = conform.check(factory, **(kwargs[0] if kwargs else {}))
    failed = {c.name for c in result.failures}
    assert failed == expected, result.render()
    assert result.exit_code == (1 if expected else 0)
    if phrase:
        first = result.failures[0]
        assert phrase in first.summary, first.summary
        assert first.cause == cause and first.effect
    for c in result.checks:
        assert c.status in ("pass", "fail", "not-checkable") and c.summary


def test_every_check_is_failed_by_some_variant():
    caught = set().union(*(case[1] for case in [*CASES.values(), *MISSED.values()])) | {"forward"}  # bad input
    assert caught == {name for name, _, _ in conform.CHECKS}


def test_not_checkable_only_where_a_finding_makes_the_question_moot():
    skipped = lambda f: {c.name for c in conform.check(f).checks if c.status == "not-checkable"}
    assert skipped(BitLinear) == set()
    assert skipped(V.BinaryCodes) == {"weight-rounding-ties"}  # ties of codes that are not ternary
    assert skipped(ablated("no-dequant")) == {"norm-eps", "weight-scale", "weight-scale-per-tensor"}
    assert skipped(V.NoNorm) == {"norm-eps"}


@pytest.mark.parametrize("k,n", [(64, 8), (256, 32)])
def test_reference_conforms_at_other_sizes(k, n):
    assert conform.check(BitLinear, k, n).conforms


def test_norm_outside_compares_with_the_reference_without_a_norm():
    assert conform.check(ablated("no-subln"), norm_outside=True).conforms
    assert conform.check(V.NoNorm, norm_outside=True).conforms
    res = conform.check(BitLinear, norm_outside=True)
    assert {c.name for c in res.failures} == {"norm"}
    assert "--norm-outside" in res.failures[0].summary
    assert next(c for c in res.checks if c.name == "norm-eps").status == "not-checkable"


def test_norm_eps_is_the_users_to_state():
    assert conform.check(V.NormEps1e6, norm_eps=1e-6).conforms
    res = conform.check(V.NormEps1e3, norm_eps=1e-3)
    assert res.conforms and "ties not checkable" in next(c for c in res.checks if c.name == "act-rounding").summary
    res = conform.check(BitLinear, norm_eps=1e-6)
    assert {c.name for c in res.failures} == {"norm-eps"} and "measured 1e-05" in res.failures[0].summary


def test_simulate_is_the_package_reference():
    torch.manual_seed(0)
    layer = BitLinear(128, 64)
    for x in (torch.randn(3, 128), grid_token(128)[None], tie_token(128)[None]):
        assert torch.allclose(layer(x).double(), simulate(x, layer.weight.detach()), rtol=1e-5, atol=1e-6)


def test_exact_tokens_are_exact():
    for k in (64, 128, 4096):
        for x in (grid_token(k), tie_token(k), exact_token(k, peak=96, avoid=(48,))):
            ms = float(x.pow(2).mean())
            assert float(x.sum()) == 0 and ms >= 256 and 4 ** round(torch.log2(torch.tensor(ms)).item() / 2) == ms
    xn = BitLinear(128, 8).norm(tie_token(128)[None])  # RMSNorm then 127/absmax gives back the half-integers
    assert torch.equal(xn * (127 / xn.abs().max()), tie_token(128)[None])


def test_assert_conforms():
    assert conform.assert_conforms(BitLinear).conforms
    with pytest.raises(AssertionError, match=r"weight-scale: output / absmean reference = 1\.505"):
        conform.assert_conforms(V.MaxScale)
    with pytest.raises(AssertionError, match="not checkable"):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        conform.assert_conforms(V.NeedsCuda)


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,status,phrase",
    [
        (V.ForwardRaises, "fail", "raised RuntimeError: mat1 and mat2"),
        (V.WrongShape, "fail", "returned shape (1, 63), expected (1, 64)"),
        (V.NanOutput, "fail", "NaN/inf in the output"),
    ],
)
def test_a_broken_forward_is_a_finding(factory, status, phrase):
    res = conform.check(factory)
    assert res.checks[0].status == status and phrase in res.checks[0].summary
    assert all(c.status == "not-checkable" for c in res.checks[1:]) and res.exit_code == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only machine")
def test_a_layer_that_needs_cuda_is_not_checkable_here():
    res = conform.check(V.NeedsCuda)
    assert not res.runnable and res.exit_code == 2 and "needs a GPU" in res.checks[0].summary
    assert "CUDA" in res.checks[0].summary


@pytest.mark.parametrize(
    "factory,kwargs,phrase",
    [
        (V.ConstructorRaises, {}, "could not construct the layer: ConstructorRaises(128, 64) raised ValueError"),
        (V.NoWeight, {}, "no floating-point parameter of shape (out, in) = (64, 128)"),
        (V.TwoWeights, {}, "weight, shadow; name the latent weight with --weight-name"),
        (V.TwoWeights, {"weight_name": "nope"}, "no parameter named 'nope'"),
        (BitLinear, {"in_features": 100}, "multiple of 16"),
        (BitLinear, {"out_features": 4}, "out_features must be a whole number >= 8"),
    ],
)
def test_bad_input_raises_one_line(factory, kwargs, phrase):
    with pytest.raises(ConformError) as e:
        conform.check(factory, **kwargs)
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_weight_name_picks_the_latent_weight():
    res = conform.check(V.TwoWeights, weight_name="weight")  # the other (out, in) tensor is reported, not used
    assert {c.name for c in res.failures} == {"extra-parameters"}
    assert (
        "shadow (64, 128): a tensor the reference has no counterpart for (unused by forward)" in res.failures[0].summary
    )


# ---- command line ---------------------------------------------------------------------------------------------


def test_cli_reports_a_deviating_layer(capsys):
    assert command.main(["conform_variants:MaxScale"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  weight-scale" in out and "in training:" in out and "verdict: 1 deviation" in out
    assert command.main(["conform_variants:MaxScale", "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    scale = next(c for c in d["checks"] if c["name"] == "weight-scale")
    assert d["failures"] == ["weight-scale"] and scale["numbers"]["output_ratio"] == pytest.approx(1.505, abs=1e-3)


def test_cli_options_reach_the_checker(capsys):
    assert (
        command.main(
            [
                "bitnet_ref.model:BitLinear",
                "--init-kwargs",
                '{"ablate": ["no-subln"]}',
                "--norm-outside",
                "--in",
                "64",
                "--out",
                "16",
            ]
        )
        == 0
    )
    assert "in=64, out=16, norm outside the layer" in capsys.readouterr().out
    assert command.main(["conform_variants:TwoWeights", "--weight-name", "weight"]) == 1


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["no_such_module_xyz:Layer"], "cannot import no_such_module_xyz: ModuleNotFoundError"),
        (["conform_variants:Nope"], "has no attribute 'Nope'"),
        (["conform_variants"], "expected MODULE:CLASS"),
        (["conform_variants:EPS"], "is a float, not a class"),
        (["conform_variants:ConstructorRaises"], "could not construct"),
        (["conform_variants:NoWeight"], "no floating-point parameter"),
        (["bitnet_ref.model:BitLinear", "--init-kwargs", '{"bogus": 1}'], "unexpected keyword argument 'bogus'"),
        (["bitnet_ref.model:BitLinear", "--init-kwargs", "{bad"], "not valid JSON"),
        (["bitnet_ref.model:BitLinear", "--init-kwargs", "[1]"], "must be a JSON object"),
        (["bitnet_ref.model:BitLinear", "--in", "100"], "multiple of 16"),
        (["bitnet_ref.model:BitLinear", "--in", "8"], "must be >= 64"),
        (["bitnet_ref.model:BitLinear", "--norm-eps", "0"], "must be in (0, 0.01)"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, phrase, capsys):
    try:
        code = command.main(argv)
    except SystemExit as e:  # argparse's own errors (OneLineParser: one line, exit 2)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_import_error_inside_the_module(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_layer_mod.py").write_text("import torch\nraise RuntimeError('half-written file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert command.main(["broken_layer_mod:Layer"]) == 2
    assert "cannot import broken_layer_mod: RuntimeError: half-written file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_as_a_subprocess_exit_codes_and_no_traceback():
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "bitnet_ref.conform", *a],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        timeout=120,
    )
    bad = run("conform_variants:BiasIgnored")
    assert bad.returncode == 1 and "FAIL  bias" in bad.stdout and not bad.stderr
    nothing = run("conform_variants:ConstructorRaises")
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: could not construct")
    assert "Traceback" not in nothing.stderr + bad.stderr


def test_check_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    conform.check(BitLinear, 64, 8)
    assert torch.equal(torch.rand(3), expected)


# ---- layers that hold codes; the command line's exit-2 paths (issue 26) ------------------------------------------


def test_transformers_code_layers_are_checked_through_their_loaders():
    bitnet = pytest.importorskip("transformers.integrations.bitnet")
    packed = conform.check(bitnet.BitLinear, norm_outside=True)  # uint8 codes, weight_scale = 1/beta
    assert packed.settings["loader"] == "hf-bitlinear"
    # inference-only: the input gradient comes only through the absmax scale; the activation scale is computed
    # in the module dtype, so bf16 moves int8 codes
    assert {c.name for c in packed.failures} == {"grad-input", "bf16-input"}, packed.render()
    offline = conform.check(bitnet.AutoBitLinear, norm_outside=True)  # codes, weight_scale = beta, bias=True
    assert offline.settings["loader"] == "hf-autobitlinear-offline"
    assert {c.name for c in offline.failures} == {"bias", "bf16-input"}, offline.render()
    assert "multiplied by the weight scale" in next(c for c in offline.failures if c.name == "bias").summary
    grad = next(c for c in offline.checks if c.name == "grad-input")
    assert grad.status == "pass" and "through the norm" not in grad.summary  # the norm is outside


def test_a_users_loader_from_the_command_line(capsys):
    assert command.main(["conform_variants:PackedCodes", "--load", "conform_variants:load_packed_codes"]) == 0
    assert "codes loaded by conform_variants:load_packed_codes" in capsys.readouterr().out
    assert command.main(["conform_variants:PackedCodes"]) == 2  # no latent weight, no loader
    assert "needs a loader (--load" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["conform_variants:NeedsBias"], """pass the rest with --init-kwargs '{"bias": false}'"""),
        (["conform_variants:PackedCodes", "--load", "nope"], "unknown loader 'nope': use one of hf-bitlinear"),
        (["conform_variants:PackedCodes", "--load", "bitnet_ref.quant:weight_quant"], "must take (layer, weight)"),
        (["conform_variants:Faq", "--in", "100"], "multiple of 16"),
        (["conform_variants:Faq", "--norm-eps", "0"], "must be in (0, 0.01)"),
    ],
)
def test_json_prints_an_object_for_exit_2_too(argv, phrase, capsys):
    assert command.main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["exit_code"] == 2 and d["conforms"] is False and phrase in d["error"] and phrase in err
    assert err.count("\n") == 1
