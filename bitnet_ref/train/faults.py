"""Test-only fault injection: make chosen training steps produce a NaN loss or a NaN/inf gradient.

The trainer's non-finite handling (stop with a one-line error, or ``--skip-nonfinite``) must be testable on a
real run, also one started as a subprocess, so the faults are asked for through an environment variable:
``BITNET_REF_FAULT="nan-loss@5,inf-grad@7"`` (1-based step numbers; kinds ``nan-loss``, ``nan-grad``,
``inf-grad``). ``install`` puts hooks on the model once, before the loop, so the loop itself carries no test
code: a forward hook multiplies the loss of the chosen training steps by NaN, a gradient hook on the first
parameter writes NaN or inf into its first element. Steps are counted by training-mode forwards and by
backwards (evaluation runs in eval mode and never calls backward). Nothing happens when the variable is unset.
"""

from __future__ import annotations

import os

import torch.nn as nn

FAULT_ENV = "BITNET_REF_FAULT"
KINDS = ("nan-loss", "nan-grad", "inf-grad")


def from_env() -> dict[int, str]:
    """``{step: kind}`` parsed from BITNET_REF_FAULT; empty when it is unset."""
    out = {}
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        kind, _, step = item.partition("@")
        if kind not in KINDS:
            raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; choose from {', '.join(KINDS)}")
        out[int(step)] = kind
    return out


def install(model: nn.Module, first_step: int) -> None:
    """Hook the faults of BITNET_REF_FAULT into ``model``; its next training step is number ``first_step``."""
    faults = from_env()
    if not faults:
        return
    forwards, backwards = [first_step - 1], [first_step - 1]  # steps begun, as counted by each hook

    def on_forward(module, args, output):
        if not module.training:
            return None
        forwards[0] += 1
        if faults.get(forwards[0]) != "nan-loss":
            return None
        logits, loss = output
        return logits, loss * float("nan")

    def on_grad(grad):
        backwards[0] += 1
        kind = faults.get(backwards[0])
        if kind not in ("nan-grad", "inf-grad"):
            return None
        grad = grad.clone()
        grad.view(-1)[0] = float("nan") if kind == "nan-grad" else float("inf")
        return grad

    model.register_forward_hook(on_forward)
    next(model.parameters()).register_hook(on_grad)
