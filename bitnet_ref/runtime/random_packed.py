"""Random ternary models built packed directly, at any preset's shape: for decode benchmarks at real sizes.

``random_packed_model("bitnet-b1.58-2b-4t", seed=0)`` is a decoding Transformer whose every BitLinear is a
``PackedBitLinear`` holding random 2-bit codes (weights -1, 0, +1 with probability 1/4, 1/2, 1/4) and a beta
of 1 / sqrt(K/2) (unit gain on unit inputs), with norms at 1 and random N(0, 0.02) embedding/head rows.
Nothing of the training model is materialised: the skeleton is built on the meta device, each layer's random
bits go straight into packed storage (K a multiple of 128; otherwise one layer's int8 codes at a time, then
packed), and the embedding/head rows are drawn in chunks and quantized to int8 as they come (``head="int8"``,
the default) unless the float32 head is asked for (``head="fp32"``: the reference for the int8 head's
agreement figures; 1.3 GB at the 2B-4T shape). Deterministic by seed: the same seed gives the same codes,
betas and rows whatever the head format, so the two heads are comparable.

Speed does not depend on what weights learned, which is why random weights serve for decode benchmarks; the
outputs mean nothing. What this is not: an initialiser for training (``model.Transformer``) or a loader of
real checkpoints (``loader.load_for_decode`` in decode/).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from bitnet_ref.model import BitLinear, ModelConfig, RMSNorm, Transformer, rope_tables
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.int8_head import HEAD_FORMATS, Int8Embedding, Int8Head, Int8Rows, quantize_rows_into
from bitnet_ref.runtime.packed import PackedBitLinear, PackedWeight, replace_submodule

ROW_STD = 0.02  # the trainer's init of embedding and head rows
_ROW_CHUNK = 1024  # rows drawn and quantized at a time: ~10 MB of float temporaries at d 2560


_CODE_OF_DRAW = np.array([-1, 0, 0, 1], dtype=np.int8)  # a uniform draw in 0..3 -> a code


def random_codes(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n, k) int8 ternary codes: 0 with probability 1/2, -1 and +1 with 1/4 each."""
    return _CODE_OF_DRAW[rng.integers(0, 4, size=(n, k), dtype=np.int8)]


def random_packed_bytes(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """The 2-bit packed buffer (kernels.pack_ternary's layout; K a multiple of 128, so no padding) of random
    codes with random_codes' distribution, straight from random bytes: every 2-bit field 3 (invalid) becomes 1
    (weight 0), so each field is 0, 1, 2 (weight -1, 0, +1) with probability 1/4, 1/2, 1/4. 64-byte aligned,
    as pack_ternary's buffers are."""
    nbytes = kernels.packed_nbytes(n, k)
    b = np.frombuffer(rng.bytes(nbytes), dtype=np.uint8)
    holder = np.empty(nbytes + 63, dtype=np.uint8)
    off = (-holder.ctypes.data) % 64
    out = holder[off : off + nbytes]
    np.bitwise_xor(b, ((b >> 1) & b & 0x55) << 1, out=out)  # fields 3 (both bits set): clear the high bit
    return out


def iter_random_rows(seed: int, V: int, d: int):
    """(first row, float32 chunk (R, d)) over V rows ~ N(0, ROW_STD) drawn from ``seed``, _ROW_CHUNK at a time:
    the float rows behind random_rows, for checks that need them without holding them all."""
    g = torch.Generator().manual_seed(seed)
    for r in range(0, V, _ROW_CHUNK):
        yield r, torch.randn(min(_ROW_CHUNK, V - r), d, generator=g) * ROW_STD


def random_rows(seed: int, V: int, d: int, head: str) -> torch.Tensor | Int8Rows:
    """V rows of width d from iter_random_rows: an Int8Rows (head="int8") or a float32 (V, d) tensor
    (head="fp32"). The float values are the same either way."""
    if head == "fp32":
        out = torch.empty(V, d)
        for r, chunk in iter_random_rows(seed, V, d):
            out[r : r + len(chunk)] = chunk
        return out
    rows = Int8Rows.empty(V, d)
    for r, chunk in iter_random_rows(seed, V, d):
        quantize_rows_into(chunk, rows.q[r : r + len(chunk)], rows.scale[r : r + len(chunk)])
    return rows


def head_seed(cfg: ModelConfig, seed: int) -> int:
    """The seed of the head's rows in random_packed_model (the embedding's when tied)."""
    return seed + 1 if cfg.tie_embeddings else seed + 2


def random_packed_model(
    cfg: ModelConfig | str, *, seed: int = 0, head: str = "int8", format: str = "2", threads: int | None = None
) -> Transformer:
    """A random packed decoding model of ``cfg`` (a ModelConfig or a preset name); see the module docstring."""
    if isinstance(cfg, str):
        cfg = ModelConfig.preset(cfg)
    if head not in HEAD_FORMATS:
        raise ValueError(f"unknown head format {head!r}; choose one of {', '.join(HEAD_FORMATS)}")
    if cfg.quant != "ternary" or cfg.ablate:
        raise ValueError("random packed models are plain ternary models (quant='ternary', no ablations)")
    if not kernels.available():
        raise RuntimeError(f"random packed models need the C++ extension ({kernels.import_error()})")
    with torch.device("meta"):
        model = Transformer(cfg)  # the skeleton: no storage
    rng = np.random.default_rng(seed)
    for name, m in list(model.bitlinears()):
        n, k = m.out_features, m.in_features
        if format == "2" and k % 128 == 0:  # 128: the 2-bit block (cpp/ternary.h)
            packed = random_packed_bytes(rng, n, k)
        else:  # padding or the 1.6-bit format: draw the codes (this layer's only), then pack them
            packed = kernels.pack_ternary(random_codes(rng, n, k), format=format)
        beta = torch.tensor(1.0 / math.sqrt(k / 2), dtype=torch.float32)  # half the weights are nonzero
        w = PackedWeight(packed, beta, n, k, format)
        norm = RMSNorm(m.in_features, cfg.norm_eps) if isinstance(m.norm, RMSNorm) else nn.Identity()
        replace_submodule(model, name, PackedBitLinear(w, norm, threads=threads))
    for name, m in list(model.named_modules()):
        if isinstance(m, RMSNorm) and m.weight.is_meta:
            replace_submodule(model, name, RMSNorm(m.weight.numel(), m.eps))
    V, d = cfg.vocab_size, cfg.d_model
    emb = random_rows(seed + 1, V, d, head)
    out = emb if cfg.tie_embeddings else random_rows(head_seed(cfg, seed), V, d, head)
    if isinstance(emb, Int8Rows) and isinstance(out, Int8Rows):
        model.tok_emb, model.head = Int8Embedding(emb), Int8Head(out, threads)
    else:
        assert isinstance(emb, torch.Tensor) and isinstance(out, torch.Tensor)
        model.tok_emb = nn.Embedding.from_pretrained(emb, freeze=True)
        model.head = nn.Linear(d, V, bias=False)
        model.head.weight = model.tok_emb.weight if cfg.tie_embeddings else nn.Parameter(out, requires_grad=False)
    cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left or any(isinstance(m, BitLinear) for m in model.modules()):
        raise AssertionError(f"random_packed_model left meta tensors behind: {left[:3]}")
    return model.eval()
