"""Check a BitLinear implementation against the BitNet b1.58 reference, one property at a time (the command
line is command.py: python -m bitnet_ref.conform MODULE:CLASS).

It builds the layer as CLASS(in_features, out_features, **init_kwargs), finds its latent weight (the one
floating-point parameter of shape (out, in)) or, for a layer that holds codes and a scale, a loader
(loaders.py: transformers' packed BitLinear and offline AutoBitLinear built in, ``load=`` for others), loads
probe weights into it and runs probe inputs through it,
comparing with the reference (bitnet_ref.quant: absmean ternary weights per tensor, per-token absmax int8
activations, the whole quantizer inside the STE, scales in float32; an RMSNorm with gain 1 right before the
activation quantizer, or none with --norm-outside, as in HF's AutoBitLinear and the 2B-4T model, whose norms
sit in the model). Each check names one property (see CHECKS) and reports pass, fail or not-checkable, the
numbers it measured, what the deviation does in training and the doctor's cause name where one fits.

The layer runs eagerly: torch.compile directives are ignored (``keep_compile=True`` keeps them; on a CPU each
new probe shape then compiles for many seconds), which runs the same Python code.

Exit status (ConformResult.exit_code): 0 every check passed (or could not apply), 1 deviations found, 2 bad
input (the module does not import, the class does not construct, no weight parameter) or a layer that cannot
run here at all (CUDA).

From Python:  result = check(MyLinear, in_features=128, out_features=64); print(result.render())
In a test suite:  assert_conforms(MyLinear)  raises AssertionError with the failing checks' lines.

What it is not: a proof. It checks the layer's training-time forward and gradients on crafted probes; a layer
may still deviate on inputs no probe covers, and layer-level checks cannot see model-level choices (a
quantized lm_head, the weight-decay schedule: the ablations quant-head and const-wd).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from bitnet_ref.conform import checks as C
from bitnet_ref.conform import gradients as G
from bitnet_ref.conform import layer_checks as L
from bitnet_ref.conform import norms as N
from bitnet_ref.conform import quantizers as QC
from bitnet_ref.conform.layer import ConformError, LayerUnderTest, ProbeError
from bitnet_ref.conform.loaders import auto_loader, resolve

# in order: later checks read facts earlier ones established (Probing.facts); (name, function, what it checks)
CHECKS = [
    ("forward", C.check_forward, "the layer builds, takes (1, in) and returns a finite (1, out)"),
    (
        "output-scale",
        C.check_output_scale,
        "output / reference = 1 on a unit-RMS token and +-3 weights, and "
        "doubling W doubles the output: beta and 127/absmax both undone",
    ),
    (
        "output-scale-width",
        C.check_output_scale_width,
        "the same ratio at in_features 4096: no width-dependent scale, no accumulator overflow",
    ),
    (
        "norm",
        N.check_norm,
        "an RMSNorm inside: 4x the input gives 1x the output, a mean offset is kept and magnitudes are not "
        "lost to sign(x) (with --norm-outside: 4x gives 4x)",
    ),
    (
        "norm-eps",
        N.check_norm_eps,
        "tokens of mean square eps and eps/1e4 come out as rsqrt(ms + eps) says (eps measured, and where it sits)",
    ),
    (
        "act-scale-per-token",
        QC.check_act_per_token,
        "a token's output is the same alone and batched with an outlier token (2-D batch, one 3-D sequence)",
    ),
    (
        "act-range",
        QC.check_act_range,
        "integer activations with absmax 127 come through exactly: the int8 "
        "127/absmax grid (128, 255, 63, 15, 7 and sign() recognised)",
    ),
    (
        "act-rounding",
        QC.check_act_rounding,
        "quarter values are rounded, exact .5 ties go to even (half-up, half-away, half-down, half-to-zero "
        "recognised); behind an RMSNorm or a LayerNorm",
    ),
    (
        "weight-codes",
        QC.check_weight_codes,
        "weights at 0.36 beta give code 0: ternary, not binary or unquantized (on sign tokens, so activation "
        "deviations cannot leak in)",
    ),
    (
        "weight-scale",
        QC.check_weight_scale,
        "beta = mean|W|, on weights whose median, max and rms differ from the mean by known ratios",
    ),
    (
        "weight-scale-per-tensor",
        QC.check_weight_per_tensor,
        "rows, and halves of the input columns, of |W| 0.75 and 1.25 share one beta",
    ),
    ("weight-rounding-ties", QC.check_weight_ties, "weights at exactly +-beta/2 give code 0 (torch.round)"),
    (
        "bias",
        L.check_bias,
        "the bias beside the weight is added after the matmul, unscaled (ignored, scaled by beta or by beta * "
        "absmax/127 recognised)",
    ),
    (
        "degenerate-input",
        L.check_degenerate,
        "zero, constant and 1e-30 tokens alone, in an all-zero batch and beside ordinary ones, all-zero "
        "weights and a zero weight row: finite outputs and gradients, 0 where the reference gives 0",
    ),
    (
        "grad-latent-weights",
        G.check_grad_weights,
        "every latent weight gets the STE gradient g^T x_hat at its size (beta = 3): code 0, +-1, exactly "
        "+-beta and clamped alike",
    ),
    (
        "grad-input",
        G.check_grad_input,
        "the input gradient is the STE through the norm's Jacobian, at its size, absmax elements included",
    ),
    ("latent-weights-kept", G.check_latent_kept, "forward and backward leave the latent weight as loaded"),
    ("bf16-input", L.check_bf16, "bf16 input gives the float32 output rounded to bf16: scales in float32"),
    ("output-dtype", L.check_output_dtype, "the output comes back in the input's dtype (float32, bf16)"),
    ("input-shapes", L.check_input_shapes, "2-D, 3-D and one-token-at-a-time inputs agree"),
    (
        "extra-parameters",
        L.check_extra_parameters,
        "the census of trainable tensors beyond the latent weight and bias: norm gains noted, anything the "
        "reference lacks (a norm bias, an unknown tensor) reported",
    ),
]
Check = C.Check
MIN_IN, IN_MULTIPLE, MIN_OUT = 64, 16, 8


@dataclass
class ConformResult:
    """The checks of one layer, in CHECKS order, and the settings they ran with."""

    target: str
    settings: dict
    checks: list = field(default_factory=list)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def runnable(self) -> bool:
        """False when the layer could not even run here (e.g. it needs CUDA): nothing was checked."""
        return bool(self.checks) and self.checks[0].status != "not-checkable"

    @property
    def conforms(self) -> bool:
        return self.runnable and not self.failures

    @property
    def exit_code(self) -> int:
        return 2 if not self.runnable else 1 if self.failures else 0

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "settings": self.settings,
            "conforms": self.conforms,
            "exit_code": self.exit_code,
            "failures": [c.name for c in self.failures],
            "checks": [c.as_dict() for c in self.checks],
        }

    def failure_lines(self) -> list:
        lines = []
        for c in self.failures:
            cause = f" [doctor cause: {c.cause}]" if c.cause else ""
            lines.append(f"{c.name}: {c.summary}{cause}")
        if not self.runnable:
            lines.append(f"not checkable: {self.checks[0].summary}" if self.checks else "nothing was checked")
        return lines

    def render(self) -> str:
        s = self.settings
        norm = "outside the layer" if s["norm_outside"] else f"RMSNorm inside, eps {s['norm_eps']:g}"
        loaded = f", codes loaded by {s['loader']}" if s.get("loader") else ""
        lines = [
            f"conformance of {self.target} (in={s['in_features']}, out={s['out_features']}, norm {norm}, "
            f"{s['device']}{loaded}) against the BitNet b1.58 reference"
        ]
        tag = {"pass": "pass", "fail": "FAIL", "not-checkable": "n/a "}
        for c in self.checks:
            lines.append(f"  {tag[c.status]}  {c.name:<24} {c.summary}")
            if c.status == "fail":
                lines.append(f"        {'':<24} in training: {c.effect}")
                if c.cause:
                    lines.append(f"        {'':<24} doctor cause: {c.cause}")
        n = len(self.failures)
        if not self.runnable:
            lines.append("verdict: not checkable here")
        elif n:
            lines.append(
                f"verdict: {n} deviation{'s' * (n > 1)} from the reference ({', '.join(c.name for c in self.failures)})"
            )
        else:
            lines.append("verdict: conforms to the reference on every probe")
        return "\n".join(lines)


def check(
    factory,
    in_features: int = 128,
    out_features: int = 64,
    *,
    init_kwargs: dict | None = None,
    norm_outside: bool = False,
    norm_eps: float = 1e-5,
    weight_name: str | None = None,
    device: str = "cpu",
    wide_in_features: int | None = None,
    load=None,
    keep_compile: bool = False,
) -> ConformResult:
    """Run every check on layers built as factory(in_features, out_features, **init_kwargs).

    norm_outside: the layer has no norm of its own (its model normalises before it); it is then compared
    with the reference without a norm. norm_eps: the eps of the reference RMSNorm. weight_name: the latent
    weight's parameter name when several (out, in) parameters exist. load: for a layer that holds codes, a
    built-in loader's name, "MODULE:FUNCTION" or a callable(layer, weight) (loaders.py); transformers' code
    classes get theirs without asking. keep_compile: keep torch.compile (default: run eagerly). Raises ConformError
    for bad input.
    """
    _validate(in_features, out_features, norm_eps, device)
    loader = resolve(load) or auto_loader(factory, dict(init_kwargs or {}))
    wide = wide_in_features or (4096 if in_features < 4096 else 2 * in_features)
    settings = {
        "in_features": in_features,
        "out_features": out_features,
        "norm_outside": norm_outside,
        "norm_eps": norm_eps,
        "device": str(device),
        "wide_in_features": wide,
        "init_kwargs": dict(init_kwargs or {}),
        "weight_name": weight_name,
        "loader": loader.name if loader else None,
        "keep_compile": keep_compile,
    }
    lut = LayerUnderTest(factory, in_features, out_features, init_kwargs, device, weight_name, loader)
    result = ConformResult(_label(factory), settings)
    with nullcontext() if keep_compile else _eager():
        return _run_all(result, lut, norm_outside, norm_eps, wide, device)


def _eager():
    """torch.compile directives ignored (torch >= 2.6); a no-op on older torch, which compiles as written."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance else nullcontext()


def _run_all(result, lut, norm_outside, norm_eps, wide, device) -> ConformResult:
    try:
        lut.build()  # bad input (no weight parameter, ...) raises ConformError here
    except ProbeError as e:
        if e.needs_gpu and torch.device(device).type == "cpu":
            result.checks.append(C.skip("forward", f"the layer needs a GPU, and this check runs on the CPU: {e}"))
            return result
        raise ConformError(f"could not construct the layer: {e}") from None
    probing = C.Probing(lut, None if norm_outside else norm_eps, wide)
    for name, fn, _ in CHECKS:
        if result.checks and not result.checks[0].status == "pass":
            result.checks.append(C.skip(name, "the layer does not run on an ordinary probe (see forward)"))
            continue
        result.checks.append(_run_one(name, fn, probing, device))
    return result


def _run_one(name, fn, probing, device) -> Check:
    try:
        return fn(probing)
    except ProbeError as e:
        if e.needs_gpu and torch.device(device).type == "cpu":
            return C.skip(name, f"the layer needs a GPU on this probe: {e}")
        return C.verdict(name, False, str(e))


def assert_conforms(factory, in_features: int = 128, out_features: int = 64, **kwargs) -> ConformResult:
    """check(...), then AssertionError listing the failing checks (one line each) unless the layer conforms."""
    result = check(factory, in_features, out_features, **kwargs)
    if not result.conforms:
        raise AssertionError(
            f"{result.target} deviates from the BitNet b1.58 reference:\n  " + "\n  ".join(result.failure_lines())
        )
    return result


def _validate(k, n, eps, device):
    for what, v, lo in (("in_features", k, MIN_IN), ("out_features", n, MIN_OUT)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConformError(f"{what} must be a whole number >= {lo}, got {v!r}")
    if k % IN_MULTIPLE:
        raise ConformError(
            f"in_features must be a multiple of {IN_MULTIPLE} (the probes pair and block the input features), got {k}"
        )
    if n % 2:
        raise ConformError(f"out_features must be even, got {n}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1e-2:
        raise ConformError(f"norm_eps must be a number in (0, 0.01), got {eps!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConformError(f"bad device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConformError("CUDA is not available on this machine; use --device cpu")


def _label(factory) -> str:
    mod, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    return f"{mod}:{name}" if mod and name else repr(factory)
