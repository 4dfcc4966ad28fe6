"""Reading a run's records for the doctor's rules: per-layer values of an eval record, the last eval that measured
something, a median that skips what is missing, and numbers written for evidence lines.

What this is not: a rule (causes.py, optimizer_config.py, splits.py, ... hold those) or the log's schema
(metrics_log.py).
"""

from __future__ import annotations

import math
import statistics

from bitnet_ref.metrics_log import number_or_none


def median(vals):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def layer_values(rec: dict, key: str) -> list:
    """The per-BitLinear values of ``key`` in an eval record (numbers only)."""
    layers = rec.get("layers")
    if not isinstance(layers, dict):
        return []
    return [
        number_or_none(v.get(key))
        for v in layers.values()
        if isinstance(v, dict) and number_or_none(v.get(key)) is not None
    ]


def last_with(evals: list, key: str) -> dict | None:
    """The last eval record whose health summary `key` (or per-layer field) is a number."""
    for rec in reversed(evals):
        if number_or_none(rec.get(f"health_{key}")) is not None or layer_values(rec, key):
            return rec
    return None


def fmt(x, nd=3) -> str:
    """A number for an evidence line: n/a for None, 3 significant digits when very large or small."""
    if x is None:
        return "n/a"
    if isinstance(x, float) and (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)):
        return f"{x:.3g}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)
