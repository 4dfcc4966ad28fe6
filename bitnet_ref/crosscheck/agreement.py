"""Runtime vs file: the same token ids through a runtime and through the exact reference of the same file.

``check_runtime`` asks the runtime (in a child process, child.py) for its logits four ways: the sequence in one
batch (its prefill path) and one token at a time (its incremental path), on one thread and on ``threads``, the
latter twice (a race shows as two runs that differ). Each is compared with the reference: the file's
``FileModel`` computed with the activation quantization that runtime does (runtime/act_modes.py), teacher forced
over the same ids. ``Agreement`` holds top-1 agreement, the largest logit difference per position, its median and
maximum over the positions (relative to the largest reference logit), and the first divergent position.

"Agrees to float rounding" is measured, not assumed: how far float rounding alone moves this model's logits on this
sequence depends on the model (a last-bit change moves an int8 activation code by one step where a value sits on a
rounding boundary, and a random model's values sit there far more often than a trained one's). So the reference
is run again with its normalised activations moved by about one float32 ulp (``NOISE_EPS``, a few seeds), and a
runtime agrees when its median and largest differences are within ``NOISE_FACTOR`` times that, or within the
floors (thresholds.py), whichever is larger.

Where a runtime disagrees, the reference is recomputed with the other activation modes (per token, per
256-block, per tensor, none): a runtime that matches one of those quantizes differently from what it should. The
diagnosis says where the difference is: the kernel or its arithmetic (prefill and incremental alike wrong), the
prefill path, the incremental path (KV cache, positions), threads. The numbers judged are in thresholds.py.
What this is not: the comparison of tensors (tensors.py) or the command (command.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from bitnet_ref.crosscheck.child import RuntimeFailure, run_runtime
from bitnet_ref.crosscheck.runtimes import EXPECTS
from bitnet_ref.formats.file_model import FileModel
from bitnet_ref.generate import teacher_forced
from bitnet_ref.model import RMSNorm
from bitnet_ref.runtime.act_modes import ACT_MODES
from bitnet_ref.thresholds import (
    NOISE_EPS,
    NOISE_FACTOR,
    NOISE_SEEDS,
    RUNTIME_MAX_FLOOR,
    RUNTIME_MEDIAN_FLOOR,
)

MODE_TEXT = {
    "token": "per token (the BitNet recipe)",
    "block": "per 256-element block (llama.cpp's Q8_K)",
    "tensor": "per tensor (one scale for the whole input)",
    "none": "not at all (float activations)",
    "file": "as the file's own runtime does",
}


@dataclass
class Agreement:
    top1: float  # share of positions whose argmax is the reference's
    max_abs: float  # largest |logit difference|
    rel: float  # max_abs / largest |reference logit|
    median: float  # median over positions of the largest |difference| there, / largest |reference logit|
    tol: tuple = (RUNTIME_MEDIAN_FLOOR, RUNTIME_MAX_FLOOR)  # (median, largest) within which it agrees
    per_position: list = field(default_factory=list)  # largest |difference| at each position
    first_divergent: int | None = None  # first position whose difference is over the median tolerance

    @property
    def ok(self) -> bool:
        return self.median <= self.tol[0] and self.rel <= self.tol[1]

    def line(self) -> str:
        where = "" if self.first_divergent is None else f", first divergent position {self.first_divergent}"
        return (
            f"top-1 agreement {self.top1:.3f}, logit difference median {self.median:.3%} / largest {self.max_abs:.3g} "
            f"({self.rel:.2%}) of the largest logit, float rounding allows {self.tol[0]:.3%} / {self.tol[1]:.2%}{where}"
        )


def agreement(ref: np.ndarray, got: np.ndarray, tol: tuple = (RUNTIME_MEDIAN_FLOOR, RUNTIME_MAX_FLOOR)) -> Agreement:
    """Compare logits (T, V) of a runtime with the reference's."""
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))  # (T, V)
    per = diff.max(axis=1)
    scale = float(np.abs(ref).max()) or 1.0
    over = np.nonzero(per > tol[0] * scale)[0]
    return Agreement(
        top1=float((got.argmax(1) == ref.argmax(1)).mean()),
        max_abs=float(per.max()),
        rel=float(per.max()) / scale,
        median=float(np.median(per)) / scale,
        tol=tuple(float(t) for t in tol),
        per_position=[float(x) for x in per],
        first_divergent=int(over[0]) if over.size else None,
    )


class Reference:
    """The file's reference logits for one sequence, per activation mode (computed once each), and how far float
    rounding alone moves them (``tolerance``)."""

    def __init__(self, fm: FileModel, ids: list[int], threads: int = 1):
        self.fm, self.ids, self.threads, self._cache, self._tol = fm, ids, threads, {}, {}

    def logits(self, act: str, seed: int | None = None) -> np.ndarray:
        key = (act, seed)
        if key not in self._cache:
            model = self.fm.model(act=act, threads=self.threads)
            if seed is not None:
                _nudge_norms(model, seed)
            self._cache[key] = teacher_forced(model, [self.ids])[0].numpy()
        return self._cache[key]

    def tolerance(self, act: str) -> tuple:
        """(median, largest) relative differences a faithful runtime stays within for ``act``."""
        if act not in self._tol:
            base = self.logits(act)
            noise = [agreement(base, self.logits(act, seed)) for seed in range(NOISE_SEEDS)]
            med, big = max(a.median for a in noise), max(a.rel for a in noise)
            self._tol[act] = (max(RUNTIME_MEDIAN_FLOOR, NOISE_FACTOR * med), max(RUNTIME_MAX_FLOOR, NOISE_FACTOR * big))
        return self._tol[act]

    def compare(self, act: str, got: np.ndarray) -> Agreement:
        return agreement(self.logits(act), got, self.tolerance(act))


def _nudge_norms(model, seed: int) -> None:
    """Move every RMSNorm output by +-NOISE_EPS relative (a float32 ulp or two), the size of a change of float
    summation order, with a seeded sign per element."""
    gen = torch.Generator().manual_seed(seed)

    def hook(module, inputs, out):
        sign = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
        return out * (1 + NOISE_EPS * sign)

    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.register_forward_hook(hook)


@dataclass
class RuntimeReport:
    runtime: str
    expects: str  # the activation mode its reference computes
    prefill: Agreement | None = None
    incremental: Agreement | None = None
    threads: dict = field(default_factory=dict)  # {"n": N, "vs_one": Agreement-like dict, "repeat": ...}
    matches: str | None = None  # another activation mode the runtime agrees with, when not its own
    where: list = field(default_factory=list)  # prefill, incremental, threads, kernel
    skipped: list = field(default_factory=list)  # checks the runtime does not offer
    error: str | None = None  # one line: it crashed, hung, returned the wrong shape

    @property
    def ok(self) -> bool:
        return self.error is None and not self.where

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def check_runtime(
    name: str,
    fm: FileModel,
    model_path: str,
    ids: list[int],
    *,
    threads: int,
    timeout: float,
    expects: str | None = None,
) -> RuntimeReport:
    """Everything crosscheck measures about one runtime on one file (see the module docstring)."""
    rep = RuntimeReport(name, expects or EXPECTS.get(name, "token"))
    ref = Reference(fm, ids)
    V = fm.cfg.vocab_size

    def run(incremental=False, n=1):
        return run_runtime(name, model_path, ids, incremental=incremental, threads=n, timeout=timeout, vocab=V)

    try:
        pre, offers = run()
        rep.prefill = ref.compare(rep.expects, pre)
        inc = None
        if offers.get("incremental"):
            inc, _ = run(incremental=True)
            rep.incremental = ref.compare(rep.expects, inc)
        else:
            rep.skipped.append("incremental (the runtime takes no incremental argument)")
        if offers.get("threads") and threads > 1:
            a, _ = run(n=threads)
            b, _ = run(n=threads)
            tol = ref.tolerance(rep.expects)
            rep.threads = {
                "n": threads,
                "vs_one": asdict(agreement(pre, a, tol)),
                "repeat": asdict(agreement(a, b, tol)),
            }
        elif threads > 1:
            rep.skipped.append("threads (the runtime takes no threads argument)")
    except RuntimeFailure as e:
        rep.error = str(e)
        return rep
    _diagnose(rep, ref, pre, inc)
    return rep


def _diagnose(rep: RuntimeReport, ref: Reference, pre: np.ndarray, inc: np.ndarray | None) -> None:
    """Where the runtime differs, and (for the path that differs) which other activation mode it computes."""
    p_ok = rep.prefill.ok
    i_ok = rep.incremental is None or rep.incremental.ok
    wrong = None
    if not p_ok and (rep.incremental is None or not i_ok):
        rep.where.append("kernel")
        wrong = pre
    elif not p_ok:
        rep.where.append("prefill")
        wrong = pre
    elif not i_ok:
        rep.where.append("incremental")
        wrong = inc
    if wrong is not None:
        rep.matches = next((a for a in ACT_MODES if a != rep.expects and ref.compare(a, wrong).ok), None)
    t = rep.threads
    if t and not (Agreement(**t["vs_one"]).ok and Agreement(**t["repeat"]).ok):
        rep.where.append("threads")


def describe(rep: RuntimeReport) -> str:
    """One line: what is wrong with the runtime, where."""
    if rep.error:
        return rep.error
    if not rep.where:
        return f"{rep.runtime} computes what the file encodes ({rep.prefill.line()})"
    parts = []
    how = (
        f": it quantizes activations {MODE_TEXT[rep.matches]}, where {MODE_TEXT[rep.expects]} was expected"
        if rep.matches
        else ""
    )
    if "kernel" in rep.where:
        parts.append(f"its products differ in prefill and incremental decoding alike{how} ({rep.prefill.line()})")
    if "prefill" in rep.where:
        parts.append(
            f"its prefill (the prompt in one batch) differs while one token at a time agrees{how} "
            f"({rep.prefill.line()})"
        )
    if "incremental" in rep.where:
        parts.append(
            f"one token at a time (its KV cache, positions) differs while the prompt in one batch agrees{how} "
            f"({rep.incremental.line()})"
        )
    if "threads" in rep.where:
        t = rep.threads
        parts.append(
            f"{t['n']} threads differ from 1 (relative {t['vs_one']['rel']:.2%}) or from themselves "
            f"(relative {t['repeat']['rel']:.2%}): a race or an order-dependent reduction"
        )
    return f"{rep.runtime}: " + "; ".join(parts)


def to_ids(x) -> list[int]:
    return [int(t) for t in (x.tolist() if isinstance(x, torch.Tensor) else x)]
