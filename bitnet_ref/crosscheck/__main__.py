"""``python -m bitnet_ref.crosscheck``: the command is crosscheck/command.py."""

import sys

from bitnet_ref.crosscheck.command import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.crosscheck"))
