"""``python -m bitnet_ref.doctor RUN``: diagnose a training run.

Only runs the command; the command is command.py (``cli``)."""

import sys

from bitnet_ref.doctor.command import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.doctor"))
