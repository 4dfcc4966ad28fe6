"""metrics.jsonl, the one schema of a run's log: its record kinds, the writer, the reader and the repair.

Every line is one JSON object with a ``kind``:

- ``header`` (first line): ``config`` (ModelConfig), ``train_config``, ``ln_vocab``, ``unigram_entropy``,
  ``data``, parameter counts, ``optimizer`` (class, betas, eps), device and versions;
- ``step`` (one per optimizer step): ``step``, ``loss``, ``lr``, ``wd``, ``stage``, ``grad_norm``, ``tok_s``,
  and ``skipped``/``nonfinite``/``skipped_total`` for a skipped update;
- ``eval``: ``step``, ``val_loss``, the diversity probe (probe.diversity), ``samples``, and the health metrics
  (health.py: ``layers`` and ``health_*``);
- ``resume`` (``step``, ``dropped_lines``), ``stop`` (``step``, ``reason``: a non-finite loss or gradient,
  ``error: <type>: <message>`` for an error that ended the run, or ``interrupted (Ctrl-C)``) and ``end`` (the
  run's summary, written once when the last step is done).

Numbers are finite or null: JSON has no NaN. The writer puts each record down with one ``write`` of a whole
line and flushes, so a killed run leaves at most a torn last line, which the reader reports and skips and
``repair`` cuts away. Readers here are lenient (a garbled line is counted, not fatal); tools that must be
strict (tools/reliability/kill_loop.py) look at ``Metrics.bad_lines`` and ``Metrics.torn`` themselves.
What this is not: a general event log or a TensorBoard writer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

HEADER, STEP, EVAL, RESUME, STOP, END = "header", "step", "eval", "resume", "stop", "end"
KINDS = (HEADER, STEP, EVAL, RESUME, STOP, END)
FILE_NAME = "metrics.jsonl"


def finite_or_none(x: float):
    """What the writer records for a float: the value when finite, else None (null in JSON)."""
    return x if math.isfinite(x) else None


def number_or_none(x) -> float | None:
    """What a reader takes from a field: a JSON number as a float, anything else (null, text, bool) as None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


class MetricsLog:
    """The writer: append-only JSON lines; each record is one write() of a complete line, then flush."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, allow_nan=False) + "\n")
        self.f.flush()

    def sync(self) -> None:
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


@dataclass
class Metrics:
    """A parsed metrics.jsonl. ``records`` are the JSON objects of the complete lines, in file order."""

    records: list
    bad_lines: list  # 1-based numbers of newline-terminated lines that are not JSON objects
    torn: bool  # the file ends in a partial line that is no JSON object (a kill mid-write); not in records
    unterminated: bool = False  # the last line is a whole JSON object without its newline; it is in records

    @property
    def skipped(self) -> int:
        """Lines that were not records: the garbled ones and a torn tail."""
        return len(self.bad_lines) + int(self.torn)

    @property
    def header(self) -> dict:
        """The header record; records from before ``kind`` existed are recognised by their fields."""
        return next(
            (
                r
                for r in self.records
                if r.get("kind") == HEADER
                or ("kind" not in r and ("ln_vocab" in r or "unigram_entropy" in r or "config" in r))
            ),
            {},
        )

    def of_kind(self, kind: str) -> list:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def steps(self) -> list:
        """Train-step records with a loss (a record without ``kind`` counts as a step record if it has one)."""
        return [
            r
            for r in self.records
            if r.get("kind", STEP) == STEP and number_or_none(r.get("step")) is not None and "loss" in r
        ]

    @property
    def evals(self) -> list:
        """Eval records with a val loss (a record without ``kind`` counts if it has one)."""
        return [r for r in self.records if r.get("kind", EVAL) == EVAL and "val_loss" in r]

    @property
    def stop(self) -> dict | None:
        return next(iter(self.of_kind(STOP)), None)

    @property
    def ended(self) -> bool:
        return bool(self.of_kind(END))


def _parse(line: bytes):
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def parse(data: bytes) -> Metrics:
    """Parse the bytes of a metrics.jsonl (blank lines are ignored)."""
    parts = data.split(b"\n")
    complete, tail = parts[:-1], parts[-1]  # tail is b"" when the file ends with a newline
    records, bad = [], []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        rec = _parse(line)
        if rec is None:
            bad.append(i)
        else:
            records.append(rec)
    last = _parse(tail) if tail.strip() else None
    if last is not None:
        records.append(last)
    return Metrics(records, bad, torn=bool(tail.strip()) and last is None, unterminated=last is not None)


def read(path) -> Metrics:
    """Read and parse a metrics.jsonl; a missing file reads as empty. OSError for an unreadable one."""
    path = Path(path)
    if not path.exists():
        return Metrics([], [], False)
    return parse(path.read_bytes())


def repair(path, step: int) -> int:
    """Cut metrics.jsonl back to checkpoint ``step``: drop a torn or garbled line and the records after ``step``.

    Rewritten atomically (temporary file, then rename). Returns the number of lines dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    parts = path.read_bytes().split(b"\n")
    complete, torn = parts[:-1], parts[-1]
    keep, dropped = [], int(bool(torn))
    for line in complete:
        rec = _parse(line)
        if rec is not None and (rec.get("kind") == HEADER or rec.get("step", 0) <= step):
            keep.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in keep))
    os.replace(tmp, path)
    return dropped
