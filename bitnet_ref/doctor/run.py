"""A run as the doctor reads it: its log records, checkpoint and decode probe report, loaded once.

``load_run(RUN_DIR)`` reads ``metrics.jsonl``, ``ckpt.pt`` and ``decode_probe.json``; ``Run`` is the type every
verdict and cause rule reads, kept here so that none of them imports the command line. Unusable input is a
one-line ``DoctorError``. What this is not: a judge (verdicts.py, causes.py) or a reader of other trainers' logs
(foreign_logs.py turns those into a ``Run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bitnet_ref import metrics_log as metrics
from bitnet_ref.metrics_log import number_or_none

MODEL_FILE_HINT = (
    "the doctor judges a training run from its log; python -m bitnet_ref.decode FILE shows what the model decodes, "
    "and python -m bitnet_ref.crosscheck FILE tells the model, its converter and its runtime apart"
)


def _is_model_file(path: Path) -> bool:
    from bitnet_ref.formats.gguf_container import is_gguf

    return is_gguf(path) or path.suffix in (".pt", ".safetensors", ".bin")


class DoctorError(Exception):
    """Unusable input; the message is one line."""


@dataclass
class Run:
    path: Path
    header: dict
    steps: list  # records with a train loss
    evals: list  # records with a val loss
    skipped_lines: int = 0
    stopped: str | None = None  # the trainer's "stop" record for a non-finite loss/gradient, if any
    ended: bool = False  # the trainer wrote its "end" record: the run completed
    ckpt: dict | None = None
    probe: dict | None = None
    checked: dict | None = None  # measure.checkpoint_check's measurements, once measured
    measured: dict | None = None  # reproduce.measurements: the log reproduced from the checkpoint, once measured
    error: str | None = None  # the trainer's "stop" record for an error that ended the run (not a non-finite value)

    @classmethod
    def from_metrics(cls, m: metrics.Metrics, path) -> Run:
        """The run a parsed metrics.jsonl describes (no checkpoint, no decode probe report yet)."""
        stop = m.stop
        reason = str(stop.get("reason", "no reason given")) if stop is not None else ""
        said = f"training stopped at step {stop.get('step')}: {reason}" if stop is not None else None
        error = said if said and (reason.startswith("error") or reason.startswith("interrupted")) else None
        stopped = None if error else said  # a non-finite loss or gradient (or an older log's stop record)
        return cls(Path(path), m.header, m.steps, m.evals, m.skipped, stopped=stopped, ended=m.ended, error=error)

    @property
    def planned_steps(self) -> int | None:
        tc = self.header.get("train_config")
        return tc.get("steps") if isinstance(tc, dict) and isinstance(tc.get("steps"), int) else None

    @property
    def complete(self) -> bool:
        """The run reached its planned last step (an "end" record, or the last step record says so)."""
        planned = self.planned_steps
        last = self.steps[-1].get("step") if self.steps else None
        return self.ended or (planned is not None and last is not None and last >= planned)

    @property
    def val_losses(self) -> list:
        """[(step, val loss)] of the evals whose val loss is a number."""
        return [
            (r.get("step"), number_or_none(r.get("val_loss")))
            for r in self.evals
            if number_or_none(r.get("val_loss")) is not None
        ]


def load_run(run_dir) -> Run:
    """Read a run directory; DoctorError for anything that makes a diagnosis impossible."""
    path = Path(run_dir)
    if not path.exists():
        raise DoctorError(f"{path}: no such run directory")
    if not path.is_dir():
        if _is_model_file(path):
            raise DoctorError(f"{path} is a model file, not a run directory; {MODEL_FILE_HINT}")
        raise DoctorError(f"{path} is not a directory; pass the run directory that holds metrics.jsonl")
    mpath = path / metrics.FILE_NAME
    if not mpath.is_file():
        if (path / "config.json").is_file():
            raise DoctorError(f"{path} is a model directory with no training log (metrics.jsonl); {MODEL_FILE_HINT}")
        raise DoctorError(f"{path} has no metrics.jsonl; is it a bitnet_ref run directory?")
    try:
        run = Run.from_metrics(metrics.read(mpath), path)
    except OSError as e:
        raise DoctorError(f"cannot read {mpath}: {e.strerror or e}") from None
    if not run.steps and not run.evals:
        raise DoctorError(f"{mpath} holds no training records (empty, truncated or not a bitnet_ref metrics file)")
    ck = path / "ckpt.pt"
    if ck.is_file():
        from bitnet_ref.checkpoint import CheckpointError, load_checkpoint

        try:
            run.ckpt = load_checkpoint(ck)
        except CheckpointError as e:
            run.ckpt = {"error": str(e)}
    pp = path / "decode_probe.json"
    if pp.is_file():
        try:
            run.probe = json.loads(pp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run.probe = {"error": "decode_probe.json is not valid JSON"}
    return run
