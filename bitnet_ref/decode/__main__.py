"""``python -m bitnet_ref.decode CKPT``: the decode probe.

Only runs the command; the command is probe.py (``cli``)."""

import sys

from bitnet_ref.decode.probe import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.decode"))
