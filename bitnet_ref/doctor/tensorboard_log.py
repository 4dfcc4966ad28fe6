"""TensorBoard event files as rows for trainer_logs.py, through the tensorboard package (an optional extra).

An event file is a sequence of records: an 8-byte length, its masked CRC-32C, the payload (an ``Event``
protocol buffer) and the payload's masked CRC-32C. This module walks the records itself, checking both CRCs, so
that a file cut short (a run killed mid-write, a partial copy) or one that is not TensorBoard's is a one-line
error naming what it is, where tensorboard's own loader would stop quietly; the payloads are parsed with
tensorboard's ``Event``. Scalars come in either encoding (``simple_value``, or a scalar tensor of the scalars
plugin); the Trainer's TensorBoard callback also writes its model config as text, which gives the vocabulary
size. A directory is searched for event files; those of one run (one directory) are read in name order.
What this is not: a reader of histograms, images or the profiler's files.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from bitnet_ref.doctor.trainer_logs import vocab_from_config

PATTERN = "events.out.tfevents.*"
MAX_RECORD = 64 << 20  # one event larger than this is no scalar log (and a garbage length would be huge)


class EventsError(ValueError):
    """Unusable event files; one line (foreign_logs turns it into its LogError)."""


def is_event_file(path: Path) -> bool:
    return path.is_file() and path.name.startswith("events.out.tfevents")


def event_files(path: Path) -> list[Path]:
    """The event files of one run under ``path`` (itself, or found below it); EventsError when none or several
    runs."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob(PATTERN) if p.is_file())
    dirs = sorted({p.parent for p in files})
    if not files:
        raise EventsError(f"{path}: no TensorBoard event files ({PATTERN}) in it")
    if len(dirs) > 1:
        raise EventsError(
            f"{path} holds the event files of {len(dirs)} runs; pass one: " + ", ".join(str(d) for d in dirs[:4])
        )
    return files


def _api():
    try:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
        from tensorboard.util import tensor_util
    except ImportError:
        raise EventsError(
            "reading TensorBoard event files needs the tensorboard package (pip install tensorboard)"
        ) from None
    return event_pb2, masked_crc32c, tensor_util


def _payloads(path: Path, crc):
    """The payload bytes of each record; EventsError for a cut-short or foreign file."""
    n = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if not head:
                return
            length = struct.unpack("<Q", head[:8])[0] if len(head) == 12 else None
            if length is None or struct.unpack("<I", head[8:])[0] != crc(head[:8]) or length > MAX_RECORD:
                if n == 0:
                    raise EventsError(f"{path}: not a TensorBoard event file (its first record header is not one)")
                raise EventsError(f"{path}: truncated or damaged after {n} events (a record header is cut or corrupt)")
            body = f.read(length)
            tail = f.read(4)
            if len(body) < length or len(tail) < 4:
                raise EventsError(f"{path}: truncated after {n} events (the last record is cut short)")
            if struct.unpack("<I", tail)[0] != crc(body):
                raise EventsError(f"{path}: damaged: record {n + 1} fails its checksum")
            n += 1
            yield body


def read_events(path: Path) -> tuple[dict, int | None]:
    """({step: {tag: number}}, vocabulary size from the Trainer's model-config text, or None)."""
    event_pb2, crc, tensor_util = _api()
    rows: dict[int, dict] = {}
    vocab = None
    for file in event_files(path):
        for i, body in enumerate(_payloads(file, crc)):
            try:
                ev = event_pb2.Event.FromString(body)
            except Exception:  # protobuf's DecodeError: not an Event
                raise EventsError(
                    f"{file}: record {i + 1} is not a TensorBoard event (written by another tool?)"
                ) from None
            if i == 0 and not ev.file_version.startswith("brain.Event"):
                raise EventsError(f"{file}: not a TensorBoard event file (no file version record)")
            for v in ev.summary.value if ev.HasField("summary") else ():
                x, text = _value(v, tensor_util)
                if x is not None:
                    rows.setdefault(int(ev.step), {})[v.tag] = x
                elif text is not None and v.tag.startswith("model_config"):
                    vocab = vocab or _vocab(text)
    return rows, vocab


def _value(v, tensor_util) -> tuple[float | None, str | None]:
    kind = v.WhichOneof("value")
    if kind == "simple_value":
        return float(v.simple_value), None
    if kind != "tensor":
        return None, None
    try:
        arr = tensor_util.make_ndarray(v.tensor)
    except Exception:  # a tensor kind tensorboard itself cannot decode: not a scalar of ours
        return None, None
    if arr.size == 1 and arr.dtype.kind in "fiu":
        return float(arr.reshape(-1)[0]), None
    if arr.size == 1 and arr.dtype.kind in "SO":
        raw = arr.reshape(-1)[0]
        return None, raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return None, None


def _vocab(text: str) -> int | None:
    try:
        cfg = json.loads(text)
    except ValueError:
        return None
    return vocab_from_config(cfg) if isinstance(cfg, dict) else None
