"""``python -m bitnet_ref.decode CKPT``: the decode probe."""

import sys

from bitnet_ref.decode.probe import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.decode"))
