"""``python -m bitnet_ref.export``, kept at the name it has always had: the command is formats/export.py.

Only runs it (and re-exports its ``main`` and ``cli``); nothing of the export lives here."""

import sys

from bitnet_ref.formats.export import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli())
