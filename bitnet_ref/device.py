"""Where a computation runs: the one parser of --device for training and decoding.

``resolve_device`` turns ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a torch.device, or raises a one-line
``DeviceError``. It is core because the trainer (train/dist.py) and the decode loader (decode/loader.py) both need
it and neither may import the other. What this is not: the process group (train/dist.py) or a device manager.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """An unusable --device or process-group setting; the message is one line."""


def resolve_device(name: str, local_rank: int = 0, *, allow_auto: bool = True) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device; DeviceError otherwise.

    A bare ``cuda`` means this process's GPU (``local_rank``) under torchrun.
    """
    if name == "auto" and allow_auto:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    choices = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown --device {name!r}; use {choices}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} was asked for but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise DeviceError(f"--device {name!r} is not supported; use {choices}")
    return dev
