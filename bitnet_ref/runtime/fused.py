"""The fused decode path: a packed model's whole token in one C++ call (cpp/decode_step.h), for speed.

``FusedTransformer(packed_model)`` wraps a packed Transformer (``packed.to_packed``, ``random_packed``) with
the same interface ``generate.generate`` uses (``cfg``, ``tok_emb``, ``new_cache``, ``forward(idx, targets,
cache)``), so every decoding tool runs it unchanged. Each forward position is one ``_core.FusedDecoder.step``:
embedding, every layer (norms, the shared int8 quantization, the exact ternary products, RoPE, the KV cache,
grouped-query attention, the FFN) and the head, with no torch op and no Python per layer. The weights are the
packed model's own buffers (nothing is copied); the KV cache is a preallocated numpy pair.

Exactness: the integer products are the exact ones of the torch path, and the int8 head's logits are computed
in the same order; the float glue (RMSNorm sums, softmax, SiLU) rounds differently from torch's vectorised
reductions in the last bits, so this path is close to, not bit-identical with, the training forward. The
torch path (``PackedBitLinear`` in the Transformer) stays the exact oracle, and tests/test_fused.py checks
this one against it: identical greedy tokens on fixed prompts, logits within ``FUSED_REL_TOL``.

Supported: the official layout without ablations, 2-bit or 1.6-bit packed layers, float32 or int8 head and
embedding. Anything else raises DecodeError with the reason (decode it through the torch path).
What this is not: batching across requests, or a training path (no gradients).
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
    (each sequence's cache one contiguous block, so the C++ step reads it in place)."""

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim):
        shape = (batch, n_layers, max_len, n_kv_heads, head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.batch, self.max_len, self.pos = batch, max_len, 0


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

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) float32 (and the mean cross-entropy when targets are given), as Transformer.forward.
        Positions run one at a time through the cache (a temporary one when none is given)."""
        B, T = idx.shape
        if cache is None:
            cache = self.new_cache(B, T)
        if cache.pos + T > cache.max_len:
            raise ValueError(f"sequence of {cache.pos + T} positions exceeds the limit of {cache.max_len}")
        if B != cache.batch:
            raise ValueError(f"batch {B} does not match the cache's batch {cache.batch}")
        ids = np.ascontiguousarray(idx.detach().cpu().numpy().astype(np.int64, copy=False))  # (B, T)
        out = []
        try:
            for t in range(T):
                out.append(self.decoder.step(np.ascontiguousarray(ids[:, t]), cache.pos + t, cache.k, cache.v))
        except ValueError as e:
            if "finite" in str(e):
                raise DecodeError(f"{e}; the checkpoint diverged") from None
            raise
        cache.pos += T
        logits = torch.from_numpy(out[0][:, None] if T == 1 else np.stack(out, axis=1))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
