"""The argparse pieces the command-line entry points share (python -m bitnet_ref.train, tools/decode_probe.py).

A parser whose errors are one line ending in where to find help (exit 2, no usage block), and the whole-number
argument type with a lower bound. Not a CLI framework: each entry point still builds its own parser.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable


class OneLineParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors print one line, "error: ... (see <help_hint>)", and exit 2."""

    def __init__(self, *args: Any, help_hint: str = "--help", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_hint = help_hint

    def error(self, message: str) -> Any:  # never returns: exits 2
        self.exit(2, f"error: {message} (see {self.help_hint})\n")


def whole_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type for whole numbers >= lo (1 for counts, 0 where 0 means "off")."""

    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {n}")
        return n

    return parse


def run_quietly(main: Callable[[Any], int], argv: list[str] | None = None) -> int:
    """Call a command-line ``main(argv)``; a reader that goes away early (``| head``, ``| less``) ends it quietly.

    Python would otherwise print a BrokenPipeError traceback, at the failed write and again at exit when it
    flushes stdout. Exit status 0: the output was cut short by the reader's choice, not by an error here.
    """
    import os
    import sys

    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 0
