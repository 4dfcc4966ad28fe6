"""A Hugging Face ``trainer_state.json`` as rows for trainer_logs.py: its ``log_history``, one row per step.

The Trainer (and TRL's trainers) write ``log_history``, a list of dicts, each with a ``step``: train rows
(``loss``, ``grad_norm``, ``learning_rate``, TRL's ``entropy``, ``mean_token_accuracy``), eval rows
(``eval_loss``, ...), and, with bitnet_ref.watch.hf's callback, its ``bitnet/...`` figures. Rows of one step
are merged. The vocabulary size comes from the ``config.json`` beside it (a checkpoint directory holds both).
Bad input is a one-line LogError: not JSON, no ``log_history``, rows without steps, steps going back.
What this is not: a reader of the Trainer's checkpoint (weights, optimizer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bitnet_ref.doctor.trainer_logs import vocab_from_config

MAX_BYTES = 256 << 20  # a trainer_state.json of a long run is tens of MB; this is no log


class StateError(ValueError):
    """An unusable trainer_state.json; one line (foreign_logs turns it into its LogError)."""


def is_trainer_state(path: Path) -> bool:
    """A file named trainer_state.json, or JSON whose first key is a Trainer state's."""
    if path.name == "trainer_state.json":
        return True
    if path.suffix.lower() != ".json":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.lstrip().startswith("{") and any(k in head for k in ('"log_history"', '"global_step"', '"best_metric"'))


def read_state(path: Path) -> tuple[dict, int | None]:
    """({step: {name: number}}, vocabulary size or None) of a trainer_state.json."""
    if path.stat().st_size > MAX_BYTES:
        raise StateError(f"{path}: {path.stat().st_size >> 20} MB is too large for a trainer_state.json")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError(f"{path}: not a JSON file ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise StateError(
            f"{path}: no log_history list (is it a Hugging Face trainer_state.json? the Trainer writes one into "
            "each checkpoint-N directory)"
        )
    rows: dict[int, dict] = {}
    last = None
    for i, row in enumerate(state["log_history"], 1):
        if not isinstance(row, dict):
            raise StateError(f"{path}: log_history entry {i} is not an object")
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step < 0:
            raise StateError(f"{path}: log_history entry {i} has no step")
        if last is not None and step < last:
            raise StateError(f"{path}: log_history entry {i} goes back from step {last:g} to step {step:g}")
        last = step
        into = rows.setdefault(int(step), {})
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                into[k] = float(v)
    return rows, _vocab_beside(path)


def _vocab_beside(path: Path) -> int | None:
    cfg = path.with_name("config.json")
    try:
        return vocab_from_config(json.loads(cfg.read_text(encoding="utf-8"))) if cfg.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
