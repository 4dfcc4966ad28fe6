"""``python -m bitnet_ref.decode_probe``, kept at the name it has always had: the command is decode/probe.py.

Only runs it (and re-exports its ``main`` and ``cli``); nothing of the probe lives here."""

import sys

from bitnet_ref.decode.probe import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.decode_probe"))
