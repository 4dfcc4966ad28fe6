"""Checkpoint files: the one writer and the one reader every bitnet_ref tool uses.

A checkpoint is a plain dict of tensors and Python builtins (no classes), so it loads with
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects or run
code. Keys (version 1): ``format`` ("bitnet_ref.ckpt"), ``version``, ``config`` (ModelConfig as a dict),
``train_config``, ``model`` (state_dict), ``optimizer``, ``step``, ``rng``, ``last_val_loss``,
``unigram_entropy``, ``ln_vocab``, ``data`` (see ``corpus.Corpus.info`` in data/).

- ``save_checkpoint`` is atomic: it writes a temporary file in the same directory, flushes and fsyncs it,
  renames it over the target with ``os.replace`` and fsyncs the directory, so a crash at any moment leaves
  either the old checkpoint or the new one, never a torn file. It refuses to write non-finite weights.
- ``load_checkpoint`` turns every way a file can be wrong into one ``CheckpointError`` line: missing,
  empty, truncated or corrupt, a pickle that wants to run code, another program's file, an unsupported
  version, a config with absurd sizes, or NaN/inf weights.

What this is not: a format for sharing packed ternary weights (the decode path packs from these).
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from bitnet_ref.files import atomic_write
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer

FORMAT = "bitnet_ref.ckpt"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line."""


def save_checkpoint(path, payload: dict) -> None:
    """Atomically write ``payload`` (a plain dict) to ``path``."""
    path = Path(path)
    bad = _first_nonfinite(payload.get("model", {}))
    if bad is None:
        bad = _first_nonfinite(payload.get("optimizer", {}).get("state", {}))
    if bad is not None:
        raise CheckpointError(f"refusing to save {path}: tensor {bad} holds NaN or inf")
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path, *, check_config: bool = True) -> dict:
    """Load and validate a bitnet_ref checkpoint; any problem raises CheckpointError (one line)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (try {path / 'ckpt.pt'})")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        op = re.search(r"Unsupported operand (\d+)", msg)
        if op and int(op.group(1)) not in _PICKLE_OPCODES:  # random bytes, not a pickle asking for too much
            raise CheckpointError(
                f"{path} is corrupt or not a PyTorch file (byte {op.group(1)} is no pickle opcode)"
            ) from None
        if "Weights only load failed" in msg or "Unsupported global" in msg or op:
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that would run code when "
                "unpickled; bitnet_ref checkpoints never do"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a PyTorch file ({_first_line(e)})") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as e:
        raise CheckpointError(f"{path} is truncated, corrupt or not a PyTorch file ({_first_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or _first_line(e)}") from None
    validate(ckpt, path, check_config=check_config)
    return ckpt


_PICKLE_OPCODES = {ord(op.code) for op in pickletools.opcodes}  # what a well-formed pickle can hold


def validate(ckpt, path="checkpoint", *, check_config: bool = True) -> None:
    """The structural checks of ``load_checkpoint``, for a dict already in memory."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bitnet_ref checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')!r}; this bitnet_ref reads version {VERSION}"
        )
    for key, kind in (("config", dict), ("model", dict), ("step", int)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path} is damaged: {key!r} is missing or not a {kind.__name__}")
    if check_config:
        try:
            ModelConfig.from_dict(ckpt["config"])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path} has an unusable model config: {_first_line(e)}") from None
    for name, t in ckpt["model"].items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path} is damaged: model entry {name!r} is not a tensor")
    bad = _first_nonfinite(ckpt["model"])
    if bad is not None:
        raise CheckpointError(f"{path} holds NaN or inf in model weight {bad!r}; it cannot be used")


def _first_nonfinite(tree, prefix=""):
    """Name of the first floating tensor in a nested dict/list holding NaN/inf, or None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and tree.numel() and not bool(torch.isfinite(tree).all()):
            return prefix or "tensor"
        return None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in items:
        bad = _first_nonfinite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def build_model(ckpt: dict, path="checkpoint") -> Transformer:
    """The fake-quant Transformer of a loaded checkpoint, weights in, eval mode, on the CPU."""
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
        model = Transformer(cfg)
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DecodeError(f"{path}: cannot build the model from its stored config and weights ({first})") from None
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise DecodeError(f"{path} holds NaN or inf in {name!r}; it cannot be decoded")
    return model.eval()
