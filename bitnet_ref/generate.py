"""Decoding a Transformer, whatever its linear layers: the one KV-cache decoder, its oracle, and parity.

- ``generate``: continue prompts through the model's KV cache: each prompt length's batch in one forward (only the
  last position's logits: ``forward(..., last_only=True)``), then one token per forward; greedy,
  or temperature + top-k sampling under a seeded torch.Generator. It returns a ``Generation``: the new tokens,
  the entropy and top-1 probability of each next-token distribution, prefill and decode seconds. The model
  runs in eval mode for the call and gets its previous mode back, so the trainer can probe mid-training
  (``diversity.greedy_decode``) with the same code the decode probe and the decode benchmark time.
- ``generate_reference``: greedy decoding that recomputes the whole sequence for every token (no cache): the
  oracle ``generate`` is tested against.
- ``recompute_check``: does a model's cached greedy decoding compute what a full recompute of the same tokens
  computes? The decode probe and the doctor run it on every checkpoint: a fault shared by every cached path (a
  RoPE offset, a cache mask) is invisible to ``parity``, which compares two cached paths.
- ``teacher_forced`` and ``val_loss``: one full forward over given tokens (all logits; mean cross-entropy);
  ``window_losses``: the mean cross-entropy of each window, for a loss with its standard error.
- ``parity``: does a runtime model (runtime/packed.py) compute what the reference fake-quant model computes? Greedy
  tokens must be identical and the logits within ``PARITY_REL_TOL``.

The model is anything with the Transformer's interface (``cfg.context``, ``tok_emb``, ``new_cache``,
``forward(idx, targets, cache)``): the fake-quant training model on any device, or the packed model of
runtime/packed.py on the CPU. This module imports torch and nothing of the C++ extension, so training can use it
without one. ``DecodeError`` lives here because generation raises it; the runtime and the loader raise it too.
What this is not: a serving engine (no batching across requests, no streaming, no beam search) or a loader
(``loader.load_for_decode`` in decode/).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import Transformer
from .thresholds import RECOMPUTE_REL_TOL

PARITY_REL_TOL = 1e-4  # the packed path is exact; anything above float noise is a bug


class DecodeError(ValueError):
    """A user-facing problem loading or decoding a model; the message is one line."""


@dataclass
class Generation:
    tokens: list  # per prompt, the new tokens only
    entropy: list  # per prompt, entropy (nats) of the model's next-token distribution at each new token
    top1: list  # per prompt, the top-1 probability there
    prefill_s: float  # seconds spent on the prompts
    decode_s: float  # seconds spent generating after the prompts
    logits: list | None = None  # per prompt, (new, V) float32 CPU logits that chose each new token (keep_logits)

    @property
    def n_new(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tok_per_s(self) -> float:
        """New tokens per second of decode (prefill excluded); nan when nothing was decoded after the prompt."""
        rows = len(self.tokens)
        steps = self.n_new - rows  # the first token of each row comes out of the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else math.nan


def _pick(logits, temperature: float, top_k: int | None, gen: torch.Generator | None):
    """Next token (B, 1) from logits (B, V): argmax, or a sample at `temperature` from the top-k."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs.cpu(), 1, generator=gen).to(logits.device)


def _stats(logits):
    """Entropy (nats) and top-1 probability of softmax(logits) per row: two (B,) tensors."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, V)
    p = logp.exp()
    return -(p * logp).sum(-1), p.max(-1).values


def _groups(prompts, max_new_tokens: int, top_k: int | None, context: int) -> dict[int, list[int]]:
    """Prompt indices by prompt length (each length is one batch), after checking the arguments."""
    if max_new_tokens < 1:
        raise DecodeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise DecodeError(f"top_k must be >= 1, got {top_k}")
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise DecodeError("every prompt needs at least one token")
        if len(p) + max_new_tokens > context:
            raise DecodeError(
                f"prompt ({len(p)} tokens) + {max_new_tokens} new tokens exceed the model's "
                f"context of {context}; shorten the prompt or lower --max-new-tokens"
            )
        groups.setdefault(len(p), []).append(i)
    return groups


@torch.no_grad()
def generate(
    model: Transformer,
    prompts,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    keep_logits: bool = False,
) -> Generation:
    """Continue each prompt by ``max_new_tokens`` through the model's KV cache (one token per forward after
    the prompt). temperature <= 0 is greedy; otherwise sampling at ``temperature`` from the ``top_k`` most
    likely tokens (all when None) with a torch.Generator seeded by ``seed``. Prompts of one length share a batch.
    The model decodes in eval mode; its previous mode is restored. Bad arguments raise DecodeError.
    ``keep_logits`` also returns the logits each new token was chosen from (``Generation.logits``).
    """
    groups = _groups(prompts, max_new_tokens, top_k, model.cfg.context)
    device = model.tok_emb.weight.device
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    out_t: list = [None] * len(prompts)
    out_e: list = [None] * len(prompts)
    out_p: list = [None] * len(prompts)
    out_l: list = [None] * len(prompts)
    prefill_s = decode_s = 0.0
    was_training = model.training
    model.eval()
    try:
        for length, rows in groups.items():
            idx = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, P)
            cache = model.new_cache(len(rows), length + max_new_tokens)
            t0 = time.perf_counter()
            logits, _ = model(idx, cache=cache, last_only=True)  # (B, 1, V): the prompt's last position only
            last = logits[:, -1]  # (B, V)
            toks, ents, tops, kept = [], [], [], []
            t1 = time.perf_counter()
            for step in range(max_new_tokens):
                nxt = _pick(last, temperature, top_k, gen)  # (B, 1)
                e, p1 = _stats(last)
                toks.append(nxt)
                ents.append(e)
                tops.append(p1)
                if keep_logits:
                    kept.append(last.float().cpu())
                if step + 1 < max_new_tokens:
                    logits, _ = model(nxt, cache=cache)  # (B, 1, V)
                    last = logits[:, -1]
            t2 = time.perf_counter()
            prefill_s, decode_s = prefill_s + (t1 - t0), decode_s + (t2 - t1)
            tok_t, ent_t, top_t = torch.cat(toks, 1), torch.stack(ents, 1), torch.stack(tops, 1)  # (B, new) each
            for r, i in enumerate(rows):
                out_t[i], out_e[i], out_p[i] = tok_t[r].tolist(), ent_t[r].tolist(), top_t[r].tolist()
                out_l[i] = torch.stack([k[r] for k in kept]) if keep_logits else None  # (new, V)
    finally:
        model.train(was_training)
    return Generation(out_t, out_e, out_p, prefill_s, decode_s, out_l if keep_logits else None)


@torch.no_grad()
def generate_reference(model: Transformer, prompts, max_new_tokens: int) -> list:
    """Greedy continuation recomputing the whole sequence for every token (no cache): the oracle for generate."""
    out = []
    device = model.tok_emb.weight.device
    for p in prompts:
        seq = list(p)
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([seq], dtype=torch.long, device=device))  # (1, T, V)
            seq.append(int(logits[0, -1].argmax()))
        out.append(seq[len(p) :])
    return out


@torch.no_grad()
def recompute_check(model: Transformer, prompts, max_new_tokens: int, *, oracle: Transformer | None = None) -> dict:
    """Does ``model``'s cached greedy decoding compute what a full recompute of the same tokens computes?

    The model decodes ``prompts`` greedily through its KV cache, keeping the logits each token was chosen from;
    the ``oracle`` (default: the model itself, with no cache) then runs one full forward over each prompt plus
    those tokens, and ``generate_reference`` decodes the prompts with no cache at all. Reported: how many greedy
    samples are identical to the no-cache ones; the largest logit difference between the cached step and the
    full forward at the same position, relative to the largest |logit| (max_rel_logit_diff); and the
    ``disagreements``: cached tokens that the full forward does not rank first, unless it had them within
    ``RECOMPUTE_REL_TOL`` of its best (a near-tie, which float rounding may break either way). ``ok`` needs no
    disagreement and max_rel <= RECOMPUTE_REL_TOL. Pass ``oracle`` for a model whose own forward always runs
    through a cache (runtime/fused.py).
    """
    oracle = oracle or model
    g = generate(model, prompts, max_new_tokens, keep_logits=True)
    ref = generate_reference(oracle, prompts, max_new_tokens)
    same = [a == b for a, b in zip(g.tokens, ref)]
    max_abs = max_ref = 0.0
    full = []
    for p, t in zip(prompts, g.tokens):
        row = teacher_forced(oracle, [list(p) + t[:-1]])[0, len(p) - 1 :]  # (new, V): what chose each token
        full.append(row)
        max_ref = max(max_ref, float(row.abs().max()))
    bad = []
    for i, (row, cached, toks) in enumerate(zip(full, g.logits or [], g.tokens)):
        max_abs = max(max_abs, float((row - cached).abs().max()))
        best = row.max(-1)
        for k, t in enumerate(toks):
            gap = float(best.values[k] - row[k, t])
            if gap > RECOMPUTE_REL_TOL * max_ref:
                bad.append({"sample": i, "position": k, "logit_gap": gap})
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    return {
        "samples": len(same),
        "samples_identical": sum(same),
        "tokens_identical": all(same),
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": rel,
        "rel_tol": RECOMPUTE_REL_TOL,
        "disagreements": len(bad),
        "first_disagreement": bad[0] if bad else None,
        "ok": not bad and rel <= RECOMPUTE_REL_TOL,
    }


@torch.no_grad()
def teacher_forced(model: Transformer, sequences) -> torch.Tensor:
    """Logits of every position of equal-length ``sequences`` in one full forward: (B, T, V) on the CPU."""
    idx = torch.tensor([list(s) for s in sequences], dtype=torch.long, device=model.tok_emb.weight.device)
    return model(idx)[0].cpu()


@torch.no_grad()
def val_loss(model: Transformer, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over validation windows (B, T+1) of token ids."""
    idx = windows.to(model.tok_emb.weight.device)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    return float(loss)


@torch.no_grad()
def window_losses(model: Transformer, x: torch.Tensor, y: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of each window: inputs x (B, T), targets y (B, T) (-1 = ignored);
    (B,) float64 on the CPU. Windows go through the model ``chunk`` at a time (large vocabularies)."""
    device, out = model.tok_emb.weight.device, []
    for i in range(0, x.shape[0], chunk):
        xi, yi = x[i : i + chunk].to(device), y[i : i + chunk].to(device)
        logits, _ = model(xi)  # (b, T, V)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yi.reshape(-1), ignore_index=-1, reduction="none")
        keep = (yi >= 0).double()  # (b, T)
        out.append((ce.view_as(keep).double() * keep).sum(1).cpu() / keep.sum(1).clamp(min=1).cpu())
    return torch.cat(out)


def parity(
    runtime: Transformer, reference: Transformer, prompts, max_new_tokens: int, *, return_generations: bool = False
):
    """Does the runtime model compute what the reference (fake-quant) model computes?

    Both decode ``prompts`` greedily through their KV caches; tokens must be identical. Then both run one full
    forward over each prompt + the runtime's tokens and every logit is compared: max_abs_logit_diff, and
    max_rel_logit_diff = max_abs / max |reference logit| (relative to the logit scale; per-element ratios
    blow up near zero). ``ok`` needs identical tokens and max_rel <= PARITY_REL_TOL.
    With return_generations=True, returns (report, runtime Generation, reference Generation).
    """
    a = generate(runtime, prompts, max_new_tokens)
    b = generate(reference, prompts, max_new_tokens)
    same = [x == y for x, y in zip(a.tokens, b.tokens)]
    first = next((i for i, s in enumerate(same) if not s), None)
    max_abs = max_ref = 0.0
    by_len: dict[int, list[list[int]]] = {}
    for p, t in zip(prompts, a.tokens):
        by_len.setdefault(len(p) + len(t), []).append(list(p) + t)
    for seqs in by_len.values():
        la, lb = teacher_forced(runtime, seqs), teacher_forced(reference, seqs)  # (B, T, V) each
        max_abs = max(max_abs, float((la - lb).abs().max()))
        max_ref = max(max_ref, float(lb.abs().max()))
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    out = {
        "tokens_identical": all(same),
        "samples_identical": sum(same),
        "samples": len(same),
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": rel,
        "rel_tol": PARITY_REL_TOL,
        "bitwise": max_abs == 0.0,
    }
    out["ok"] = out["tokens_identical"] and rel <= PARITY_REL_TOL
    if first is not None:
        k = next(j for j, (x, y) in enumerate(zip(a.tokens[first], b.tokens[first])) if x != y)
        out["first_mismatch"] = {"sample": first, "position": k}
    return (out, a, b) if return_generations else out
