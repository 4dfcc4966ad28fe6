"""The token-diversity probe: is the model still saying different things?

The seed's symptom was a "unique tokens" column falling from 20 to 2 while the loss barely moved. This module
measures that carefully, with fixed prompts and deterministic (greedy) decoding so that two evaluations of
the same weights give the same numbers:

- ``probe_prompts``: ``n`` fixed prompts evenly spaced through the validation tokens;
- ``greedy_decode``: argmax continuation through the model's KV cache (the same fake-quant forward used in
  training, so there is no train/inference mismatch);
- pure metrics over the generated tokens only (never the prompt): ``unique_tokens``, ``distinct_n``,
  ``max_repeat_run``, ``top_token_share``, ``token_entropy``, and ``diversity`` bundling them.

A "sample" is a sequence of token ids; metrics take a list of samples. What this is not: a sampler with
temperature/top-k (the decode tool adds those), or a quality metric -- a diverse model can still be wrong.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch


def unique_tokens(samples) -> int:
    """Number of distinct token ids over all samples together."""
    return len({int(t) for s in samples for t in s})


def distinct_n(samples, n: int) -> float:
    """Distinct n-grams / total n-grams, n-grams taken within each sample; 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(int(t) for t in s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def max_repeat_run(samples) -> int:
    """Longest run of one token repeated back to back, within any sample (0 for no tokens)."""
    best = 0
    for s in samples:
        run, prev = 0, None
        for t in s:
            t = int(t)
            run = run + 1 if t == prev else 1
            prev = t
            best = max(best, run)
    return best


def _histogram(samples) -> Counter:
    return Counter(int(t) for s in samples for t in s)


def top_token_share(samples) -> float:
    """Share of all generated tokens taken by the most frequent one (1.0 = a single token repeated)."""
    h = _histogram(samples)
    total = sum(h.values())
    return max(h.values()) / total if total else 0.0


def token_entropy(samples) -> float:
    """Entropy in nats of the generated-token histogram (0 for one repeated token, ln V at most)."""
    h = _histogram(samples)
    total = sum(h.values())
    return float(-sum(c / total * math.log(c / total) for c in h.values())) if total else 0.0


def diversity(samples) -> dict:
    """All probe metrics of ``samples`` as a plain dict (the keys used in metrics.jsonl)."""
    return {
        "unique_tokens": unique_tokens(samples),
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "max_repeat_run": max_repeat_run(samples),
        "top_token_share": top_token_share(samples),
        "token_entropy": token_entropy(samples),
    }


def probe_prompts(val_tokens, n: int = 4, length: int = 16) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens, starting at evenly spaced offsets of the validation tokens."""
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 and length >= 1, got n={n}, length={length}")
    room = len(val_tokens) - length  # last valid start
    if room < 0:
        raise ValueError(f"validation data has {len(val_tokens)} tokens, fewer than one prompt of {length}")
    starts = [i * room // max(n - 1, 1) for i in range(n)] if n > 1 else [0]
    return [[int(t) for t in np.asarray(val_tokens[s:s + length])] for s in starts]


@torch.no_grad()
def greedy_decode(model, prompts, new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt by ``new_tokens`` tokens; returns the new tokens only.

    Prompts of equal length are decoded as one batch through ``model.new_cache``; the model is put in eval
    mode for the call and its previous mode restored.
    """
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be >= 0, got {new_tokens}")
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out: list[list[int] | None] = [None] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError("every prompt needs at least one token")
            by_len.setdefault(len(p), []).append(i)
        for length, rows in by_len.items():
            idx = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, P)
            gen = _greedy_batch(model, idx, new_tokens)  # (B, new_tokens)
            for r, i in enumerate(rows):
                out[i] = gen[r].tolist()
        return out
    finally:
        model.train(was_training)


def _greedy_batch(model, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    b, p = idx.shape
    if new_tokens == 0:
        return idx.new_zeros((b, 0))
    context = getattr(getattr(model, "cfg", None), "context", None)
    if context is not None and p + new_tokens > context:
        raise ValueError(f"prompt ({p}) + new tokens ({new_tokens}) exceed the model context ({context})")
    cache = model.new_cache(b, p + new_tokens)
    logits, _ = model(idx, cache=cache)  # (B, P, V)
    nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
    gen = [nxt]
    for _ in range(new_tokens - 1):
        logits, _ = model(nxt, cache=cache)  # (B, 1, V)
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        gen.append(nxt)
    return torch.cat(gen, dim=1)  # (B, new_tokens)
