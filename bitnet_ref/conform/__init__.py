"""The BitLinear conformance checker: someone else's layer against the b1.58 reference, one property at a time.

``assert_conforms(MyLinear)`` from a test suite, ``python -m bitnet_ref.conform module:Class`` from a shell. The
checker (checker.py) and its command (command.py), the layer under test and its loaders for layers that hold
codes (layer.py, loaders.py), the checks (checks.py, norms.py, quantizers.py, gradients.py, layer_checks.py) and
the probes (harness.py). Not a model-level check: see checker.py for what it cannot see."""

from bitnet_ref.conform.checker import CHECKS, ConformResult, assert_conforms, check
from bitnet_ref.conform.command import main

__all__ = ["CHECKS", "ConformResult", "assert_conforms", "check", "main"]
