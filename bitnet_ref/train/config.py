"""The training run's settings: ``TrainConfig``, its command-line parser, and every check made before a run starts.

``TrainConfig`` is one dataclass of plain values (stored in every checkpoint and in the metrics header as a
dict); ``build_parser``/``config_from_args`` turn ``python -m bitnet_ref.train`` flags into one. ``check_config``
does what can be checked before data or disk are touched; ``check_memory`` refuses a batch that cannot fit in
memory before anything is allocated; ``resume_mismatch`` is the one comparison of a resumed run's settings with
its checkpoint's. ``plan`` resolves the settings once into a ``Plan`` (the schedule, the quantization warmup,
the evaluation steps, the last step of this invocation, the warm start's weights; with the data, the model
config) that the loop reads and never re-derives.
What this is not: the model's own config (``model.ModelConfig``) or the schedule's (``schedule.ScheduleConfig``);
both are derived from this one here, in ``plan``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_ref.checkpoint import load_checkpoint
from bitnet_ref.cli import OneLineParser, whole_at_least
from bitnet_ref.data.corpus import Corpus
from bitnet_ref.model import ABLATIONS, LAYOUTS, PRESETS, ModelConfig
from bitnet_ref.train.quant_warmup import SHAPES as WARMUP_SHAPES
from bitnet_ref.train.quant_warmup import TARGETS as WARMUP_TARGETS
from bitnet_ref.train.quant_warmup import QuantWarmup
from bitnet_ref.train.schedule import ScheduleConfig
from bitnet_ref.train.warm_start import WarmStart, WarmStartError, check_data, read_warm_start, resolve

RUNTIME_FIELDS = {
    "device",
    "autocast",
    "out",
    "resume",
    "stop_at",
    "save_every",
    "skip_nonfinite",
    "threads",
    "log_every",
}  # may differ on --resume; every other setting must match the checkpoint


LEGACY_SETTINGS = {"layout": "per-linear-norm"}  # what a checkpoint that lacks these settings was trained with


class ConfigError(ValueError):
    """Bad flags or settings; one line."""


@dataclass
class TrainConfig:
    # model (None = the preset's value)
    preset: str = "default"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_hidden: int | None = None
    context: int | None = None
    quant: str = "ternary"
    ffn_act: str | None = None
    rope_theta: float | None = None
    tie_embeddings: bool | None = None
    norm_eps: float | None = None
    layout: str = "official"
    ablate: list = field(default_factory=list)
    # warm start and quantization warmup (full precision to 1.58 bits)
    init_from: str | None = None  # a --quant none ckpt.pt or a Hugging Face Llama directory
    quant_warmup: int = 0  # N steps over which the quantization strength rises from 0 to 1; 0 = abrupt
    quant_warmup_shape: str = "linear"
    quant_warmup_k: float | None = None  # the shape's steepness (None: quant_warmup.DEFAULT_K)
    quant_warmup_on: str = "both"
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
    tokenizer: str | None = None  # None = bytes; "bpe:N" or a tokenizer.json path
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


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown --preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    over = {
        k: getattr(cfg, k)
        for k in (
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden",
            "context",
            "ffn_act",
            "rope_theta",
            "tie_embeddings",
            "norm_eps",
        )
        if getattr(cfg, k) is not None
    }
    try:
        return ModelConfig.from_dict(
            {
                **PRESETS[cfg.preset],
                **over,
                "quant": cfg.quant,
                "layout": cfg.layout,
                "vocab_size": vocab_size,
                "ablate": list(cfg.ablate),
            }
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def schedule_config(cfg: TrainConfig) -> ScheduleConfig:
    try:
        return ScheduleConfig(
            steps=cfg.steps,
            lr=cfg.lr,
            lr2=cfg.lr2,
            warmup=cfg.warmup,
            wd=cfg.wd,
            stage2_wd=cfg.stage2_wd,
            stage_split=cfg.stage_split,
            stage1_only=cfg.stage1_only,
            const_wd="const-wd" in cfg.ablate,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def quant_warmup(cfg: TrainConfig) -> QuantWarmup:
    try:
        return QuantWarmup(cfg.quant_warmup, cfg.quant_warmup_shape, cfg.quant_warmup_k, cfg.quant_warmup_on)
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
        need(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            f"--{k.replace('_', '-')} must be >= 1, got {v!r}",
        )
    for k in ("eval_every", "save_every", "probe_tokens", "warmup"):
        v = getattr(cfg, k)
        need(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            f"--{k.replace('_', '-')} must be >= 0, got {v!r}",
        )
    need(cfg.quant in ("ternary", "none"), f"--quant must be ternary or none, got {cfg.quant!r}")
    check_warmup(cfg, need)
    need(cfg.autocast in ("auto", "bf16", "off"), f"--autocast must be auto, bf16 or off, got {cfg.autocast!r}")
    for a in cfg.ablate:
        need(a in ABLATIONS, f"unknown --ablate {a!r}; choose from {', '.join(ABLATIONS)}")
    need(math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, f"--grad-clip must be >= 0, got {cfg.grad_clip}")
    need(cfg.stop_at is None or 1 <= cfg.stop_at <= cfg.steps, f"--stop-at must be in [1, --steps], got {cfg.stop_at}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.resume is False or cfg.out is not None, "--resume continues the run in --out DIR: pass --out")
    need(
        cfg.tokenizer is None or cfg.vocab_size is None,
        "--vocab-size is for token files; with --tokenizer the tokenizer sets the vocabulary",
    )
    if cfg.tokenizer is not None:
        from bitnet_ref.data.corpus import DataError
        from bitnet_ref.data.tokenizer import parse_spec

        try:
            parse_spec(cfg.tokenizer)
        except DataError as e:
            raise ConfigError(str(e)) from None


def check_warmup(cfg: TrainConfig, need) -> None:
    """The quantization warmup's flags: valid, and never silently without effect."""
    quant_warmup(cfg)
    if cfg.quant_warmup == 0:
        extra = [
            f"--quant-warmup-{k}"
            for k, v, d in (
                ("shape", cfg.quant_warmup_shape, "linear"),
                ("k", cfg.quant_warmup_k, None),
                ("on", cfg.quant_warmup_on, "both"),
            )
            if v != d
        ]
        need(not extra, f"{', '.join(extra)} has no effect without --quant-warmup N (N > 0)")
        return
    need(cfg.quant == "ternary", "--quant-warmup blends ternary quantization in; it has no effect with --quant none")
    broken = [a for a in cfg.ablate if a in ("no-ste", "clamp-ste", "no-dequant")]
    need(not broken, f"--ablate {', '.join(broken)} replaces the quantizer, which --quant-warmup blends in")


@dataclass(frozen=True)
class Plan:
    """A run's settings resolved once: what the loop reads."""

    cfg: TrainConfig
    schedule: ScheduleConfig
    evals: frozenset  # steps (completed updates; 0 = before training) that get an evaluation
    end: int  # the step this invocation stops at: --stop-at, else --steps
    warmup: QuantWarmup = QuantWarmup()  # the quantization strength at each step
    init: WarmStart | None = None  # --init-from's weights (not on --resume: the checkpoint has them)
    corpus: Corpus | None = None  # the data, once loaded (``with_data``)
    model: ModelConfig | None = None  # the model config, once the data's vocabulary is known

    def with_data(self, corpus: Corpus) -> Plan:
        """The plan completed by its data: the model config for the corpus's vocabulary, and the checks that
        need it (the context fits the data, the diversity probe fits the context)."""
        if self.init is not None:
            try:
                check_data(self.init, corpus)
            except WarmStartError as e:
                raise ConfigError(str(e)) from None
        mcfg = model_config(self.cfg, corpus.vocab_size)
        corpus.require(mcfg.context)
        if self.cfg.probe_prompt_len + self.cfg.probe_tokens > mcfg.context:
            raise ConfigError(
                f"--probe-prompt-len {self.cfg.probe_prompt_len} + --probe-tokens "
                f"{self.cfg.probe_tokens} exceed the context {mcfg.context}"
            )
        return dataclasses.replace(self, corpus=corpus, model=mcfg)


def plan(cfg: TrainConfig) -> Plan:
    """Check ``cfg`` (everything that can be checked before data or disk) and resolve it into a Plan; with
    --init-from (and no --resume) the source is read here, and the run takes its shapes and tokenizer."""
    check_config(cfg)
    init = None
    if cfg.init_from is not None and not cfg.resume:
        try:
            init = read_warm_start(cfg.init_from, cfg.layout)
            cfg = resolve(cfg, init)
        except WarmStartError as e:
            raise ConfigError(str(e)) from None
        check_config(cfg)  # the tokenizer it brought
    evals = eval_steps(cfg)
    if 0 < cfg.quant_warmup <= cfg.steps:  # the first evaluation of the model fully quantized, where a shock shows
        evals.add(cfg.quant_warmup)
    return Plan(cfg, schedule_config(cfg), frozenset(evals), cfg.stop_at or cfg.steps, quant_warmup(cfg), init)


def resume_mismatch(settings: dict, saved: dict) -> str | None:
    """The first setting in ``settings`` (flag name -> value) that a resumed run may not change but that differs
    from ``saved`` (the checkpoint's train_config), as a one-line message; None when they agree."""
    for k, v in settings.items():
        if k not in RUNTIME_FIELDS and k in saved and saved[k] != v:
            return (
                f"--{k.replace('_', '-')} {v!r} differs from the run's {saved[k]!r}; a resumed run keeps its settings"
            )
    return None


def step_memory_bytes(mcfg: ModelConfig, batch: int) -> int:
    """A lower bound on the memory one training step of ``batch`` sequences needs, in bytes: the int64 token
    windows (inputs and targets), the float32 logits and their gradient, and the activations autograd keeps
    (each BitLinear's input and its int8 copy, attention's q/k/v/output, the FFN's three hidden tensors), per
    layer and token. The real peak is higher; this is only for refusing what cannot possibly fit."""
    tokens = batch * mcfg.context
    windows = 2 * batch * (mcfg.context + 1) * 8
    logits = 2 * tokens * mcfg.vocab_size * 4
    acts = tokens * mcfg.n_layers * (8 * mcfg.d_model + 3 * mcfg.ffn_hidden) * 4
    return windows + logits + acts


def available_memory(device) -> int | None:
    """Bytes this process could still get on ``device``: MemAvailable (Linux) or physical memory on a CPU,
    the card's total on CUDA; None when the platform does not say."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[1])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(mcfg: ModelConfig, batch: int, device) -> None:
    """ConfigError, with the size it would need, when a step of ``batch`` sequences cannot fit in memory."""
    need, have = step_memory_bytes(mcfg, batch), available_memory(device)
    if have is not None and need > have:
        raise ConfigError(
            f"--batch-size {batch} x context {mcfg.context} needs at least {need / 2**30:.1f} GiB per "
            f"step, more than the {have / 2**30:.1f} GiB available on {device}; lower --batch-size"
        )


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
    p = OneLineParser(
        prog="python -m bitnet_ref.train",
        help_hint="python -m bitnet_ref.train --help",
        argument_default=argparse.SUPPRESS,
        description="Train a BitNet b1.58 (or full-precision) LM on bytes or BPE tokens; writes metrics.jsonl "
        "and ckpt.pt.",
    )
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help=f"model size preset (default: {D.preset})")
    m.add_argument("--d-model", type=_positive, help="override the preset's hidden size")
    m.add_argument("--n-layers", type=_positive, help="override the preset's layer count")
    m.add_argument("--n-heads", type=_positive, help="override the preset's head count")
    m.add_argument("--ffn-hidden", type=_positive, help="override the preset's FFN hidden size")
    m.add_argument("--context", type=_positive, help="override the preset's context length (tokens per sequence)")
    m.add_argument(
        "--n-kv-heads",
        type=_positive,
        help="key/value heads for grouped-query attention (default: the preset's, usually --n-heads)",
    )
    m.add_argument("--rope-theta", type=_finite, help="RoPE base (default: the preset's, 10000 for the small ones)")
    m.add_argument("--tie-embeddings", action="store_true", help="share the token embedding with the output head")
    m.add_argument("--norm-eps", type=_finite, help="RMSNorm epsilon (default: 1e-5; a warm start takes its source's)")
    m.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        help=f"where the RMSNorms sit (default: {D.layout}): "
        "official = the 2B-4T block's four norms; per-linear-norm = one inside every BitLinear (the 'extra "
        "RMSNorm before each linear' variant); llama = a Llama block's two, no sub-norms",
    )
    m.add_argument(
        "--quant", choices=["ternary", "none"], help=f"ternary BitLinear or full precision (default: {D.quant})"
    )
    m.add_argument("--ffn-act", choices=["relu2", "swiglu"], help="gated FFN activation (default: the preset's)")
    m.add_argument(
        "--ablate",
        action="append",
        choices=sorted(ABLATIONS),
        metavar="NAME",
        help="switch on a known-bad variant (repeatable): " + ", ".join(sorted(ABLATIONS)),
    )
    o = p.add_argument_group("optimisation and schedule")
    o.add_argument("--steps", type=_positive, help=f"optimizer steps (default: {D.steps})")
    o.add_argument("--batch-size", type=_positive, help=f"global batch, sequences per step (default: {D.batch_size})")
    o.add_argument("--lr", type=_finite, help=f"stage-1 peak learning rate (default: {D.lr})")
    o.add_argument("--lr2", type=_finite, help=f"stage-2 peak learning rate (default: {D.lr2})")
    o.add_argument("--warmup", type=_nonneg, help=f"linear warmup steps, clipped to stage 1 (default: {D.warmup})")
    o.add_argument("--wd", type=_finite, help=f"stage-1 peak weight decay, cosine to 0 (default: {D.wd})")
    o.add_argument("--stage2-wd", type=_finite, help=f"stage-2 weight decay (default: {D.stage2_wd})")
    o.add_argument("--stage-split", type=_finite, help=f"fraction of steps in stage 1 (default: {D.stage_split})")
    o.add_argument(
        "--stage1-only",
        action="store_true",
        help="stretch stage 1 over the whole run (the debugging report's diagnostic)",
    )
    o.add_argument(
        "--grad-clip", type=_finite, help=f"clip the global gradient norm to this; 0 = off (default: {D.grad_clip})"
    )
    w = p.add_argument_group("warm start: full precision to 1.58 bits (docs/warm-start.md)")
    w.add_argument(
        "--init-from",
        metavar="PATH",
        help="start from trained full-precision weights: a --quant none run's ckpt.pt or a Hugging Face "
        "LlamaForCausalLM directory (its shapes and tokenizer.json become the run's); the optimizer and the "
        "step count start fresh",
    )
    w.add_argument(
        "--quant-warmup",
        type=_nonneg,
        metavar="N",
        help="raise the quantization strength lambda from 0 to 1 over N steps, x + lambda * (quant(x) - x) "
        f"with the STE (default: {D.quant_warmup} = abrupt)",
    )
    w.add_argument(
        "--quant-warmup-shape",
        choices=WARMUP_SHAPES,
        help=f"lambda's curve: linear t, exponential 1-(1-t)^k, sigmoid (default: {D.quant_warmup_shape})",
    )
    w.add_argument(
        "--quant-warmup-k", type=_finite, help="the exponential or sigmoid curve's steepness (default: 6 and 20)"
    )
    w.add_argument(
        "--quant-warmup-on",
        choices=WARMUP_TARGETS,
        help=f"what is warmed; the other is quantized from the start (default: {D.quant_warmup_on})",
    )
    e = p.add_argument_group("evaluation")
    ev = e.add_mutually_exclusive_group()
    ev.add_argument("--eval-every", type=_positive, help="evaluate every N steps (and at step 0 and the end)")
    ev.add_argument("--eval-at", help=f"fractions of the run to evaluate at, or 'end' (default: {D.eval_at})")
    e.add_argument("--eval-batches", type=_positive, help=f"validation batches per eval (default: {D.eval_batches})")
    e.add_argument(
        "--probe-prompts",
        type=_positive,
        help=f"fixed validation prompts for the greedy probe (default: {D.probe_prompts})",
    )
    e.add_argument(
        "--probe-prompt-len", type=_positive, help=f"tokens per probe prompt (default: {D.probe_prompt_len})"
    )
    e.add_argument(
        "--probe-tokens", type=_nonneg, help=f"greedy tokens generated per prompt (default: {D.probe_tokens})"
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        metavar="PATH",
        help="text file, directory of text files, or dir with train.bin/val.bin "
        "(default: this Python's standard library source)",
    )
    d.add_argument("--vocab-size", type=_positive, help="vocab of uint16 token files (required for them, e.g. 50257)")
    d.add_argument(
        "--tokenizer",
        metavar="bpe:N|PATH",
        help="train a byte-level BPE of N tokens on the training "
        "split (cached; saved as tokenizer.json in the run) or load a tokenizer.json (default: bytes, "
        "vocab 256)",
    )
    d.add_argument(
        "--val-fraction",
        type=_finite,
        help=f"share of files/tokens held out for validation (default: {D.val_fraction})",
    )
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, help=f"seed for init and data order (default: {D.seed})")
    r.add_argument("--device", help="auto (cuda if available), cpu, cuda or cuda:N (default: auto)")
    r.add_argument(
        "--autocast", choices=["auto", "bf16", "off"], help="bf16 autocast: auto = on for CUDA only (default: auto)"
    )
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<timestamp>-<quant>)")
    r.add_argument("--save-every", type=_nonneg, help="checkpoint every N steps; 0 = only at the end (default: 0)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    r.add_argument("--stop-at", type=_positive, help="stop (with a checkpoint) after this step, as if interrupted")
    r.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip updates whose loss or gradient is NaN/inf, counting them, instead of stopping",
    )
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
    saved = {
        k: v
        for k, v in {**LEGACY_SETTINGS, **ckpt.get("train_config", {})}.items()  # runtime fields come
        if k in {f.name for f in dataclasses.fields(TrainConfig)} and k not in RUNTIME_FIELDS
    }  # from this command
    mismatch = resume_mismatch(given, saved)
    if mismatch:
        raise ConfigError(mismatch)
    return TrainConfig(**{**saved, **given})
