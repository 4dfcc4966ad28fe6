"""``python -m bitnet_ref.decode_probe``, kept at the name it has always had: the command is decode/probe.py."""

import sys

from bitnet_ref.decode.probe import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.decode_probe"))
