"""``python -m bitnet_ref.train``: train a BitNet b1.58 (or full-precision) LM; ``--help`` lists every flag.

Only runs the command; the command is loop.py (``cli``)."""

import sys

from bitnet_ref.train.loop import cli

if __name__ == "__main__":
    sys.exit(cli())
