"""Random packed models (bitnet_ref/runtime/random_packed.py): built without the training model's storage,
deterministic by seed, valid packed codes with the documented distribution, the same rows whatever the head format,
and decodable by both the exact and the fused path."""

import numpy as np
import pytest
import torch
from _decode_ckpt import needs_ext

from bitnet_ref import generate as G
from bitnet_ref.model import ModelConfig
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.fused import FusedTransformer
from bitnet_ref.runtime.random_packed import random_packed_bytes, random_packed_model

SMALL = ModelConfig.preset(
    "bitnet-b1.58-2b-4t", d_model=256, n_layers=2, n_heads=4, n_kv_heads=1, ffn_hidden=384, vocab_size=1000, context=64
)


@needs_ext
def test_random_packed_bytes_are_valid_codes_with_the_documented_distribution():
    b = random_packed_bytes(np.random.default_rng(0), 64, 1024)
    assert b.ctypes.data % 64 == 0
    codes = kernels.unpack_ternary(b, 64, 1024)  # checks every field: no code 3
    frac = [(codes == v).mean() for v in (-1, 0, 1)]
    assert abs(frac[0] - 0.25) < 0.01 and abs(frac[1] - 0.5) < 0.01 and abs(frac[2] - 0.25) < 0.01


@needs_ext
def test_random_packed_model_is_deterministic_and_decodes():
    a, b = random_packed_model(SMALL, seed=3), random_packed_model(SMALL, seed=3)
    c = random_packed_model(SMALL, seed=4)
    wa = [m.w.packed for m in a.modules() if isinstance(m, P.PackedBitLinear)]
    wb = [m.w.packed for m in b.modules() if isinstance(m, P.PackedBitLinear)]
    wc = [m.w.packed for m in c.modules() if isinstance(m, P.PackedBitLinear)]
    assert len(wa) == 14 and all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not np.array_equal(wa[0], wc[0])
    assert torch.equal(a.head.rows.q, b.head.rows.q) and a.head.rows is a.tok_emb.rows  # tied: one copy
    assert all(not t.is_meta for t in list(a.parameters()) + list(a.buffers()))
    prompt = [[1, 2, 3, 4]]
    exact, fused = G.generate(a, prompt, 8), G.generate(FusedTransformer(a), prompt, 8)
    assert exact.tokens == fused.tokens and len(exact.tokens[0]) == 8


@needs_ext
def test_the_head_formats_hold_the_same_rows():
    cfg = ModelConfig.preset(
        "bitnet-b1.58-large", d_model=128, n_layers=1, n_heads=2, ffn_hidden=256, vocab_size=300, context=32
    )
    int8, fp32 = random_packed_model(cfg, seed=1), random_packed_model(cfg, seed=1, head="fp32")
    rows = int8.head.rows
    assert torch.allclose(rows.q.float() * rows.scale[:, None], fp32.head.weight, atol=float(rows.scale.max()))
    assert not torch.equal(fp32.head.weight, fp32.tok_emb.weight)  # untied: two sets of rows
    la, lb = int8(torch.tensor([[1, 2, 3]]))[0], fp32(torch.tensor([[1, 2, 3]]))[0]
    assert (la - lb).abs().max() <= 0.05 * lb.abs().max()  # the int8 rounding only
    with pytest.raises(ValueError, match="head format"):
        random_packed_model(cfg, head="bf16")
    with pytest.raises(ValueError, match="1.6|format"):
        random_packed_model(cfg, format="3")
