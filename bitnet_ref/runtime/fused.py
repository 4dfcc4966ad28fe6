"""The fused path: a packed model's forward in one C++ call per forward (cpp/decode_step.h), for speed.

``FusedTransformer(packed_model)`` wraps a packed Transformer (``packed.to_packed``, ``random_packed``) with
the same interface ``generate.generate`` uses (``cfg``, ``tok_emb``, ``new_cache``, ``forward(idx, targets,
cache, last_only)``), so every decoding tool runs it unchanged. Each forward, whatever its shape, is one
``_core.FusedDecoder.forward``: embedding, every layer (norms, the shared int8 quantization, the exact ternary
products, RoPE, the KV cache, causal grouped-query attention, the FFN) and the head, with no torch op and no Python
per layer or position. A prompt of T tokens (prefill, teacher forcing) runs its T positions through each weight
matrix as one GEMM; a decode step of B sequences runs its B rows as one GEMM. The weights are the packed model's
own buffers (nothing is copied); the KV cache is a preallocated numpy pair, and every sequence in it has its own
position (``FusedCache.pos``), so sequences at different positions can share a step.

Exactness: the integer products are the exact ones of the torch path, and the int8 head's logits are computed
in the same order; the float glue (RMSNorm sums, softmax, SiLU) rounds differently from torch's vectorised
reductions in the last bits, so this path is close to, not bit-identical with, the training forward. The
torch path (``PackedBitLinear`` in the Transformer) stays the exact oracle, and tests/test_fused.py checks
this one against it: identical greedy tokens on fixed prompts, logits within ``FUSED_REL_TOL``. Among
themselves the fused calls are bit-identical: a prompt in one call or a token at a time, a sequence alone or in a
batch.

Supported: the official layout without ablations, 2-bit or 1.6-bit packed layers, float32 or int8 head and
embedding. Anything else raises DecodeError with the reason (decode it through the torch path).
What this is not: a server (no request queue, no paged cache), or a training path (no gradients).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref.generate import DecodeError
from bitnet_ref.model import Block, RMSNorm, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.int8_head import Int8Embedding, Int8Head
from bitnet_ref.runtime.packed import PackedBitLinear

# Largest |fused - exact| logit difference over the largest |exact logit| accepted by the tests: the float glue
# differs from torch's in the last bits, and a last-bit change can move an int8 activation code by one step
# (1/127 of the row's absmax) where a value sits on a rounding boundary; later layers carry that on. Measured:
# 1.2e-3 on the tests' trained checkpoint (6 prompts x 64 positions, either head), ~3e-7 at a typical position;
# on random-weight models, whose activations sit on such boundaries more often, single positions reached 1e-2
# and 2e-2 (3 of 5 default-size seeds stayed below 1e-6). A wrong head, norm, RoPE or cache position moves
# logits by O(1), far above this.
FUSED_REL_TOL = 1e-2


class FusedCache:
    """The fused path's KV cache: k, v (batch, n_layers, max_len, n_kv_heads, head_dim) float32, preallocated
    (each sequence's cache one contiguous block, so the C++ forward reads it in place), and ``pos`` (batch,) int64:
    the positions each sequence has filled."""

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim):
        shape = (batch, n_layers, max_len, n_kv_heads, head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.pos = np.zeros(batch, dtype=np.int64)
        self.batch, self.max_len = batch, max_len

    def sequences(self, start: int, stop: int) -> FusedCache:
        """Sequences start .. stop - 1 as a cache of their own sharing this one's memory (k, v and pos are views):
        a forward through it fills those sequences alone, e.g. prompts of different lengths before one batched
        decode step of them all."""
        if not 0 <= start < stop <= self.batch:
            raise ValueError(f"sequences {start}:{stop} are not within the cache's batch of {self.batch}")
        view = object.__new__(FusedCache)
        view.k, view.v, view.pos = self.k[start:stop], self.v[start:stop], self.pos[start:stop]
        view.batch, view.max_len = stop - start, self.max_len
        return view


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def _rows(module) -> tuple:
    """(float32 rows, None, None) or (None, int8 rows, scales) of an embedding or head module."""
    if isinstance(module, (Int8Embedding, Int8Head)):
        return None, module.rows.q.numpy(), module.rows.scale.numpy()
    if isinstance(module, (nn.Embedding, nn.Linear)):
        return _f32(module.weight), None, None
    raise DecodeError(f"the fused path cannot read a {type(module).__name__} head or embedding")


class FusedTransformer(nn.Module):
    """generate()-compatible wrapper running a packed model's tokens through _core.FusedDecoder."""

    def __init__(self, model: Transformer, *, threads: int | None = None):
        super().__init__()
        cfg = model.cfg
        if cfg.layout != "official" or cfg.ablate or cfg.quant != "ternary":
            raise DecodeError(
                f"the fused path runs the official layout without ablations (this model: layout "
                f"{cfg.layout!r}, ablate {cfg.ablate}); decode it without --fused"
            )
        if not kernels.available():
            raise DecodeError(f"the fused path needs the C++ extension ({kernels.import_error()})")
        linears, norms, fmt = [], [], None
        blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]  # ModuleList yields Modules
        for i, b in enumerate(blocks):
            layer = [
                b.attn.q_proj,
                b.attn.k_proj,
                b.attn.v_proj,
                b.attn.o_proj,
                b.ffn.gate_proj,
                b.ffn.up_proj,
                b.ffn.down_proj,
            ]
            for lin in layer:
                if not (isinstance(lin, PackedBitLinear) and lin.scaled):
                    raise DecodeError(f"block {i} has a {type(lin).__name__}; the fused path needs a packed model")
                fmt = fmt or lin.w.format
                if lin.w.format != fmt:
                    raise DecodeError("the fused path needs one packed format for every layer")
                linears.append((lin.w.packed, float(lin.w.beta)))
            for n in (b.attn_norm, b.attn.sub_norm, b.ffn_norm, b.ffn.sub_norm):
                if not isinstance(n, RMSNorm) or n.eps != cfg.norm_eps:
                    raise DecodeError(f"block {i} has a {type(n).__name__} norm; the fused path needs RMSNorms")
                norms.append(_f32(n.weight))
        dims = dict(
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            ffn_hidden=cfg.ffn_hidden,
            vocab_size=cfg.vocab_size,
            context=cfg.context,
            n_layers=cfg.n_layers,
            swiglu=cfg.ffn_act == "swiglu",
            eps=float(cfg.norm_eps),
        )
        self.cfg, self.tok_emb, self.threads = cfg, model.tok_emb, threads
        self.source = model  # the packed model whose buffers the decoder reads (kept alive; weight_bytes_per_token)
        self.decoder = kernels._load().FusedDecoder(
            dims,
            linears,
            norms,
            _f32(model.norm.weight),
            _rows(model.tok_emb),
            _rows(model.head),
            _f32(model.rope_cos),
            _f32(model.rope_sin),
            fmt or "2",
            "",
            threads or 0,
        )

    def new_cache(self, batch: int, max_len: int | None = None) -> FusedCache:
        max_len = self.cfg.context if max_len is None else max_len
        if not 1 <= max_len <= self.cfg.context:
            raise ValueError(f"cache length {max_len} must be in [1, context={self.cfg.context}]")
        c = self.cfg
        return FusedCache(c.n_layers, batch, c.n_kv_heads, max_len, c.head_dim)

    def forward(self, idx, targets=None, cache=None, *, last_only: bool = False):
        """Logits (B, T, V) float32 (and the mean cross-entropy when targets are given), as Transformer.forward: one
        C++ call for the whole (B, T) block, through the cache (a temporary one when none is given). last_only:
        only each sequence's last position goes through the head, logits (B, 1, V) (a prompt before generation)."""
        B, T = idx.shape
        if cache is None:
            cache = self.new_cache(B, T)
        if B != cache.batch:
            raise ValueError(f"batch {B} does not match the cache's batch {cache.batch}")
        if T < 1 or int(cache.pos.max(initial=0)) + T > cache.max_len:
            raise ValueError(
                f"sequence of {int(cache.pos.max(initial=0)) + T} positions exceeds the limit of {cache.max_len}"
            )
        if last_only and targets is not None:
            raise ValueError("last_only computes no logits for the targets' positions")
        ids = np.ascontiguousarray(idx.detach().cpu().numpy().astype(np.int64, copy=False))  # (B, T)
        try:
            out = self.decoder.forward(ids, cache.pos, cache.k, cache.v, last_only)  # (B, T, V) or (B, V)
        except ValueError as e:
            if "finite" in str(e):
                raise DecodeError(f"{e}; the checkpoint diverged") from None
            raise
        cache.pos += T
        logits = torch.from_numpy(out[:, None] if last_only else out)  # (B, T or 1, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
