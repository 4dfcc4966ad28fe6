"""``bitnet-doctor RUN_DIR --checkpoint THEIRS``: a user's own checkpoint checked against a watched run's log.

A run recorded by bitnet_ref.watch has no ckpt.pt of ours, and its data is the user's. But its header holds the
fixed windows every ``val_loss`` was measured on, so a checkpoint the user points at (a Hugging Face BitNet
directory such as the Trainer's ``checkpoint-N``, a bitnet_ref ``ckpt.pt``, or a BitNet GGUF; read by
formats.hf_read, or from its codes by decode.loader.read_file) can be
measured on exactly those tokens and compared with what the log says at the checkpoint's step: the doctor's
``log_mismatch`` check, with the same numbers it reads from our own checkpoints (measured loss, logits on a coarse
float grid or an integer lattice). The checkpoint's step is the Trainer's ``global_step`` (trainer_state.json in
that directory), else the run's last evaluation (a note says so). What this is not: a
reader of optimizer state (the dtype check of master weights needs our ckpt.pt).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bitnet_ref.doctor.run import DoctorError, Run


def _step_of(path: Path) -> int | None:
    """The Trainer's global_step from the trainer_state.json in (or beside) ``path``, else None."""
    state = (path if path.is_dir() else path.parent) / "trainer_state.json"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step") if state.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        step = None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _model_of(path):
    """A file that holds codes (a GGUF, a packed Hugging Face directory) as the model of its codes and scales, read
    without latents: the packed path where the extension is built, else the plain-torch one (the same values)."""
    from bitnet_ref.decode.loader import read_file
    from bitnet_ref.runtime import kernels

    fm = read_file(path)
    return fm.model() if kernels.available() else fm.reference()


def check_user_checkpoint(run: Run, path) -> None:
    """Measure ``path`` on the run's recorded windows and leave the result where the doctor's checkpoint checks
    read it (the run's ``checked`` measurements); DoctorError (one line) for a run without windows or an
    unreadable checkpoint."""
    from bitnet_ref.checkpoint import CheckpointError
    from bitnet_ref.decode.loader import holds_codes
    from bitnet_ref.formats import hf_read
    from bitnet_ref.formats.hf import FormatError
    from bitnet_ref.generate import val_loss
    from bitnet_ref.health import float_grid_share, lattice_share
    from bitnet_ref.metrics_log import number_or_none

    path = Path(path)
    windows = run.header.get("val_windows")
    if not isinstance(windows, list) or not windows:
        raise DoctorError(
            f"{run.path}: its metrics hold no loss windows to measure a checkpoint on (--checkpoint works on runs "
            "recorded by bitnet_ref.watch; a bitnet_ref run's own ckpt.pt is checked without it)"
        )
    try:
        model = _model_of(path) if holds_codes(path) else hf_read.load(path)
    except (FormatError, CheckpointError) as e:
        raise DoctorError(f"--checkpoint: {e}") from None
    try:
        x = torch.tensor(windows, dtype=torch.long)  # (B, T+1)
        if x.dim() != 2 or x.shape[1] < 2 or int(x.max()) >= model.cfg.vocab_size or int(x.min()) < 0:
            raise ValueError("the windows do not fit the checkpoint's vocabulary")
        if x.shape[1] - 1 > model.cfg.context:
            x = x[:, : model.cfg.context + 1]
    except (TypeError, ValueError, RuntimeError) as e:
        raise DoctorError(f"{run.path}: its loss windows cannot be used with {path}: {e}") from None
    notes = []
    step = _step_of(path)
    if step is None:
        step = run.evals[-1].get("step") if run.evals else None
        notes.append(f"the step of {path} is unknown: compared with the log's last evaluation (step {step})")
    logged = next((number_or_none(r.get("val_loss")) for r in reversed(run.evals) if r.get("step") == step), None)
    with torch.no_grad():
        measured = val_loss(model, x)
        logits, _ = model(x[:1, :-1])  # (1, T, V)
    rows = logits.reshape(-1, logits.shape[-1])
    if logged is None:
        notes.append(f"the log has no val loss at step {step}: {path} was measured ({measured:.3f}) but not compared")
    run.checked = {
        "measured": measured,
        "logged": logged,
        "step": step,
        "tokens": int(x[:, 1:].numel()),
        "float_grid": float_grid_share(rows),
        "lattice": lattice_share(rows),
        "dtypes": [],
        "notes": notes,
    }
