"""Check a BitLinear implementation against the BitNet b1.58 reference, one property at a time.

    python -m bitnet_ref.conform MODULE:CLASS [--init-kwargs JSON] [--in N] [--out N] [--norm-outside]
                                 [--norm-eps EPS] [--weight-name NAME] [--device cpu|cuda] [--json]

It builds the layer as CLASS(in_features, out_features, **init_kwargs), finds its latent weight (the one
floating-point parameter of shape (out, in)), loads probe weights into it and runs probe inputs through it,
comparing with the reference (bitnet_ref.quant: absmean ternary weights per tensor, per-token absmax int8
activations, the whole quantizer inside the STE, scales in float32; an RMSNorm with gain 1 right before the
activation quantizer, or none with --norm-outside, as in HF's AutoBitLinear and the 2B-4T model, whose norms
sit in the model). Each check names one property (see CHECKS) and reports pass, fail or not-checkable, the
numbers it measured, what the deviation does in training and the doctor's cause name where one fits.

Exit status: 0 every check passed (or could not apply), 1 deviations found, 2 bad input (the module does not
import, the class does not construct, no weight parameter) or a layer that cannot run here at all (CUDA).

From Python:  result = check(MyLinear, in_features=128, out_features=64); print(result.render())
In a test suite:  assert_conforms(MyLinear)  raises AssertionError with the failing checks' lines.

What it is not: a proof. It checks the layer's training-time forward and gradients on crafted probes; a layer
may still deviate on inputs no probe covers, and layer-level checks cannot see model-level choices (a
quantized lm_head, the weight-decay schedule: the ablations quant-head and const-wd).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, field

import torch

from bitnet_ref.cli import OneLineParser, run_quietly, whole_at_least
from bitnet_ref.conform import checks as C
from bitnet_ref.conform import quantizers as QC
from bitnet_ref.conform.harness import ConformError, LayerUnderTest, ProbeError

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
        C.check_norm,
        "an RMSNorm inside: 4x the input gives 1x the output and a mean offset is kept "
        "(with --norm-outside: 4x gives 4x)",
    ),
    ("norm-eps", C.check_norm_eps, "a token of mean square eps comes out sqrt(1/2) of a unit one (eps measured)"),
    (
        "act-scale-per-token",
        QC.check_act_per_token,
        "a token's output is the same alone and batched with an outlier token (2-D batch, one 3-D sequence)",
    ),
    (
        "act-range",
        QC.check_act_range,
        "integer activations with absmax 127 come through exactly: the int8 "
        "127/absmax grid (128, 255, 63, 15, 7 recognised)",
    ),
    (
        "act-rounding",
        QC.check_act_rounding,
        "quarter values are rounded, exact .5 ties go to even (half-up, half-away, half-down, half-to-zero recognised)",
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
    ("weight-codes", QC.check_weight_codes, "weights at 0.36 beta give code 0: ternary, not binary or unquantized"),
    ("weight-rounding-ties", QC.check_weight_ties, "weights at exactly +-beta/2 give code 0 (torch.round)"),
    ("bias", C.check_bias, "a bias parameter is added after the matmul, unscaled (ignored, beta-scaled recognised)"),
    (
        "degenerate-input",
        C.check_degenerate,
        "zero, constant and 1e-30 tokens, all-zero weights and a zero weight "
        "row: finite outputs and gradients, 0 where the reference gives 0",
    ),
    (
        "grad-latent-weights",
        QC.check_grad_weights,
        "every latent weight gets the STE gradient g^T x_hat: code 0, +-1, exactly +-beta and clamped alike",
    ),
    (
        "grad-input",
        QC.check_grad_input,
        "the input gradient is the STE through the norm's Jacobian, absmax elements included",
    ),
    ("latent-weights-kept", QC.check_latent_kept, "forward and backward leave the latent weight as loaded"),
    ("bf16-input", C.check_bf16, "bf16 input gives the float32 output rounded to bf16: scales in float32"),
    ("input-shapes", C.check_input_shapes, "2-D, 3-D and one-token-at-a-time inputs agree"),
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
        lines = [
            f"conformance of {self.target} (in={s['in_features']}, out={s['out_features']}, norm {norm}, "
            f"{s['device']}) against the BitNet b1.58 reference"
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
) -> ConformResult:
    """Run every check on layers built as factory(in_features, out_features, **init_kwargs).

    norm_outside: the layer has no norm of its own (its model normalises before it); it is then compared
    with the reference without a norm. norm_eps: the eps of the reference RMSNorm. weight_name: the latent
    weight's parameter name when several (out, in) parameters exist. Raises ConformError for bad input.
    """
    _validate(in_features, out_features, norm_eps, device)
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
    }
    lut = LayerUnderTest(factory, in_features, out_features, init_kwargs, device, weight_name)
    result = ConformResult(_label(factory), settings)
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


# ---- command line -------------------------------------------------------------------------------------------------


def load_factory(target: str):
    """MODULE:CLASS (CLASS may be dotted) -> the callable; ConformError in one line for anything wrong."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise ConformError(f"expected MODULE:CLASS (e.g. bitnet_ref.model:BitLinear), got {target!r}")
    if os.getcwd() not in sys.path:  # as `python -m` does, so that a console script finds the user's modules
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # the user's module: any import-time error is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConformError(f"cannot import {mod_name}: {type(e).__name__}: {first}".rstrip(": ")) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConformError(f"{mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConformError(f"{target} is a {type(obj).__name__}, not a class or callable")
    return obj


def _kwargs(text: str) -> dict:
    try:
        d = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(d).__name__}")
    return d


def _eps(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < 1e-2 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be in (0, 0.01), got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {name:<24} {what}" for name, _, what in CHECKS)
    ap = OneLineParser(
        prog="python -m bitnet_ref.conform",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a BitLinear implementation against the BitNet b1.58 reference. "
        "Exit 0: conforms; 1: deviations found; 2: bad input or not checkable here.",
        epilog=f"checks, in order:\n{checks}",
    )
    ap.add_argument("target", metavar="MODULE:CLASS", help="the layer, built as CLASS(in, out, **init_kwargs)")
    ap.add_argument(
        "--init-kwargs",
        type=_kwargs,
        default={},
        metavar="JSON",
        help="extra constructor arguments as a JSON object, e.g. '{\"bias\": false}'",
    )
    ap.add_argument(
        "--in",
        dest="in_features",
        type=whole_at_least(MIN_IN),
        default=128,
        metavar="N",
        help=f"in_features of the probed layer (a multiple of {IN_MULTIPLE}; default 128)",
    )
    ap.add_argument(
        "--out",
        dest="out_features",
        type=whole_at_least(MIN_OUT),
        default=64,
        metavar="N",
        help="out_features of the probed layer (even; default 64)",
    )
    ap.add_argument(
        "--wide",
        type=whole_at_least(MIN_IN),
        default=None,
        metavar="N",
        help="in_features for the output-scale-at-width check (default 4096)",
    )
    ap.add_argument(
        "--norm-outside",
        action="store_true",
        help="the layer has no norm of its own, its model normalises its input (HF AutoBitLinear, "
        "the 2B-4T model): compare with the reference without a norm",
    )
    ap.add_argument(
        "--norm-eps",
        type=_eps,
        default=1e-5,
        metavar="EPS",
        help="eps of the reference RMSNorm inside the layer (default 1e-5)",
    )
    ap.add_argument(
        "--weight-name", metavar="NAME", help="the latent weight's parameter name, when several have shape (out, in)"
    )
    ap.add_argument("--device", default="cpu", help="device to run the layer on (default cpu)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        factory = load_factory(args.target)
        result = check(
            factory,
            args.in_features,
            args.out_features,
            init_kwargs=args.init_kwargs,
            norm_outside=args.norm_outside,
            norm_eps=args.norm_eps,
            weight_name=args.weight_name,
            device=args.device,
            wide_in_features=args.wide,
        )
    except ConformError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.target = args.target
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render())
    return result.exit_code


def cli() -> int:
    """The ``bitnet-conform`` console script."""
    return run_quietly(main)


if __name__ == "__main__":
    sys.exit(cli())
