"""``python -m bitnet_ref.doctor RUN``: diagnose a training run."""

import sys

from bitnet_ref.doctor.command import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.doctor"))
