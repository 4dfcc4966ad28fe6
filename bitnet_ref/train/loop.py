"""``python -m bitnet_ref.train``: train a BitNet b1.58 (or full-precision) LM and record everything it did.

The loop is ``train``, read top to bottom: for each step set LR and WD from the two-stage schedule and the
quantization strength from the quantization warmup, draw that step's batch, forward/backward, check for
non-finite values, clip, update; evaluate (validation loss, the diversity probe, the health metrics) at the
chosen points; checkpoint atomically. ``TrainingRun`` holds what the loop works on (data, model, AdamW, the
metrics log) and does the one-step, eval and save chores. Settings are resolved once, before the loop, into a
``Plan`` (config.py, with their checks); torchrun in dist.py; the log's schema in metrics_log.py.
``--init-from`` (``warm_start.py``) loads trained full-precision weights into the fresh model before step 1.

Outputs in ``--out`` (default ``runs/<timestamp>-<quant>``): ``metrics.jsonl`` (see metrics_log.py; each line is
one ``write`` and a flush, so a kill leaves at most a torn last line) and ``ckpt.pt`` (see checkpoint.py; saved
every ``--save-every`` steps and at the end, never with NaN/inf).

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

import hashlib
import math
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from bitnet_ref import metrics_log as M
from bitnet_ref.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bitnet_ref.cli import run_quietly
from bitnet_ref.data.corpus import DataError, get_batch, load_corpus
from bitnet_ref.data.tokenizer import tokenize_corpus
from bitnet_ref.device import DeviceError
from bitnet_ref.diversity import diversity, greedy_decode, probe_prompts
from bitnet_ref.files import atomic_write
from bitnet_ref.health import HealthTracker
from bitnet_ref.model import BitLinear, ModelConfig, Transformer
from bitnet_ref.thresholds import SHOCK_WINDOW
from bitnet_ref.train import faults
from bitnet_ref.train.config import (
    ConfigError,
    Plan,
    TrainConfig,
    check_memory,
    config_from_args,
    plan,
    resume_mismatch,
)
from bitnet_ref.train.dist import Dist, barrier_and_close, init_distributed
from bitnet_ref.train.quant_warmup import quant_lambda, strengths
from bitnet_ref.train.schedule import lr_at, stage_at, wd_at
from bitnet_ref.train.warm_start import WarmStart


class NonFiniteError(RuntimeError):
    """Training stopped because a loss or gradient was NaN/inf; one line."""


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
    return [
        {"params": decay, "weight_decay": 0.0, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]


def optimizer_settings(opt: torch.optim.Optimizer) -> dict:
    """What the metrics header records of the optimizer as built: its class, whether it steps as Adam does, and
    AdamW's betas and eps."""
    d = opt.defaults
    adam = isinstance(opt, (torch.optim.Adam, torch.optim.AdamW))  # a subclass keeps AdamW's step
    return {"name": type(opt).__name__, "adam": adam, "betas": list(d.get("betas", ())), "eps": d.get("eps")}


def autocast_for(device: torch.device, mode: str):
    on = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def _fmt_time(s: float) -> str:
    return f"{int(s // 60)}m {s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


# ---------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, log=print) -> dict:
    """Run training as configured; returns a summary dict. Raises ConfigError/DataError/CheckpointError/
    DeviceError on bad input and NonFiniteError when a loss or gradient is NaN/inf (unless skip_nonfinite)."""
    settings = plan(cfg)
    cfg = settings.cfg  # with a warm start's shapes and tokenizer
    dist, device = init_distributed(cfg.device, cfg.batch_size)
    threads, ok, run, s = torch.get_num_threads(), False, None, 0
    try:
        run = TrainingRun(settings, dist, device, log if dist.main else (lambda *a, **k: None))
        evals, s = run.plan.evals, run.start
        if run.start == 0 and 0 in evals:
            run.set_quant_strength(0)
            run.evaluate(0)
        for s in range(run.start, run.end):  # `s` updates are done; this one uses schedule index s
            lr, wd = lr_at(s, run.plan.schedule), wd_at(s, run.plan.schedule)
            for g in run.opt.param_groups:
                g["lr"], g["weight_decay"] = lr, (wd if g["decay"] else 0.0)
            run.set_quant_strength(s + 1)  # the update numbered s + 1, and the eval after it
            gen = torch.Generator().manual_seed(seed_for(cfg.seed, "train", s))
            x, y = dist.rank_slice(*get_batch(run.corpus.train, cfg.batch_size, run.mcfg.context, gen))  # (B/W, T)
            run.step(s, x, y, lr, wd, measure_health=s + 1 in evals)
            if s + 1 in evals:
                run.evaluate(s + 1)
            if (cfg.save_every and (s + 1) % cfg.save_every == 0) or s + 1 == run.end:
                run.save(s + 1)
        summary, ok = run.finish(), True
        return summary
    except (Exception, KeyboardInterrupt) as e:
        if run is not None and not isinstance(e, NonFiniteError):  # a non-finite value wrote its own record
            run.record_error(s + 1, e)
        raise
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back
        barrier_and_close(dist, barrier=ok)


class TrainingRun:
    """Everything one run works on, set up from its config (and checkpoint, on resume), and the chores of one
    step, one evaluation, one save and the end. Nothing is written before the inputs are known to be good."""

    def __init__(self, settings: Plan, dist: Dist, device: torch.device, log):
        self.t_start = time.time()
        cfg = settings.cfg
        self.plan, self.cfg, self.dist, self.device, self.log = settings, cfg, dist, device, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        ckpt = self._load_inputs()
        torch.manual_seed(cfg.seed)  # fp32 master weights; autocast only changes the compute dtype
        self.raw = Transformer(self.mcfg).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.raw), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        self.start, self.last_val, self.skipped = 0, None, 0
        self.quant_lambda, self.init_val_loss, self.init_train_loss = None, None, None
        if ckpt is not None:
            self._restore(ckpt)
        elif settings.init is not None:
            self._warm_start(settings.init)
        self.end = self.plan.end
        self.last_saved = self.start if ckpt is not None else None
        self.last_eval = None
        self.model = self.raw
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.raw, device_ids=[device.index] if device.type == "cuda" else None)
        faults.install(self.raw, self.start + 1)
        self.tracker = HealthTracker() if dist.main else None  # gradient/flip/activation health at each eval
        self.tokens_per_step = cfg.batch_size * self.mcfg.context
        self.t_log, self.tok_log, self.tok_total, self.t_train = time.perf_counter(), 0, 0, 0.0
        self.metrics = self._open_metrics(ckpt) if dist.main else None
        self.raw.train()

    def _load_inputs(self) -> dict | None:
        """Checkpoint (on resume), data, model config, run directory; every check that can fail on bad input."""
        cfg, ckpt = self.cfg, None
        if cfg.resume:
            self.out = Path(cfg.out)
            ckpt = load_checkpoint(self.out / "ckpt.pt")
            mismatch = resume_mismatch(asdict(cfg), ckpt.get("train_config", {}))
            if mismatch:
                raise ConfigError(f"{mismatch} (run in {self.out})")
            if ckpt["step"] >= cfg.steps:
                raise ConfigError(f"the run in {self.out} is already complete ({ckpt['step']}/{cfg.steps} steps)")
            if cfg.stop_at is not None and cfg.stop_at <= ckpt["step"]:
                raise ConfigError(f"--stop-at {cfg.stop_at} is not after the checkpoint's step {ckpt['step']}")
        corpus = load_corpus(cfg.data, cfg.vocab_size, cfg.val_fraction)
        if cfg.tokenizer is not None:
            corpus = tokenize_corpus(corpus, cfg.tokenizer)
        self.plan = self.plan.with_data(corpus)
        self.corpus, self.mcfg = corpus, mcfg = corpus, self.plan.model
        check_memory(mcfg, cfg.batch_size // self.dist.world, self.device)
        if ckpt is not None:
            try:
                same = ModelConfig.from_dict(ckpt["config"]) == mcfg  # old checkpoints lack the newer fields
            except ValueError:
                same = False
            if not same:
                raise CheckpointError(f"{self.out / 'ckpt.pt'}: its model config does not match the run's settings")
            saved_data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
            saved_tok = (saved_data.get("tokenizer") or {}).get("sha256")
            now_tok = corpus.tokenizer.sha256 if corpus.tokenizer is not None else None
            if saved_tok != now_tok:
                raise DataError(
                    f"the tokenizer ({cfg.tokenizer or 'bytes'}, sha256 {str(now_tok)[:16]}) differs from "
                    f"the one the run in {self.out} was trained with (sha256 {str(saved_tok)[:16]})"
                )
            if saved_data.get("fingerprint") != corpus.fingerprint:
                raise DataError(f"the data ({corpus.source}) differs from the data the checkpoint was trained on")
        else:
            self.out = self._new_out_dir()
        self.prompts = probe_prompts(corpus.val, cfg.probe_prompts, cfg.probe_prompt_len)
        self.ln_vocab, self.unigram = math.log(corpus.vocab_size), corpus.unigram_entropy()
        return ckpt

    def _new_out_dir(self) -> Path:
        """A fresh run directory; under torchrun rank 0 alone checks it (a peer checking later would see rank
        0's files) and tells the rest."""
        if not self.dist.enabled:
            return new_out_dir(self.cfg)
        import torch.distributed as td

        box = [None, None]
        if self.dist.main:
            try:
                box[0] = str(new_out_dir(self.cfg))
            except ConfigError as e:
                box[1] = str(e)
        td.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise ConfigError(box[1])
        return Path(box[0])

    def _restore(self, ckpt: dict) -> None:
        try:
            self.raw.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.out / 'ckpt.pt'} cannot be resumed: {first}") from None
        self.start, self.last_val = ckpt["step"], ckpt.get("last_val_loss")
        self.skipped = ckpt.get("skipped_nonfinite", 0)

    def _warm_start(self, init: WarmStart) -> None:
        """Load --init-from's weights into the fresh model and measure them in full precision: the val loss on
        the evaluation batches, and the train loss on the batches of the first SHOCK_WINDOW steps (what the
        doctor sets the quantization's arrival against, batch for batch)."""
        try:
            self.raw.load_state_dict({k: v.to(self.device) for k, v in init.state.items()})
        except RuntimeError as e:  # shapes were checked against the flags: a mismatch here is a bug, but say which
            first = str(e).strip().splitlines()[0][:200]
            raise ConfigError(
                f"--init-from {init.path}: its weights do not load into the run's model ({first})"
            ) from None
        if self.mcfg.quant == "ternary":
            self.raw.set_quant_strength(0.0, 0.0)
        cfg = self.cfg
        first = range(min(SHOCK_WINDOW, cfg.steps))
        self.raw.eval()
        with torch.no_grad(), autocast_for(self.device, cfg.autocast):
            self.init_val_loss = self.dist.mean(self._val_loss()[0], self.device)
            train = 0.0
            for s in first:
                gen = torch.Generator().manual_seed(seed_for(cfg.seed, "train", s))
                x, y = self.dist.rank_slice(*get_batch(self.corpus.train, cfg.batch_size, self.mcfg.context, gen))
                train += float(self.raw(x.to(self.device), y.to(self.device))[1])
            self.init_train_loss = self.dist.mean(train / len(first), self.device)
        self.raw.train()
        self.log(
            f"warm start: {init.path} ({init.kind}, layout {init.cfg.layout}); without quantization: val loss "
            f"{self.init_val_loss:.4f}, train loss {self.init_train_loss:.4f} (the batches of steps 1-{len(first)})"
        )
        for note in init.notes:
            self.log(f"  {note}")

    def set_quant_strength(self, step: int) -> None:
        """The quantization strength of the quantization warmup after ``step`` updates (ternary runs only)."""
        if self.mcfg.quant != "ternary":
            return
        self.quant_lambda = quant_lambda(step, self.plan.warmup)
        self.raw.set_quant_strength(*strengths(step, self.plan.warmup))

    def _open_metrics(self, ckpt: dict | None) -> M.MetricsLog:
        cfg, out, path = self.cfg, self.out, self.out / M.FILE_NAME
        out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in self.raw.parameters())
        n_bitlinear = sum(m.weight.numel() for _, m in self.raw.bitlinears())
        if ckpt is not None:
            dropped = M.repair(path, self.start)
            metrics = M.MetricsLog(path)
            metrics.write({"kind": M.RESUME, "step": self.start, "dropped_lines": dropped})
            self.log(
                f"resuming {out} at step {self.start}/{cfg.steps}"
                + (f" ({dropped} metrics lines after it dropped)" if dropped else "")
            )
            return metrics
        if self.corpus.tokenizer is not None:
            atomic_write(out / "tokenizer.json", lambda f: f.write(self.corpus.tokenizer.json_text.encode("utf-8")))
        metrics = M.MetricsLog(path)
        metrics.write(
            {
                "kind": M.HEADER,
                "tokenizer": self.corpus.tokenizer_info,
                "config": asdict(self.mcfg),
                "train_config": asdict(cfg),
                "ln_vocab": self.ln_vocab,
                "unigram_entropy": self.unigram,
                "data": self.corpus.info(),
                "init": None
                if self.plan.init is None
                else {
                    **self.plan.init.header(),
                    "val_loss_unquantized": self.init_val_loss,
                    "train_loss_unquantized": self.init_train_loss,
                    "train_loss_steps": min(SHOCK_WINDOW, cfg.steps),
                },
                "quant_warmup": {
                    "steps": self.plan.warmup.steps,
                    "shape": self.plan.warmup.shape,
                    "k": self.plan.warmup.steepness,
                    "on": self.plan.warmup.on,
                }
                if self.mcfg.quant == "ternary"
                else None,
                "params": n_params,
                "params_bitlinear": n_bitlinear,
                "params_other": n_params - n_bitlinear,
                "world_size": self.dist.world,
                "optimizer": optimizer_settings(self.opt),
                "device": str(self.device),
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
        )
        self.log(
            f"data: {self.corpus.source} | {len(self.corpus.train):,} train / {len(self.corpus.val):,} val "
            f"tokens | unigram entropy {self.unigram:.3f} nats, ln V {self.ln_vocab:.3f}"
        )
        what = cfg.preset if self.plan.init is None else "warm start"
        self.log(
            f"model: {what} d_model {self.mcfg.d_model}, {self.mcfg.n_layers} layers, context "
            f"{self.mcfg.context}, quant {self.mcfg.quant} | {n_params / 1e6:.2f}M params | {cfg.steps} steps x "
            f"{cfg.batch_size} x {self.mcfg.context} tokens on {self.device}"
            + (f" x {self.dist.world} processes" if self.dist.enabled else "")
        )
        return metrics

    def step(self, s: int, x, y, lr: float, wd: float, *, measure_health: bool) -> None:
        """Update ``s + 1``: forward, backward, clip, AdamW step unless something is non-finite; log it."""
        cfg, dist, t0 = self.cfg, self.dist, time.perf_counter()
        with autocast_for(self.device, cfg.autocast):
            _, loss = self.model(x.to(self.device), y.to(self.device))
        loss.backward()
        health = self.tracker is not None and measure_health
        if health:
            self.tracker.after_backward(self.raw)  # gradient stats before clipping
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip or float("inf")))
        loss_val = dist.mean(float(loss.detach()), self.device)
        bad = None if math.isfinite(loss_val) else "loss"
        bad = bad or (None if math.isfinite(gnorm) else "gradient norm")
        rec = {
            "kind": M.STEP,
            "step": s + 1,
            "loss": M.finite_or_none(loss_val),
            "lr": lr,
            "wd": wd,
            "stage": stage_at(s, self.plan.schedule),
            "grad_norm": M.finite_or_none(gnorm),
        }
        if self.quant_lambda is not None:
            rec["quant_lambda"] = self.quant_lambda
        if bad is None:
            self.opt.step()
            if health:
                self.tracker.after_step(self.raw)
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.t_train += dt
        rec["tok_s"] = self.tokens_per_step / dt
        if bad is not None:
            self._nonfinite(s, bad, loss_val if bad == "loss" else gnorm, rec)
        self.tok_log += self.tokens_per_step
        self.tok_total += self.tokens_per_step
        if dist.main:
            self.metrics.write(rec)
            if (s + 1) % cfg.log_every == 0 or s == self.start or s + 1 == self.end:
                now = time.perf_counter()
                lam = f"lambda {self.quant_lambda:.3f} | " if self.plan.warmup.steps and self.quant_lambda else ""
                self.log(
                    f"step {s + 1}/{cfg.steps} | loss {loss_val:.4f} | lr {lr:.2e} | wd {wd:.3f} | {lam}"
                    f"{self.tok_log / (now - self.t_log) / 1e3:.1f}k tok/s"
                )
                self.t_log, self.tok_log = now, 0

    def _nonfinite(self, s: int, bad: str, value: float, rec: dict) -> None:
        """Stop with NonFiniteError (and a "stop" record), or with --skip-nonfinite count the skipped update."""
        what = f"the {bad} is {value}"
        if not self.cfg.skip_nonfinite:
            where = (
                f"last good checkpoint: {self.out / 'ckpt.pt'} (step {self.last_saved})"
                if self.last_saved is not None
                else "no checkpoint was saved yet"
            )
            if self.dist.main:
                self.metrics.write({"kind": M.STOP, "step": s + 1, "reason": f"non-finite {bad}"})
                self.metrics.close()
            raise NonFiniteError(
                f"step {s + 1}: {what} (non-finite); stopped without updating; {where}; "
                f"rerun with --skip-nonfinite to skip such updates"
            )
        self.skipped += 1
        rec.update(skipped=True, nonfinite=bad, skipped_total=self.skipped)
        self.log(f"step {s + 1}/{self.cfg.steps} | {what}: update skipped ({self.skipped} so far)")

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        """Validation loss on a fixed set of batches (the same every eval) and, on rank 0, the greedy probe and
        the health metrics; written to metrics.jsonl."""
        cfg, dist, model = self.cfg, self.dist, self.raw
        model.eval()
        loss, first = self._val_loss()
        rec = {"kind": M.EVAL, "step": step, "val_loss": dist.mean(loss, self.device)}
        if self.quant_lambda is not None:
            rec["quant_lambda"] = self.quant_lambda
        self.last_val = rec["val_loss"]
        if dist.main:
            samples = greedy_decode(model, self.prompts, cfg.probe_tokens)
            rec.update(diversity(samples))
            rec["samples"] = [self.corpus.text(s) for s in samples]
            rec.update(self.tracker.evaluate(model, first.to(self.device), step))
            self.metrics.write(rec)
            self.log(
                f"eval {step}/{cfg.steps} | val loss {rec['val_loss']:.4f} (unigram {self.unigram:.3f}, ln V "
                f"{self.ln_vocab:.3f}) | unique {rec['unique_tokens']} | distinct-1 {rec['distinct_1']:.3f} | "
                f"distinct-2 {rec['distinct_2']:.3f} | max run {rec['max_repeat_run']} | "
                f"top share {rec['top_token_share']:.2f}"
            )
            self.log(f"  sample: {rec['samples'][0][:100]!r}")
            self.last_eval = rec
        model.train()
        self.t_log, self.tok_log = time.perf_counter(), 0  # keep eval time out of the tok/s figure

    def _val_loss(self) -> tuple[float, torch.Tensor]:
        """(mean loss on this rank's share of the fixed validation batches, the first batch's inputs)."""
        cfg, total, first = self.cfg, 0.0, None
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, "val"))
        for _ in range(cfg.eval_batches):
            x, y = self.dist.rank_slice(*get_batch(self.corpus.val, cfg.batch_size, self.mcfg.context, gen))  # (B/W, T)
            first = x if first is None else first
            with autocast_for(self.device, cfg.autocast):
                _, loss = self.raw(x.to(self.device), y.to(self.device))
            total += float(loss)
        return total / cfg.eval_batches, first

    def record_error(self, step: int, e: BaseException) -> None:
        """A "stop" record for an error that ends the run (the doctor says the run ended early, and why)."""
        if not self.dist.main or self.metrics is None or self.metrics.f.closed:
            return
        first = (str(e).strip().splitlines() or [""])[0][:200]
        reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else f"error: {type(e).__name__}: {first}"
        self.metrics.write({"kind": M.STOP, "step": step, "reason": reason})

    def save(self, step: int) -> None:
        self.last_saved = step
        if not self.dist.main:
            return
        self.metrics.sync()
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        save_checkpoint(
            self.out / "ckpt.pt",
            {
                "config": asdict(self.mcfg),
                "train_config": asdict(self.cfg),
                "model": self.raw.state_dict(),
                "optimizer": self.opt.state_dict(),
                "step": step,
                "rng": rng,
                "last_val_loss": self.last_val,
                "unigram_entropy": self.unigram,
                "ln_vocab": self.ln_vocab,
                "data": self.corpus.info(),
                "skipped_nonfinite": self.skipped,
                "world_size": self.dist.world,
                "quant_lambda": self.quant_lambda,  # the strength the weights were last trained at (None: FP run)
            },
        )

    def finish(self) -> dict:
        """The run's summary; on rank 0 also the "end" record (when every step is done) and the last lines."""
        cfg, end, ev = self.cfg, self.end, self.last_eval
        complete = end == cfg.steps
        summary = {
            "out": str(self.out),
            "metrics": str(self.out / M.FILE_NAME),
            "checkpoint": str(self.out / "ckpt.pt"),
            "steps_done": end,
            "steps": cfg.steps,
            "complete": complete,
            "val_loss": self.last_val,
            "unigram_entropy": self.unigram,
            "ln_vocab": self.ln_vocab,
            "skipped_nonfinite": self.skipped,
            "wall_s": time.time() - self.t_start,
            "tok_s": self.tok_total / self.t_train if self.t_train > 0 else None,
            "diversity": {
                k: ev[k]
                for k in (
                    "unique_tokens",
                    "distinct_1",
                    "distinct_2",
                    "max_repeat_run",
                    "top_token_share",
                    "token_entropy",
                )
            }
            if ev
            else None,
        }
        if not self.dist.main:
            return summary
        if complete:
            self.metrics.write(
                {"kind": M.END, **{k: v for k, v in summary.items() if k not in ("out", "metrics", "checkpoint")}}
            )
        self.metrics.close()
        vl = f"val loss {self.last_val:.4f}" if self.last_val is not None else "no eval"
        div = summary["diversity"]
        self.log(
            f"{'done' if complete else 'stopped'}: {end}/{cfg.steps} steps in {_fmt_time(summary['wall_s'])} | "
            f"{vl} (unigram entropy {self.unigram:.3f}, ln V {self.ln_vocab:.3f})"
            + (f" | unique {div['unique_tokens']}, distinct-2 {div['distinct_2']:.3f}" if div else "")
            + (f" | {summary['tok_s'] / 1e3:.1f}k tok/s" if summary["tok_s"] else "")
            + (f" | {self.skipped} non-finite updates skipped" if self.skipped else "")
        )
        self.log(f"metrics: {summary['metrics']}")
        self.log(f"checkpoint: {summary['checkpoint']}")
        return summary


def new_out_dir(cfg: TrainConfig) -> Path:
    """``--out`` when it holds no run yet (ConfigError otherwise), else a fresh ``runs/<timestamp>-<quant>``."""
    if cfg.out is not None:
        out = Path(cfg.out)
        if (out / "ckpt.pt").exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if (out / M.FILE_NAME).exists():
            raise ConfigError(
                f"{out} holds a run that stopped before its first checkpoint, so it cannot be "
                "resumed; delete it or choose another --out"
            )
        return out
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.quant}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


# ---------------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    try:
        train(config_from_args(argv))
    except (ConfigError, DataError, CheckpointError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint (if any) is intact and --resume continues from it", file=sys.stderr)
        return 130
    return 0


def cli() -> int:
    """The ``bitnet-train`` console script."""
    return run_quietly(main)


if __name__ == "__main__":
    sys.exit(cli())
