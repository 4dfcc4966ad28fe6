"""``--init-from PATH``: start a run from trained full-precision weights instead of a random init.

Two sources: a bitnet_ref checkpoint of a ``--quant none`` run (its ``ckpt.pt``), or a Hugging Face
Llama-family directory (``formats/llama.py``). ``read_warm_start`` reads one into the run's layout
(``layouts.relayout``; the norms a source lacks start at unit gain, and ``notes`` say so); ``resolve`` makes the
run's settings take the source's shapes (a shape flag that disagrees is refused, one line) and its
tokenizer.json when it has one (a Hugging Face directory's, or the one a subword run keeps beside its
checkpoint), exactly as ``--tokenizer PATH`` would; ``check_data`` refuses data whose
tokenizer is not the one the source was trained with. The trainer loads ``state`` into its fresh model and
starts its own schedule, optimizer and step count at 0: only the weights come from the source.

Refused, each in one ConfigError line: a ternary checkpoint (a ternary run is continued with ``--resume``,
and a fine-tune from ternary is not what the quantization warmup is for), a source whose model an ablation
changed, another architecture (``formats.llama``), shapes that do not fit the flags, a tokenizer mismatch.
This module sits in ``train/`` and reads other tools' files through ``formats/``: the layer rule that lets it
is in tests/test_layout.py. What this is not: a resume (``--resume`` restores optimizer, step and RNG too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_ref.checkpoint import CheckpointError, load_checkpoint
from bitnet_ref.layouts import relayout
from bitnet_ref.model import ModelConfig

SHAPES = {  # TrainConfig field -> ModelConfig field: what a warm start takes from its source
    "d_model": "d_model",
    "n_layers": "n_layers",
    "n_heads": "n_heads",
    "n_kv_heads": "n_kv_heads",
    "ffn_hidden": "ffn_hidden",
    "context": "context",
    "ffn_act": "ffn_act",
    "rope_theta": "rope_theta",
    "tie_embeddings": "tie_embeddings",
    "norm_eps": "norm_eps",
}
FREE = {"context"}  # may differ from the source's: RoPE positions are computed, not stored


class WarmStartError(ValueError):
    """A source that cannot start this run; one line."""


@dataclass(frozen=True)
class WarmStart:
    path: str
    kind: str  # "bitnet_ref" (a --quant none checkpoint) or "llama" (a Hugging Face directory)
    cfg: ModelConfig  # the source's model, in the run's layout, quant "none"
    state: dict = field(repr=False)  # its weights under our names, in the run's layout
    notes: tuple = ()  # what the mapping added (unit-gain norms), for the run's log and header
    tokenizer: str | None = None  # its tokenizer.json (a Hugging Face directory's, a subword run's), if any
    tokenizer_sha: str | None = None  # a checkpoint's: the sha256 of the tokenizer it was trained with (None: bytes)
    info: dict = field(default_factory=dict)  # step and last val loss of a bitnet_ref source

    def header(self) -> dict:
        """What the metrics header records about the start."""
        return {"from": self.path, "kind": self.kind, "layout": self.cfg.layout, "notes": list(self.notes), **self.info}


def read_warm_start(path, layout: str) -> WarmStart:
    """Read ``path`` (a ckpt.pt or a Llama directory) into ``layout``; WarmStartError / CheckpointError."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").is_file():
        hint = f"; for a bitnet_ref run pass {p / 'ckpt.pt'}" if (p / "ckpt.pt").is_file() else ""
        raise WarmStartError(f"--init-from {p}: a directory needs a Hugging Face config.json{hint}")
    ws = _from_llama(p) if p.is_dir() else _from_checkpoint(p)
    try:
        cfg, state, notes = relayout(ws.cfg, ws.state, layout)
    except ValueError as e:
        raise WarmStartError(f"--init-from {p}: {e}") from None
    return dataclasses.replace(ws, cfg=cfg, state=state, notes=tuple(notes))


def _from_checkpoint(p: Path) -> WarmStart:
    ckpt = load_checkpoint(p)  # CheckpointError, one line, for anything unreadable
    cfg = ModelConfig.from_dict(ckpt["config"])
    if cfg.quant != "none":
        raise WarmStartError(
            f"--init-from {p}: a {cfg.quant} checkpoint; a warm start takes a full-precision one (a --quant none "
            "run). To continue this run, pass --out with its directory and --resume"
        )
    changed = [a for a in cfg.ablate if a != "const-wd"]  # const-wd is the schedule's only
    if changed:
        raise WarmStartError(f"--init-from {p}: its model is ablated ({', '.join(changed)}); start from a sound one")
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    info = {"source_step": ckpt.get("step"), "source_val_loss": ckpt.get("last_val_loss")}
    sha = (data.get("tokenizer") or {}).get("sha256")
    tok = p.parent / "tokenizer.json"  # the trainer keeps the run's tokenizer beside its checkpoint
    return WarmStart(
        str(p),
        "bitnet_ref",
        cfg,
        ckpt["model"],
        tokenizer=str(tok) if sha and tok.is_file() else None,
        tokenizer_sha=sha,
        info={k: v for k, v in info.items() if v is not None},
    )


def _from_llama(p: Path) -> WarmStart:
    from bitnet_ref.formats import llama

    try:
        m = llama.read(p)
    except llama.FormatError as e:
        raise WarmStartError(f"--init-from {p}: {e}") from None
    return WarmStart(str(p), "llama", m.cfg, m.state, tokenizer=str(m.tokenizer) if m.tokenizer else None)


def resolve(cfg, ws: WarmStart):
    """``cfg`` (a TrainConfig) with the source's shapes and its tokenizer.json (if it has one);
    WarmStartError where a flag asks for something else."""
    over = {}
    for ours, theirs in SHAPES.items():
        want, have = getattr(cfg, ours), getattr(ws.cfg, theirs)
        if want is None:
            over[ours] = have
        elif want != have and ours not in FREE:
            raise WarmStartError(
                f"--{ours.replace('_', '-')} {want} does not fit --init-from {ws.path} (its {theirs} is {have}); "
                "a warm start takes its shapes from its source: drop the flag"
            )
    if "no-subln" in cfg.ablate:
        raise WarmStartError("--ablate no-subln removes the norms a warm start's weights need")
    if ws.tokenizer is not None:
        if cfg.tokenizer is None:
            over["tokenizer"] = ws.tokenizer
        elif cfg.vocab_size is not None:
            raise WarmStartError(f"--vocab-size: --init-from {ws.path} brings its tokenizer.json")
    return dataclasses.replace(cfg, **over)


def check_data(ws: WarmStart, corpus) -> None:
    """The run's tokens must be the source's: the same tokenizer (a checkpoint), the same vocabulary size."""
    if ws.kind == "bitnet_ref":
        now = corpus.tokenizer.sha256 if corpus.tokenizer is not None else None
        if now != ws.tokenizer_sha:
            raise WarmStartError(
                f"the run's tokenizer ({_tok(now)}) is not the one --init-from {ws.path} was trained with "
                f"({_tok(ws.tokenizer_sha)})"
            )
    if corpus.vocab_size != ws.cfg.vocab_size:
        what = f"{corpus.tokenizer.source} has" if corpus.tokenizer is not None else "the data has"
        fix = "" if ws.tokenizer else "; pass its tokenizer with --tokenizer PATH"
        raise WarmStartError(
            f"{what} a vocabulary of {corpus.vocab_size} tokens but --init-from {ws.path} embeds "
            f"{ws.cfg.vocab_size}: the tokenizer does not match{fix}"
        )


def _tok(sha: str | None) -> str:
    return f"a tokenizer.json, sha256 {sha[:16]}" if sha else "bytes or token ids, no tokenizer.json"


__all__ = ["WarmStart", "WarmStartError", "CheckpointError", "read_warm_start", "resolve", "check_data"]
