"""``python -m bitnet_ref.conform module:Class``: check a BitLinear implementation against the reference.

Only runs the command; the command is command.py (``cli``)."""

import sys

from bitnet_ref.conform.command import cli

if __name__ == "__main__":
    sys.exit(cli())
