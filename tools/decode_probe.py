"""Command-line entry for the decode probe: `python tools/decode_probe.py RUN/ckpt.pt [--json] ...`.

A thin wrapper; everything (options, report, verdict) lives in bitnet_ref/decode/probe.py, the verdict's
thresholds in bitnet_ref/thresholds.py.
"""

import sys

from bitnet_ref.decode.probe import cli

if __name__ == "__main__":
    sys.exit(cli(prog="decode_probe.py"))
