"""``python -m bitnet_ref.conform MODULE:CLASS``: the conformance checker's command line (the checks: checker.py).

    python -m bitnet_ref.conform MODULE:CLASS [--init-kwargs JSON] [--in N] [--out N] [--norm-outside]
                                 [--norm-eps EPS] [--weight-name NAME] [--load NAME|MODULE:FUNCTION]
                                 [--compile] [--device cpu|cuda] [--json]

Exit 0: conforms; 1: deviations found; 2: bad input or not checkable here. Every message for bad input is one
line on stderr; with --json, stdout carries one JSON object in every case, exit 2 included
({"target", "exit_code": 2, "error"}), so a script reading stdout always gets an object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from bitnet_ref.cli import OneLineParser, run_quietly, whole_at_least
from bitnet_ref.conform.checker import CHECKS, IN_MULTIPLE, MIN_IN, MIN_OUT, check
from bitnet_ref.conform.layer import ConformError
from bitnet_ref.conform.loaders import BUILT_IN, import_object


def load_factory(target: str):
    """MODULE:CLASS (CLASS may be dotted) -> the callable; ConformError in one line for anything wrong."""
    if os.getcwd() not in sys.path:  # as `python -m` does, so that a console script finds the user's modules
        sys.path.insert(0, os.getcwd())
    return import_object(target, "class")


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


class _UsageError(Exception):
    """An argparse error, raised instead of exiting so that --json can still print its object."""


class _Parser(OneLineParser):
    def error(self, message):
        raise _UsageError(f"{message} (see {self.help_hint})")


def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {name:<24} {what}" for name, _, what in CHECKS)
    ap = _Parser(
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
    ap.add_argument(
        "--load",
        metavar="NAME|MODULE:FUNCTION",
        help="for a layer that holds codes and a scale, not a latent weight: a built-in loader "
        f"({', '.join(BUILT_IN)}; transformers' classes get theirs without asking) or your FUNCTION(layer, "
        "weight), which writes the float32 (out, in) probe weight into the layer as it stores weights",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="keep the layer's torch.compile directives (default: run them eagerly; compiling each probe "
        "shape on a CPU takes many seconds)",
    )
    ap.add_argument("--device", default="cpu", help="device to run the layer on (default cpu)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    target = next((a for a in argv if ":" in a and a[:1] not in "-{"), None)
    try:
        args = build_parser().parse_args(argv)
        target = args.target
        result = check(
            load_factory(args.target),
            args.in_features,
            args.out_features,
            init_kwargs=args.init_kwargs,
            norm_outside=args.norm_outside,
            norm_eps=args.norm_eps,
            weight_name=args.weight_name,
            device=args.device,
            wide_in_features=args.wide,
            load=args.load,
            keep_compile=args.compile,
        )
    except (ConformError, _UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        if as_json:
            print(json.dumps({"target": target, "exit_code": 2, "conforms": False, "error": str(e)}, indent=2))
        return 2
    result.target = args.target
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render())
    return result.exit_code


def cli() -> int:
    """The ``bitnet-conform`` console script."""
    return run_quietly(main)


if __name__ == "__main__":
    sys.exit(cli())
