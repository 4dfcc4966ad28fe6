"""``watch(model, run_dir, ...)``: what bitnet_ref's trainer records, recorded from inside anyone's training loop.

    w = watch(model, "runs/mine", optimizer=opt, data=val_token_ids, every=50)
    for batch in loader:
        loss = model(batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        w.step(loss)                      # one line per step; every ``every`` steps it also evaluates
    w.close()

It writes ``run_dir/metrics.jsonl`` in the trainer's schema (metrics_log.py), so ``bitnet-doctor run_dir`` gives
the full diagnosis: step records (loss, LR and weight decay read from the optimizer), and eval records with the
next-token loss on fixed windows of ``data``, the token-diversity probe (greedy samples from fixed prompts of
``data`` through the model itself) and the per-layer ternary health (health.py: code shares, flips, scale,
gradient split and update ratio per layer and per parameter group). The gradient and update figures come from
hooks on the optimizer's step, armed only for the update that ends at an evaluation, so the steps between cost
nothing but a counter and one log line. Without an optimizer, call ``after_backward()`` before and
``after_update()`` after the update yourself.

It never changes the training it watches: it reads gradients and weights and never writes them; it evaluates
without gradients, puts back every module's train/eval flag and the RNG state (CPU and CUDA). A failure inside
it is reported once (a warning) and that part is switched off; the training goes on. What it is not: a logger
of everything (it records what the doctor reads), or a trainer.
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref import metrics_log as M
from bitnet_ref.diversity import diversity, greedy_decode, probe_prompts
from bitnet_ref.health import HealthTracker, finite_or_none, param_groups
from bitnet_ref.watch.layers import (
    WatchError,
    embedding_of,
    find_ternary,
    head_of,
    logits_of,
    quiet,
    vocab_size_of,
)

FLAT_SKIP = ("kind", "layers", "groups", "samples")  # an eval record's non-scalar parts


class Watch:
    """The hook; build it with ``watch()``. ``records`` counts what it wrote; ``failed`` names the parts that
    failed and were switched off."""

    def __init__(
        self,
        model: nn.Module,
        run_dir,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        data=None,
        prompts=None,
        tokenizer=None,
        layers=None,
        every: int = 50,
        steps: int | None = None,
        probe_tokens: int = 32,
        probe_prompts_n: int = 4,
        prompt_len: int = 16,
        batch_size: int = 4,
        context: int | None = None,
        vocab_size: int | None = None,
        unigram_entropy: float | None = None,
        logits=None,
    ):
        if isinstance(getattr(model, "module", None), nn.Module) and type(model).__name__.endswith("DataParallel"):
            model = model.module  # type: ignore[assignment]  # DDP/DP: watch the model inside
        if not isinstance(model, nn.Module):
            raise WatchError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or every < 1:
            raise WatchError(f"every must be a positive number of steps, got {every!r}")
        self.model, self.every, self.steps, self.tokenizer = model, every, steps, tokenizer
        self.probe_tokens = probe_tokens
        self.logits = logits or logits_of
        self.ternary = find_ternary(model, layers)
        self.embedding, self.head = embedding_of(model), head_of(model, self.ternary)
        self.vocab_size = vocab_size or vocab_size_of(model, self.ternary)
        tokens = _token_ids(data, self.vocab_size) if data is not None else None
        self.prompts = _prompts(prompts, tokens, probe_prompts_n, prompt_len, self.vocab_size)
        self.context = context or _context_of(model) or 128
        self.batch = _windows(tokens, self.prompts, batch_size, self.context)  # (B, T+1) fixed, like the trainer's
        if unigram_entropy is None and tokens is not None:
            counts = np.bincount(tokens).astype(np.float64)
            p = counts[counts > 0] / counts.sum()
            unigram_entropy = float(-(p * np.log(p)).sum())
        self.unigram_entropy = unigram_entropy
        self.tracker = HealthTracker(
            layers=lambda m: self.ternary,
            groups=lambda m: param_groups(m, [x for _, x in self.ternary], self.embedding, self.head),
            logits=lambda m, idx: self.logits(m, idx),
            embedding=lambda m: (self.embedding, False) if self.embedding is not None else None,
        )
        self.optimizer, self.updates, self.count = optimizer, 0, 0
        self.failed: dict[str, str] = {}
        self.records = 0
        self._measuring = False
        self._handles = []
        if optimizer is not None:
            self._handles = [
                optimizer.register_step_pre_hook(lambda *a: self.after_backward(auto=True)),
                optimizer.register_step_post_hook(lambda *a: self.after_update(auto=True)),
            ]
        self.run_dir = Path(run_dir)
        path = self.run_dir / M.FILE_NAME
        if path.exists():
            raise WatchError(f"{path} already exists: give the watch a new run directory")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = M.MetricsLog(path)
        self.log.write(self._header())

    # ------------------------------------------------------------------------------------------ setup

    def _header(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        weights = [getattr(m, "weight", None) for _, m in self.ternary]
        n_tern = sum(w.numel() for w in weights if isinstance(w, torch.Tensor))
        return {
            "kind": M.HEADER,
            "source": "bitnet_ref.watch",
            "model": type(self.model).__name__,
            "config": {"vocab_size": self.vocab_size} if self.vocab_size else {},
            "train_config": {"steps": self.steps} if self.steps else {},
            "ln_vocab": math.log(self.vocab_size) if self.vocab_size else None,
            "unigram_entropy": self.unigram_entropy,
            "ternary_layers": [n for n, _ in self.ternary],
            "watch": {"every": self.every, "probe_tokens": self.probe_tokens, "prompts": len(self.prompts or [])},
            # the fixed loss windows, so that `bitnet-doctor DIR --checkpoint THEIRS` measures a checkpoint on them
            "val_windows": self.batch.tolist() if self.batch is not None else None,
            "params": n_params,
            "params_bitlinear": n_tern,
            "params_other": n_params - n_tern,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    # ------------------------------------------------------------------------------------------ guarding

    @contextmanager
    def _guard(self, part: str):
        """Run a part of the watch; on its first failure warn once and switch that part off. Never raises."""
        try:
            yield
        except Exception as e:  # the user's training must go on whatever the watch hits
            if part not in self.failed:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                self.failed[part] = f"{type(e).__name__}: {first}"
                warnings.warn(
                    f"bitnet_ref.watch: the {part} part failed ({self.failed[part]}); it is switched off and "
                    "training goes on",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _on(self, part: str) -> bool:
        return part not in self.failed

    # ------------------------------------------------------------------------------------------ per update

    def measures(self, step: int) -> bool:
        """Whether ``step`` ends at an evaluation (every ``every`` steps, and the planned last one)."""
        return step % self.every == 0 or (self.steps is not None and step == self.steps)

    def after_backward(self, auto: bool = False) -> None:
        """Before the optimizer's update: gradient statistics and a weight snapshot, on updates that end at an
        evaluation (``auto``: called by the optimizer hook). Call it yourself only without an optimizer."""
        self._measuring = False
        if not self._on("gradients") or not self.measures(self.updates + 1):
            return
        with self._guard("gradients"):
            self.tracker.after_backward(self.model)
            self._measuring = True

    def after_update(self, auto: bool = False) -> None:
        """Right after the optimizer's update (the optimizer hook calls it): the update ratios."""
        self.updates += 1
        if self._measuring and self._on("gradients"):
            with self._guard("gradients"):
                self.tracker.after_step(self.model)
        self._measuring = False

    def step(self, loss=None, *, step: int | None = None, lr=None, wd=None, grad_norm=None) -> dict | None:
        """Record one training step (after the optimizer's update); every ``every`` steps also evaluate.
        Returns the eval record's scalars when it evaluated, else None."""
        self.log_step(loss, step=step, lr=lr, wd=wd, grad_norm=grad_norm)
        return self.evaluate(self.count) if self.measures(self.count) else None

    def log_step(self, loss=None, *, step: int | None = None, lr=None, wd=None, grad_norm=None, **extra) -> None:
        """The step record alone (no evaluation): ``step`` defaults to the optimizer's update count (or a count of
        calls without one); LR and WD to the optimizer's; ``extra`` numbers (TRL's entropy, ...) go in as given."""
        self.count = step if step is not None else (self.updates if self.optimizer is not None else self.count + 1)
        with self._guard("step log"):
            rec = {"kind": M.STEP, "step": self.count}
            if self.optimizer is not None and self.optimizer.param_groups:
                groups = self.optimizer.param_groups
                lr = groups[0].get("lr") if lr is None else lr
                wd = max(float(g.get("weight_decay", 0.0) or 0.0) for g in groups) if wd is None else wd
            values = {"loss": loss, "lr": lr, "wd": wd, "grad_norm": grad_norm, **extra}
            for k, v in values.items():
                if isinstance(v, torch.Tensor):
                    v = v.detach().float().item()
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rec[k] = M.finite_or_none(float(v))
            self._write(rec)

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, step: int | None = None, *, val_loss: float | None = None) -> dict | None:
        """One eval record: the next-token loss on the fixed windows (or ``val_loss``, yours), the diversity
        probe and the health metrics. Returns its scalars (what the integrations put into the trainer's logs)."""
        step = self.count if step is None else step
        if not self._on("evaluation"):
            return None
        rec: dict = {"kind": M.EVAL, "step": step}
        with self._guard("evaluation"), torch.no_grad(), quiet(self.model):
            device = _device_of(self.model)
            if val_loss is None and self.batch is not None:
                x, y = self.batch[:, :-1].to(device), self.batch[:, 1:].to(device)
                logits = self.logits(self.model, x).float()  # (B, T, V)
                val_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
            rec["val_loss"] = None if val_loss is None else M.finite_or_none(float(val_loss))
            if self.prompts and self._on("diversity probe"):
                with self._guard("diversity probe"):
                    samples = self._greedy(device)
                    rec.update(diversity(samples))
                    rec["samples"] = [self._text(s) for s in samples]
            if self.batch is not None and self._on("health"):
                with self._guard("health"):
                    rec.update(self.tracker.evaluate(self.model, self.batch[:, :-1].to(device), step))
        if "val_loss" not in rec:
            return None
        rec = finite_or_none(rec)
        with self._guard("eval log"):
            self._write(rec)
        return {k: v for k, v in rec.items() if k not in FLAT_SKIP and isinstance(v, (int, float))}

    def _greedy(self, device) -> list[list[int]]:
        if callable(getattr(self.model, "new_cache", None)) and hasattr(self.model, "cfg"):
            return greedy_decode(self.model, self.prompts, self.probe_tokens)  # bitnet_ref's own: KV cache
        out = []
        for p in self.prompts:  # any model: the whole sequence again for every token (short prompts, few tokens)
            seq = torch.tensor([p], dtype=torch.long, device=device)
            for _ in range(self.probe_tokens):
                window = seq[:, -self.context :]
                nxt = self.logits(self.model, window)[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                seq = torch.cat([seq, nxt], dim=1)
            out.append(seq[0, len(p) :].tolist())
        return out

    def _text(self, tokens) -> str:
        if self.tokenizer is not None and callable(getattr(self.tokenizer, "decode", None)):
            return str(self.tokenizer.decode([int(t) for t in tokens]))
        if self.vocab_size == 256:
            return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
        return " ".join(str(int(t)) for t in tokens)

    def _write(self, rec: dict) -> None:
        self.log.write(rec)
        self.records += 1

    def close(self) -> None:
        """Remove the optimizer hooks, write the "end" record and close metrics.jsonl (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if not self.log.f.closed:
            with self._guard("end record"):
                self.log.write({"kind": M.END, "steps_done": self.count, "watch_failures": self.failed})
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def watch(model: nn.Module, run_dir, **kw) -> Watch:
    """A ``Watch`` on ``model`` writing into ``run_dir``; see the module docstring and docs/watch.md.

    Keywords: ``optimizer`` (its step hooks give gradient and update figures, its groups LR and WD), ``data``
    (held-out token ids: probe prompts, the fixed loss windows, the unigram entropy), ``prompts`` (token-id
    lists instead), ``tokenizer`` (to turn samples into text), ``layers`` (names, a glob, a class or a
    predicate, when the ternary layers are not to be found by behaviour), ``every`` (steps between
    evaluations), ``steps`` (the planned total), ``probe_tokens``, ``batch_size`` and ``context`` (the loss
    windows), ``vocab_size``, ``unigram_entropy``, ``logits`` ((model, ids) -> logits).
    WatchError (a ValueError, one line) for a model or arguments it cannot work with."""
    return Watch(model, run_dir, **kw)


# ---------------------------------------------------------------------------------------------- inputs


def _token_ids(data, vocab_size: int | None) -> np.ndarray:
    try:
        arr = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data).reshape(-1)
    except (TypeError, ValueError) as e:
        raise WatchError(f"data must be token ids (a 1-D sequence of integers): {e}") from None
    if arr.size == 0:
        raise WatchError("data holds no tokens")
    if not np.issubdtype(arr.dtype, np.integer):
        raise WatchError(f"data must be integer token ids, got {arr.dtype}")
    if arr.min() < 0 or (vocab_size is not None and arr.max() >= vocab_size):
        raise WatchError(
            f"data holds token id {int(arr.max() if arr.min() >= 0 else arr.min())}, outside the "
            f"model's vocabulary of {vocab_size}"
        )
    return arr.astype(np.int64)


def _prompts(prompts, tokens, n: int, length: int, vocab_size: int | None):
    if prompts is not None:
        out = [[int(t) for t in p] for p in prompts]
        if not out or any(len(p) == 0 for p in out):
            raise WatchError("prompts must be non-empty lists of token ids")
        if vocab_size is not None and any(not 0 <= t < vocab_size for p in out for t in p):
            raise WatchError(f"a prompt holds a token id outside the model's vocabulary of {vocab_size}")
        return out
    if tokens is None:
        return None
    try:
        return probe_prompts(tokens, n, min(length, max(1, len(tokens) - 1)))
    except ValueError as e:
        raise WatchError(str(e)) from None


def _windows(tokens, prompts, batch: int, context: int) -> torch.Tensor | None:
    """``batch`` fixed windows of ``context + 1`` tokens evenly spaced through ``tokens`` (the prompts, cut to
    one length, when there are no tokens)."""
    if tokens is None:
        if not prompts or min(len(p) for p in prompts) < 2:
            return None
        k = min(len(p) for p in prompts)
        return torch.tensor([p[:k] for p in prompts], dtype=torch.long)
    t = min(context, len(tokens) - 1)
    if t < 1:
        raise WatchError(f"data holds {len(tokens)} tokens: too few for one loss window")
    room = len(tokens) - (t + 1)
    starts = [i * room // max(batch - 1, 1) for i in range(batch)]
    return torch.from_numpy(np.stack([tokens[s : s + t + 1] for s in starts]))


def _context_of(model: nn.Module) -> int | None:
    """The longest input the model (or a module inside it: a LightningModule's model) takes, capped at 128."""
    for m in model.modules():
        for cfg, key in ((getattr(m, "cfg", None), "context"), (getattr(m, "config", None), "max_position_embeddings")):
            v = getattr(cfg, key, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 1:
                return min(v, 128)
    return None


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
