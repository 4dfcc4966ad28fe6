"""The token-diversity probe: is the model still saying different things?

The debugging report's symptom was a "unique tokens" column falling from 20 to 2 while the loss barely moved
(docs/modules.md says what that report was). This module measures that carefully, with fixed prompts and
deterministic (greedy) decoding so that two evaluations of the same weights give the same numbers:

- ``probe_prompts``: ``n`` fixed prompts evenly spaced through the validation tokens;
- ``greedy_decode``: argmax continuation through the model's KV cache (``generate.generate``, greedy), run on the
  same fake-quant forward used in training, so there is no train/inference mismatch;
- pure metrics over the generated tokens only (never the prompt): ``unique_tokens``, ``distinct_n``,
  ``max_repeat_run``, ``top_token_share``, ``min_sample_top_share``, ``token_entropy``, and ``diversity``
  bundling them.

A "sample" is a sequence of token ids; metrics take a list of samples. What this is not: a sampler with
temperature/top-k (``generate.generate`` has those), or a quality metric -- a diverse model can still be wrong.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from bitnet_ref.generate import generate


def unique_tokens(samples) -> int:
    """Number of distinct token ids over all samples together."""
    return len({int(t) for s in samples for t in s})


def distinct_n(samples, n: int) -> float:
    """Distinct n-grams / total n-grams, n-grams taken within each sample; 0.0 when there are none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(int(t) for t in s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
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


def min_sample_top_share(samples) -> float:
    """The least repetitive sample's top-token share: ~1 when every sample repeats one token, whichever token
    each repeats (top_token_share is 1/n then for n prompts looping on n different tokens)."""
    shares = [top_token_share([s]) for s in samples if len(s)]
    return min(shares) if shares else 0.0


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
        "min_sample_top_share": min_sample_top_share(samples),
    }


def probe_prompts(val_tokens, n: int = 4, length: int = 16) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens, starting at evenly spaced offsets of the validation tokens."""
    if n < 1 or length < 1:
        raise ValueError(f"need n >= 1 and length >= 1, got n={n}, length={length}")
    room = len(val_tokens) - length  # last valid start
    if room < 0:
        raise ValueError(f"validation data has {len(val_tokens)} tokens, fewer than one prompt of {length}")
    starts = [i * room // max(n - 1, 1) for i in range(n)] if n > 1 else [0]
    return [[int(t) for t in np.asarray(val_tokens[s : s + length])] for s in starts]


def greedy_decode(model, prompts, new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt by ``new_tokens`` tokens; returns the new tokens only.

    This is ``generate.generate`` at temperature 0 (the one KV-cache decoder: prompts of equal length share a
    batch, the model decodes in eval mode and gets its previous mode back), plus what the trainer's eval needs:
    ``new_tokens == 0`` gives one empty list per prompt. Bad arguments raise ValueError (DecodeError is one).
    """
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be >= 0, got {new_tokens}")
    if new_tokens == 0 or not prompts:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        return [[] for _ in prompts]
    return generate(model, prompts, new_tokens).tokens
