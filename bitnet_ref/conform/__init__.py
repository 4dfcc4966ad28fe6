"""The BitLinear conformance checker: someone else's layer against the b1.58 reference, one property at a time.

``assert_conforms(MyLinear)`` from a test suite, ``python -m bitnet_ref.conform module:Class`` from a shell. The
checker and its command (checker.py), the forward checks (checks.py), the quantizer checks (quantizers.py) and
the probe harness (harness.py). Not a model-level check: see checker.py for what it cannot see."""

from bitnet_ref.conform.checker import CHECKS, ConformResult, assert_conforms, check, main

__all__ = ["CHECKS", "ConformResult", "assert_conforms", "check", "main"]
