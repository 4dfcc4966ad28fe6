"""``python -m bitnet_ref.conform module:Class``: check a BitLinear implementation against the reference.

Only runs the command; the command is checker.py (``cli``)."""

import sys

from bitnet_ref.conform.checker import cli

if __name__ == "__main__":
    sys.exit(cli())
