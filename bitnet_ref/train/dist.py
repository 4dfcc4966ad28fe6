"""Data-parallel training: the torch.distributed process group under ``torchrun``, and each rank's share of a batch.

The device comes from device.py (``resolve_device``, the one parser of ``--device``), which this module applies
to its local rank. Under ``torchrun`` (``RANK`` set) ``init_distributed`` joins the process group (gloo on CPU,
NCCL on CUDA); ``rank_slice`` cuts a rank's share out of a global batch, so a batch depends only on (seed, step),
never on the number of processes. What this is not: a launcher. ``torchrun`` starts the processes; nothing here does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from bitnet_ref.device import DeviceError, resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rank_slice(self, *tensors):
        """This rank's rows of each (B, ...) global-batch tensor: B/world rows each."""
        per = tensors[0].shape[0] // self.world
        return tuple(t[self.rank * per : (self.rank + 1) * per] for t in tensors)

    def mean(self, x: float, device) -> float:
        """The mean of ``x`` over all processes (``x`` itself when not distributed)."""
        if not self.enabled:
            return x
        import torch.distributed as td

        t = torch.tensor([x], dtype=torch.float64, device=device)
        td.all_reduce(t)
        return float(t.item()) / self.world


def init_distributed(device: str, batch_size: int) -> tuple[Dist, torch.device]:
    """(Dist, device) for this process; joins the process group when started by torchrun."""
    if "RANK" not in os.environ:
        return Dist(), resolve_device(device)
    import torch.distributed as td

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
    dev = resolve_device(device, d.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    td.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if batch_size % d.world:
        td.destroy_process_group()
        raise DeviceError(f"--batch-size {batch_size} must be divisible by the {d.world} processes")
    return d, dev


def barrier_and_close(dist: Dist, *, barrier: bool) -> None:
    """End the process group; with ``barrier``, first wait for every rank (rank 0 may still be saving: a peer
    that tears gloo down first makes it abort)."""
    if not dist.enabled:
        return
    import torch.distributed as td

    if barrier:
        td.barrier()
    td.destroy_process_group()
