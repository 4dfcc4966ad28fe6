"""The BitLinear conformance checker: ``assert_conforms(MyLinear)`` from a test suite, ``python -m bitnet_ref.conform
module:Class`` from a shell. The checker (checker.py) and its command (command.py), the layer under test and its
loaders for code-holding layers (layer.py, loaders.py), the checks (checks.py, norms.py, quantizers.py,
gradients.py, layer_checks.py) and the probes (harness.py)."""

from bitnet_ref.conform.checker import CHECKS, ConformResult, assert_conforms, check
from bitnet_ref.conform.command import main

__all__ = ["CHECKS", "ConformResult", "assert_conforms", "check", "main"]
