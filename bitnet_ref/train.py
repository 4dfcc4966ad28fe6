"""``python -m bitnet_ref.train``: train a BitNet b1.58 (or full-precision) LM and record everything it did.

One loop, read top to bottom (``train``): build data, model and AdamW; for each step set LR/WD from the
two-stage schedule, draw that step's batch, forward/backward, check for non-finite values, clip, update;
evaluate (validation loss + the diversity probe) at the chosen points; checkpoint atomically.

Outputs in ``--out`` (default ``runs/<timestamp>-<quant>``):
- ``metrics.jsonl``: header record (config, ``ln_vocab``, ``unigram_entropy``, data, parameter counts), then
  one ``"step"`` record per step, ``"eval"`` records (val loss, the diversity probe, and the health metrics of
  ``health.py``: ``layers`` and ``health_*``), and an ``"end"`` record when the run completes. Each
  line is written with one ``write`` and flushed, so a kill leaves at most a torn last line.
- ``ckpt.pt``: see ``checkpoint.py``. Saved every ``--save-every`` steps and at the end; never with NaN/inf.

Exact resume: the batch for step ``s`` comes from a generator seeded by ``(seed, s)`` (the *global* batch;
each DDP rank takes its slice), and the checkpoint holds the model, the AdamW state, the step and the RNG
state, so ``--stop-at K`` then ``--resume`` gives bit-identical losses to a straight run on CPU with the same
thread count, device and number of processes. Across processes or devices it holds only to float tolerance.
On resume, ``metrics.jsonl`` is cut back to the checkpoint (torn last line and later records dropped).

Distributed: under ``torchrun`` (``RANK`` set) it runs DDP (gloo on CPU, NCCL on CUDA); only rank 0 logs
and saves; ``--batch-size`` is the global batch. CUDA runs use bf16 autocast with fp32 master weights.

Exit codes: 0 done, 2 bad input (flags, data, checkpoint), 3 stopped on a non-finite loss/gradient, 130 Ctrl-C.
What this is not: a general trainer (no grad accumulation, no mixed datasets, no LR finder).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import DataError, get_batch, load_corpus
from .health import HealthTracker
from .model import ABLATIONS, PRESETS, BitLinear, ModelConfig, Transformer
from .probe import diversity, greedy_decode, probe_prompts
from .cli import OneLineParser, whole_at_least
from .schedule import ScheduleConfig, lr_at, stage_at, wd_at

FAULT_ENV = "BITNET_REF_FAULT"  # test-only fault injection, e.g. "nan-loss@5,inf-grad@7" (1-based steps)
RUNTIME_FIELDS = {"device", "autocast", "out", "resume", "stop_at", "save_every", "skip_nonfinite", "threads",
                  "log_every"}  # may differ on --resume; every other setting must match the checkpoint


class ConfigError(ValueError):
    """Bad flags or settings; one line."""


class NonFiniteError(RuntimeError):
    """Training stopped because a loss or gradient was NaN/inf; one line."""


@dataclass
class TrainConfig:
    # model (None = the preset's value)
    preset: str = "default"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    ffn_hidden: int | None = None
    context: int | None = None
    quant: str = "ternary"
    ffn_act: str | None = None
    ablate: list = field(default_factory=list)
    # optimisation and schedule (the schedule's defaults are schedule.ScheduleConfig's)
    steps: int = 1000
    batch_size: int = 16
    lr: float = ScheduleConfig.lr
    lr2: float = ScheduleConfig.lr2
    warmup: int = ScheduleConfig.warmup
    wd: float = ScheduleConfig.wd
    stage2_wd: float = ScheduleConfig.stage2_wd
    stage_split: float = ScheduleConfig.stage_split
    stage1_only: bool = ScheduleConfig.stage1_only
    grad_clip: float = 1.0
    # evaluation
    eval_every: int = 0  # 0 = use eval_at
    eval_at: str = "0,0.25,0.5,0.75,1"
    eval_batches: int = 8
    probe_prompts: int = 4
    probe_prompt_len: int = 16
    probe_tokens: int = 48
    # data
    data: str | None = None
    vocab_size: int | None = None
    val_fraction: float = 0.1
    # run
    seed: int = 1337
    device: str = "auto"
    autocast: str = "auto"
    out: str | None = None
    save_every: int = 0  # 0 = only at the end
    resume: bool = False
    stop_at: int | None = None
    skip_nonfinite: bool = False
    threads: int | None = None
    log_every: int = 50


# ---------------------------------------------------------------------------------------------- setup


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown --preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    over = {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context", "ffn_act")
            if getattr(cfg, k) is not None}
    try:
        return ModelConfig.from_dict({**PRESETS[cfg.preset], **over, "quant": cfg.quant,
                                      "vocab_size": vocab_size, "ablate": list(cfg.ablate)})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def schedule_config(cfg: TrainConfig) -> ScheduleConfig:
    try:
        return ScheduleConfig(steps=cfg.steps, lr=cfg.lr, lr2=cfg.lr2, warmup=cfg.warmup, wd=cfg.wd,
                              stage2_wd=cfg.stage2_wd, stage_split=cfg.stage_split, stage1_only=cfg.stage1_only,
                              const_wd="const-wd" in cfg.ablate)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def eval_steps(cfg: TrainConfig) -> set[int]:
    """Steps (counted in completed updates, 0 = before training) that get an eval; the end always does."""
    n = cfg.steps
    if cfg.eval_every:
        return set(range(0, n + 1, cfg.eval_every)) | {n}
    try:  # "end" is a synonym of 1
        fracs = [1.0 if f.strip() == "end" else float(f) for f in cfg.eval_at.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--eval-at takes fractions like 0,0.25,0.5,0.75,1 or 'end', got {cfg.eval_at!r}") from None
    if not fracs or any(not 0 <= f <= 1 for f in fracs):
        raise ConfigError(f"--eval-at fractions must lie in [0, 1], got {cfg.eval_at!r}")
    return {int(round(f * n)) for f in fracs} | {n}


def check_config(cfg: TrainConfig) -> None:
    """Everything that can be checked before touching data or disk."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    for k in ("steps", "batch_size", "eval_batches", "probe_prompts", "probe_prompt_len", "log_every"):
        v = getattr(cfg, k)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"--{k.replace('_', '-')} must be >= 1, got {v!r}")
    for k in ("eval_every", "save_every", "probe_tokens", "warmup"):
        v = getattr(cfg, k)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"--{k.replace('_', '-')} must be >= 0, got {v!r}")
    need(cfg.quant in ("ternary", "none"), f"--quant must be ternary or none, got {cfg.quant!r}")
    need(cfg.autocast in ("auto", "bf16", "off"), f"--autocast must be auto, bf16 or off, got {cfg.autocast!r}")
    for a in cfg.ablate:
        need(a in ABLATIONS, f"unknown --ablate {a!r}; choose from {', '.join(ABLATIONS)}")
    need(math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, f"--grad-clip must be >= 0, got {cfg.grad_clip}")
    need(cfg.stop_at is None or 1 <= cfg.stop_at <= cfg.steps, f"--stop-at must be in [1, --steps], got {cfg.stop_at}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.resume is False or cfg.out is not None, "--resume continues the run in --out DIR: pass --out")
    schedule_config(cfg)
    eval_steps(cfg)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        raise ConfigError(f"--device {name!r} is not supported; use auto, cpu or cuda")
    return dev


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    if "RANK" not in os.environ:
        return Dist(), resolve_device(cfg.device)
    import torch.distributed as td

    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
    device = resolve_device(cfg.device, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % d.world:
        td.destroy_process_group()
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {d.world} processes")
    return d, device


def all_mean(x: float, dist: Dist, device) -> float:
    if not dist.enabled:
        return x
    import torch.distributed as td

    t = torch.tensor([x], dtype=torch.float64, device=device)
    td.all_reduce(t)
    return float(t.item()) / dist.world


def seed_for(seed: int, stream: str, step: int = 0) -> int:
    """A 63-bit generator seed for (seed, stream, step); independent of process count."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}/{step}".encode()).digest()[:8], "little") >> 1


def param_groups(model: nn.Module) -> list[dict]:
    """Weight decay on the matrices (BitLinear and other Linear weights); none on norms and embeddings."""
    embed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    mats = {id(m.weight) for m in model.modules() if isinstance(m, (BitLinear, nn.Linear))} - embed
    decay, no_decay = [], []
    for p in model.parameters():  # .parameters() yields a tied weight once
        (decay if id(p) in mats else no_decay).append(p)
    return [{"params": decay, "weight_decay": 0.0, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def autocast_for(device: torch.device, mode: str):
    on = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def faults() -> dict[int, str]:
    """Parse BITNET_REF_FAULT ("nan-loss@5,inf-grad@7") into {step: kind}; used by the tests only."""
    out = {}
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        kind, _, step = item.partition("@")
        out[int(step)] = kind
    return out


# ---------------------------------------------------------------------------------------------- metrics file


class MetricsLog:
    """Append-only JSON lines; each record is one write() of a complete line, then flush."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, allow_nan=False) + "\n")
        self.f.flush()

    def sync(self) -> None:
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def repair_metrics(path: Path, step: int) -> int:
    """Cut metrics.jsonl back to checkpoint ``step``: drop a torn/invalid line and records after ``step``.

    Rewritten atomically. Returns the number of lines dropped.
    """
    if not path.exists():
        return 0
    parts = path.read_bytes().split(b"\n")
    complete, torn = parts[:-1], parts[-1]  # `torn` is b"" when the file ends with a newline
    keep, dropped = [], int(bool(torn))
    for line in complete:
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and (rec.get("kind") == "header" or rec.get("step", 0) <= step)
        except ValueError:
            ok = False
        if ok:
            keep.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in keep))
    os.replace(tmp, path)
    return dropped


# ---------------------------------------------------------------------------------------------- evaluation


def eval_extras(model: nn.Module, *, step: int, val_batch: torch.Tensor) -> dict:
    """>>> HOOK: extra fields merged into every eval record (per-layer health metrics plug in here). <<<

    Returns {} for now. ``model`` is the unwrapped model in eval mode; ``val_batch`` (B, T) validation ids.
    """
    return {}


@torch.no_grad()
def evaluate(model, corpus, cfg, mcfg, device, dist, prompts, step, tracker=None) -> dict:
    """Validation loss on a fixed set of batches (same every eval) and, on rank 0, the greedy probe."""
    model.eval()
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, "val"))
    per = cfg.batch_size // dist.world
    total, first = 0.0, None
    for _ in range(cfg.eval_batches):
        x, y = get_batch(corpus.val, cfg.batch_size, mcfg.context, gen)  # (B, T) global batch
        x, y = x[dist.rank * per:(dist.rank + 1) * per], y[dist.rank * per:(dist.rank + 1) * per]  # (B/W, T)
        first = x if first is None else first
        with autocast_for(device, cfg.autocast):
            _, loss = model(x.to(device), y.to(device))
        total += float(loss)
    rec = {"kind": "eval", "step": step, "val_loss": all_mean(total / cfg.eval_batches, dist, device)}
    if dist.main:
        samples = greedy_decode(model, prompts, cfg.probe_tokens)
        rec.update(diversity(samples))
        rec["samples"] = [sample_text(corpus, s) for s in samples]
        rec.update(eval_extras(model, step=step, val_batch=first.to(device)))
        if tracker is not None:  # health metrics (health.py): codes, flips, gradients, activations, logits
            rec.update(tracker.evaluate(model, first.to(device), step))
    model.train()
    return rec


def sample_text(corpus, tokens) -> str:
    if corpus.byte_level:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
    return " ".join(str(int(t)) for t in tokens)


# ---------------------------------------------------------------------------------------------- the run


def _new_out_dir(cfg: TrainConfig) -> Path:
    if cfg.out is not None:
        out = Path(cfg.out)
        if (out / "ckpt.pt").exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if (out / "metrics.jsonl").exists():
            raise ConfigError(f"{out} holds a run that stopped before its first checkpoint, so it cannot be "
                              "resumed; delete it or choose another --out")
        return out
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.quant}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


def _check_resume(cfg: TrainConfig, ckpt: dict, out: Path) -> None:
    saved = ckpt.get("train_config", {})
    for f in dataclasses.fields(TrainConfig):
        if f.name in RUNTIME_FIELDS or f.name not in saved:
            continue
        if saved[f.name] != getattr(cfg, f.name):
            raise ConfigError(f"--{f.name.replace('_', '-')} is {getattr(cfg, f.name)!r} but the run in {out} used "
                              f"{saved[f.name]!r}; a resumed run keeps its settings")
    if ckpt["step"] >= cfg.steps:
        raise ConfigError(f"the run in {out} is already complete ({ckpt['step']}/{cfg.steps} steps)")
    if cfg.stop_at is not None and cfg.stop_at <= ckpt["step"]:
        raise ConfigError(f"--stop-at {cfg.stop_at} is not after the checkpoint's step {ckpt['step']}")


def train(cfg: TrainConfig, log=print) -> dict:
    """Run training as configured; returns a summary dict. Raises ConfigError/DataError/CheckpointError on bad
    input and NonFiniteError when a loss or gradient is NaN/inf (unless skip_nonfinite)."""
    check_config(cfg)
    dist, device = init_distributed(cfg)
    threads = torch.get_num_threads()
    try:
        summary = _train(cfg, dist, device, log if dist.main else (lambda *a, **k: None))
        if dist.enabled:  # rank 0 may still be probing/saving; a peer that tears gloo down first aborts (SIGABRT)
            import torch.distributed as td

            td.barrier()
        return summary
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back
        if dist.enabled:
            import torch.distributed as td

            td.destroy_process_group()


def _train(cfg: TrainConfig, dist: Dist, device: torch.device, log) -> dict:
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sched = schedule_config(cfg)
    # ---- data and run directory (nothing is written before the inputs are known to be good)
    ckpt = None
    if cfg.resume:
        out = Path(cfg.out)
        ckpt = load_checkpoint(out / "ckpt.pt")
        _check_resume(cfg, ckpt, out)
    corpus = load_corpus(cfg.data, cfg.vocab_size, cfg.val_fraction)
    mcfg = model_config(cfg, corpus.vocab_size)
    corpus.require(mcfg.context)
    if cfg.probe_prompt_len + cfg.probe_tokens > mcfg.context:
        raise ConfigError(f"--probe-prompt-len {cfg.probe_prompt_len} + --probe-tokens {cfg.probe_tokens} exceed "
                          f"the context {mcfg.context}")
    if ckpt is not None:
        if ckpt["config"] != asdict(mcfg):
            raise CheckpointError(f"{out / 'ckpt.pt'}: its model config does not match the run's settings")
        saved_data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
        if saved_data.get("fingerprint") != corpus.fingerprint:
            raise DataError(f"the data ({corpus.source}) differs from the data the checkpoint was trained on")
    if not cfg.resume:
        if not dist.enabled:
            out = _new_out_dir(cfg)
        else:  # rank 0 alone checks --out (a peer checking later would see rank 0's files) and tells the rest
            import torch.distributed as td

            box = [None, None]
            if dist.main:
                try:
                    box[0] = str(_new_out_dir(cfg))
                except ConfigError as e:
                    box[1] = str(e)
            td.broadcast_object_list(box, src=0)
            if box[1] is not None:
                raise ConfigError(box[1])
            out = Path(box[0])
    prompts = probe_prompts(corpus.val, cfg.probe_prompts, cfg.probe_prompt_len)
    ln_vocab, unigram = math.log(corpus.vocab_size), corpus.unigram_entropy()

    # ---- model and optimizer (fp32 master weights; autocast only changes the compute dtype)
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)
    opt = torch.optim.AdamW(param_groups(model), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    start, last_val, skipped = 0, None, 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{out / 'ckpt.pt'} cannot be resumed: {first}") from None
        start, last_val, skipped = ckpt["step"], ckpt.get("last_val_loss"), ckpt.get("skipped_nonfinite", 0)
    raw = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = sum(p.numel() for p in raw.parameters())
    n_bitlinear = sum(m.weight.numel() for _, m in raw.bitlinears())

    metrics_path, ckpt_path = out / "metrics.jsonl", out / "ckpt.pt"
    metrics = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            dropped = repair_metrics(metrics_path, start)
            metrics = MetricsLog(metrics_path)
            metrics.write({"kind": "resume", "step": start, "dropped_lines": dropped})
            log(f"resuming {out} at step {start}/{cfg.steps}" + (f" ({dropped} metrics lines after it dropped)"
                                                                   if dropped else ""))
        else:
            metrics = MetricsLog(metrics_path)
            metrics.write({
                "kind": "header", "config": asdict(mcfg), "train_config": asdict(cfg), "ln_vocab": ln_vocab,
                "unigram_entropy": unigram, "data": corpus.info(), "params": n_params,
                "params_bitlinear": n_bitlinear, "params_other": n_params - n_bitlinear, "world_size": dist.world,
                "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            })
        log(f"data: {corpus.source} | {len(corpus.train):,} train / {len(corpus.val):,} val tokens | "
            f"unigram entropy {unigram:.3f} nats, ln V {ln_vocab:.3f}")
        log(f"model: {cfg.preset} d_model {mcfg.d_model}, {mcfg.n_layers} layers, context {mcfg.context}, "
            f"quant {mcfg.quant} | {n_params / 1e6:.2f}M params | {cfg.steps} steps x {cfg.batch_size} x "
            f"{mcfg.context} tokens on {device}" + (f" x {dist.world} processes" if dist.enabled else ""))

    def save(step: int) -> None:
        if not dist.main:
            return
        metrics.sync()
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        save_checkpoint(ckpt_path, {
            "config": asdict(mcfg), "train_config": asdict(cfg), "model": raw.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "rng": rng, "last_val_loss": last_val,
            "unigram_entropy": unigram, "ln_vocab": ln_vocab, "data": corpus.info(),
            "skipped_nonfinite": skipped, "world_size": dist.world,
        })

    def do_eval(step: int) -> dict:
        nonlocal last_val
        rec = evaluate(raw, corpus, cfg, mcfg, device, dist, prompts, step, tracker)
        last_val = rec["val_loss"]
        if dist.main:
            metrics.write(rec)
            log(f"eval {step}/{cfg.steps} | val loss {rec['val_loss']:.4f} (unigram {unigram:.3f}, ln V "
                f"{ln_vocab:.3f}) | unique {rec['unique_tokens']} | distinct-1 {rec['distinct_1']:.3f} | "
                f"distinct-2 {rec['distinct_2']:.3f} | max run {rec['max_repeat_run']} | "
                f"top share {rec['top_token_share']:.2f}")
            log(f"  sample: {rec['samples'][0][:100]!r}")
        return rec

    # ---- the loop; `step` counts completed updates, update s uses schedule index s
    evals, fault = eval_steps(cfg), faults()
    tracker = HealthTracker() if dist.main else None  # gradient/flip/activation health at each eval
    end = cfg.stop_at or cfg.steps
    last_saved = start if ckpt is not None else None
    last_eval = None
    if start == 0 and 0 in evals:
        last_eval = do_eval(0)
    per = cfg.batch_size // dist.world
    tokens_per_step = cfg.batch_size * mcfg.context
    t_log, tok_log, tok_total, t_train = time.perf_counter(), 0, 0, 0.0
    model.train()
    for s in range(start, end):
        t0 = time.perf_counter()
        lr, wd = lr_at(s, sched), wd_at(s, sched)
        for g in opt.param_groups:
            g["lr"] = lr
            g["weight_decay"] = wd if g["decay"] else 0.0
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, "train", s))
        x, y = get_batch(corpus.train, cfg.batch_size, mcfg.context, gen)  # (B, T) global batch
        x, y = x[dist.rank * per:(dist.rank + 1) * per], y[dist.rank * per:(dist.rank + 1) * per]  # this rank's
        with autocast_for(device, cfg.autocast):
            _, loss = model(x.to(device), y.to(device))
        if fault.get(s + 1) == "nan-loss":
            loss = loss * float("nan")
        loss.backward()
        if fault.get(s + 1) in ("nan-grad", "inf-grad"):
            p = next(raw.parameters())
            p.grad.view(-1)[0] = float("nan") if fault[s + 1] == "nan-grad" else float("inf")
        if tracker is not None and s + 1 in evals:
            tracker.after_backward(raw)  # gradient stats before clipping
        gnorm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf")))
        loss_val = all_mean(float(loss.detach()), dist, device)
        bad = None if math.isfinite(loss_val) else "loss"
        bad = bad or (None if math.isfinite(gnorm) else "gradient norm")
        rec = {"kind": "step", "step": s + 1, "loss": _num(loss_val), "lr": lr, "wd": wd,
               "stage": stage_at(s, sched), "grad_norm": _num(gnorm)}
        if bad is None:
            opt.step()
            if tracker is not None and s + 1 in evals:
                tracker.after_step(raw)
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        t_train += dt
        rec["tok_s"] = tokens_per_step / dt
        if bad is not None:
            what = f"the {bad} is {loss_val if bad == 'loss' else gnorm}"
            if not cfg.skip_nonfinite:
                where = (f"last good checkpoint: {ckpt_path} (step {last_saved})" if last_saved is not None
                         else "no checkpoint was saved yet")
                msg = (f"step {s + 1}: {what} (non-finite); stopped without updating; {where}; "
                       f"rerun with --skip-nonfinite to skip such updates")
                if dist.main:
                    metrics.write({"kind": "stop", "step": s + 1, "reason": f"non-finite {bad}"})
                    metrics.close()
                raise NonFiniteError(msg)
            skipped += 1
            rec.update(skipped=True, nonfinite=bad, skipped_total=skipped)
            log(f"step {s + 1}/{cfg.steps} | {what}: update skipped ({skipped} so far)")
        tok_log += tokens_per_step
        tok_total += tokens_per_step
        if dist.main:
            metrics.write(rec)
            if (s + 1) % cfg.log_every == 0 or s == start or s + 1 == end:
                now = time.perf_counter()
                log(f"step {s + 1}/{cfg.steps} | loss {loss_val:.4f} | lr {lr:.2e} | wd {wd:.3f} | "
                    f"{tok_log / (now - t_log) / 1e3:.1f}k tok/s")
                t_log, tok_log = now, 0
        if s + 1 in evals:
            last_eval = do_eval(s + 1)
            t_log, tok_log = time.perf_counter(), 0  # keep eval time out of the tok/s figure
        if (cfg.save_every and (s + 1) % cfg.save_every == 0) or s + 1 == end:
            save(s + 1)
            last_saved = s + 1

    wall = time.time() - t_start
    summary = {
        "out": str(out), "metrics": str(metrics_path), "checkpoint": str(ckpt_path), "steps_done": end,
        "steps": cfg.steps, "complete": end == cfg.steps, "val_loss": last_val, "unigram_entropy": unigram,
        "ln_vocab": ln_vocab, "skipped_nonfinite": skipped, "wall_s": wall,
        "tok_s": tok_total / t_train if t_train > 0 else None,
        "diversity": {k: last_eval[k] for k in ("unique_tokens", "distinct_1", "distinct_2", "max_repeat_run",
                                                "top_token_share", "token_entropy")} if last_eval and dist.main else None,
    }
    if dist.main:
        if end == cfg.steps:
            metrics.write({"kind": "end", **{k: v for k, v in summary.items() if k not in ("out", "metrics", "checkpoint")}})
        metrics.close()
        vl = f"val loss {last_val:.4f}" if last_val is not None else "no eval"
        div = summary["diversity"]
        log(f"{'done' if end == cfg.steps else 'stopped'}: {end}/{cfg.steps} steps in {_fmt_time(wall)} | {vl} "
            f"(unigram entropy {unigram:.3f}, ln V {ln_vocab:.3f})"
            + (f" | unique {div['unique_tokens']}, distinct-2 {div['distinct_2']:.3f}" if div else "")
            + (f" | {summary['tok_s'] / 1e3:.1f}k tok/s" if summary["tok_s"] else "")
            + (f" | {skipped} non-finite updates skipped" if skipped else ""))
        log(f"metrics: {metrics_path}")
        log(f"checkpoint: {ckpt_path}")
    return summary


def _num(x: float):
    return x if math.isfinite(x) else None  # JSON has no NaN; non-finite values are recorded as null


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m {s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


# ---------------------------------------------------------------------------------------------- CLI

_positive, _nonneg = whole_at_least(1), whole_at_least(0)


def _finite(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be finite, got {v}")
    return x


def build_parser() -> argparse.ArgumentParser:
    D = TrainConfig()
    p = OneLineParser(prog="python -m bitnet_ref.train", help_hint="python -m bitnet_ref.train --help",
                      argument_default=argparse.SUPPRESS,
                      description="Train a BitNet b1.58 (or full-precision) byte-level LM; writes metrics.jsonl and "
                      "ckpt.pt.")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help=f"model size preset (default: {D.preset})")
    m.add_argument("--d-model", type=_positive, help="override the preset's hidden size")
    m.add_argument("--n-layers", type=_positive, help="override the preset's layer count")
    m.add_argument("--n-heads", type=_positive, help="override the preset's head count")
    m.add_argument("--ffn-hidden", type=_positive, help="override the preset's FFN hidden size")
    m.add_argument("--context", type=_positive, help="override the preset's context length (tokens per sequence)")
    m.add_argument("--quant", choices=["ternary", "none"], help=f"ternary BitLinear or full precision (default: {D.quant})")
    m.add_argument("--ffn-act", choices=["relu2", "swiglu"], help="gated FFN activation (default: the preset's)")
    m.add_argument("--ablate", action="append", choices=sorted(ABLATIONS), metavar="NAME",
                   help="switch on a known-bad variant (repeatable): " + ", ".join(sorted(ABLATIONS)))
    o = p.add_argument_group("optimisation and schedule")
    o.add_argument("--steps", type=_positive, help=f"optimizer steps (default: {D.steps})")
    o.add_argument("--batch-size", type=_positive, help=f"global batch, sequences per step (default: {D.batch_size})")
    o.add_argument("--lr", type=_finite, help=f"stage-1 peak learning rate (default: {D.lr})")
    o.add_argument("--lr2", type=_finite, help=f"stage-2 peak learning rate (default: {D.lr2})")
    o.add_argument("--warmup", type=_nonneg, help=f"linear warmup steps, clipped to stage 1 (default: {D.warmup})")
    o.add_argument("--wd", type=_finite, help=f"stage-1 peak weight decay, cosine to 0 (default: {D.wd})")
    o.add_argument("--stage2-wd", type=_finite, help=f"stage-2 weight decay (default: {D.stage2_wd})")
    o.add_argument("--stage-split", type=_finite, help=f"fraction of steps in stage 1 (default: {D.stage_split})")
    o.add_argument("--stage1-only", action="store_true", help="stretch stage 1 over the whole run (the seed's diagnostic)")
    o.add_argument("--grad-clip", type=_finite, help=f"clip the global gradient norm to this; 0 = off (default: {D.grad_clip})")
    e = p.add_argument_group("evaluation")
    ev = e.add_mutually_exclusive_group()
    ev.add_argument("--eval-every", type=_positive, help="evaluate every N steps (and at step 0 and the end)")
    ev.add_argument("--eval-at", help=f"fractions of the run to evaluate at, or 'end' (default: {D.eval_at})")
    e.add_argument("--eval-batches", type=_positive, help=f"validation batches per eval (default: {D.eval_batches})")
    e.add_argument("--probe-prompts", type=_positive, help=f"fixed validation prompts for the greedy probe (default: {D.probe_prompts})")
    e.add_argument("--probe-prompt-len", type=_positive, help=f"tokens per probe prompt (default: {D.probe_prompt_len})")
    e.add_argument("--probe-tokens", type=_nonneg, help=f"greedy tokens generated per prompt (default: {D.probe_tokens})")
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="text file, directory of text files, or dir with train.bin/val.bin "
                   "(default: this Python's standard library source)")
    d.add_argument("--vocab-size", type=_positive, help="vocab of uint16 token files (required for them, e.g. 50257)")
    d.add_argument("--val-fraction", type=_finite, help=f"share of files/tokens held out for validation (default: {D.val_fraction})")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, help=f"seed for init and data order (default: {D.seed})")
    r.add_argument("--device", help="auto (cuda if available), cpu, cuda or cuda:N (default: auto)")
    r.add_argument("--autocast", choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on for CUDA only (default: auto)")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>-<quant>)")
    r.add_argument("--save-every", type=_nonneg, help="checkpoint every N steps; 0 = only at the end (default: 0)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    r.add_argument("--stop-at", type=_positive, help="stop (with a checkpoint) after this step, as if interrupted")
    r.add_argument("--skip-nonfinite", action="store_true", help="skip updates whose loss or gradient is NaN/inf, "
                   "counting them, instead of stopping")
    r.add_argument("--threads", type=_positive, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--log-every", type=_positive, help=f"print a progress line every N steps (default: {D.log_every})")
    return p


def config_from_args(argv=None) -> TrainConfig:
    given = vars(build_parser().parse_args(argv))
    if not given.get("resume"):
        return TrainConfig(**given)
    if "out" not in given:
        raise ConfigError("--resume continues the run in --out DIR: pass --out")
    ckpt = load_checkpoint(Path(given["out"]) / "ckpt.pt")
    saved = {k: v for k, v in ckpt.get("train_config", {}).items()  # runtime fields come from this command
             if k in {f.name for f in dataclasses.fields(TrainConfig)} and k not in RUNTIME_FIELDS}
    for k, v in given.items():
        if k not in RUNTIME_FIELDS and k in saved and saved[k] != v:
            raise ConfigError(f"--{k.replace('_', '-')} {v!r} differs from the run's {saved[k]!r}; "
                              "a resumed run keeps its settings")
    return TrainConfig(**{**saved, **given})


def main(argv=None) -> int:
    try:
        cfg = config_from_args(argv)
        train(cfg)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint (if any) is intact and --resume continues from it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
