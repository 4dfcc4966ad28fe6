"""The BitLinear conformance checker: ``assert_conforms(MyLinear)`` from a test suite, ``python -m bitnet_ref.conform
module:Class`` from a shell. The checker and its command (checker.py), the forward checks (checks.py), the quantizer
checks (quantizers.py) and the probe harness (harness.py)."""

from bitnet_ref.conform.checker import CHECKS, ConformResult, assert_conforms, check, main

__all__ = ["CHECKS", "ConformResult", "assert_conforms", "check", "main"]
