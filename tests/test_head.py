"""The int8 head (bitnet_ref/runtime/int8_head.py) and its exact int8 x int8 kernel (kernels.int8_matmul): the
kernel equals the int64 product on every backend; Int8Head's C++ path equals its torch reference bit for bit;
quantized rows stay in range and near the float rows; a tied model's head and embedding share one set of rows."""

import copy

import numpy as np
import pytest
import torch
from _decode_ckpt import needs_ext, trained_checkpoint

from bitnet_ref import generate as G
from bitnet_ref.decode import loader as L
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.int8_head import Int8Embedding, Int8Head, quantize_rows, to_int8_head


@needs_ext
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 7, 31), (3, 300, 33), (1, 1029, 2567), (2, 5, 64)])
def test_int8_matmul_equals_the_int64_product(m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    for backend in kernels.supported_backends():
        for threads in (1, 2):
            got = kernels.int8_matmul(x, w, backend=backend, threads=threads)
            assert got.dtype == np.int32 and np.array_equal(got, want), (backend, threads)


@needs_ext
def test_int8_matmul_overflow_corner_is_exact():
    k = 65536  # the largest K: |y| = 2**30
    for xv, wv in ((-128, -128), (-128, 127), (127, 127)):
        x, w = np.full((1, k), xv, np.int8), np.full((3, k), wv, np.int8)
        assert (kernels.int8_matmul(x, w) == xv * wv * k).all()


@needs_ext
def test_int8_matmul_refuses_bad_input_in_one_line():
    x, w = np.zeros((1, 8), np.int8), np.zeros((4, 8), np.int8)
    cases = [
        ((x, np.zeros((4, 9), np.int8)), ValueError, "columns"),
        ((x.astype(np.float32), w), TypeError, "integer"),
        ((x[0], w), ValueError, "2-D"),
        ((np.zeros((1, 65537), np.int8), np.zeros((1, 65537), np.int8)), ValueError, "maximum"),
        ((x, np.ones((4, 8), np.int16) * 300), ValueError, r"\[-128, 127\]"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg) as e:
            kernels.int8_matmul(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="threads"):
        kernels.int8_matmul(x, w, threads=0)


def test_quantized_rows_are_in_range_and_close():
    torch.manual_seed(0)
    w = torch.randn(1000, 96) * 0.02
    w[3] = 0.0  # an all-zero row
    rows = quantize_rows(w, chunk=64)
    assert rows.q.dtype == torch.int8 and int(rows.q.abs().max()) == 127
    assert (rows.q[3] == 0).all() and bool(torch.isfinite(rows.scale).all())
    err = (rows.q.float() * rows.scale[:, None] - w).abs()
    assert bool((err <= rows.scale[:, None] / 2 * 1.0001).all())  # at most half a step per element
    assert torch.equal(rows.q, quantize_rows(w, chunk=1000).q)  # chunking changes nothing


def test_rows_from_an_f16_numpy_map_chunk_by_chunk_equal_the_whole_float32_matrix():
    """What read_gguf(head="int8") does with a file's F16 embedding: quantize numpy fp16 chunks as they come; the
    rows are those of the whole matrix converted to float32 first, for any chunk size, and done() sees every row."""
    w16 = (np.random.default_rng(2).standard_normal((1000, 96)) * 0.02).astype(np.float16)
    w16[7] = 0
    whole = quantize_rows(torch.from_numpy(w16.astype(np.float32)), chunk=1000)
    for chunk in (1, 64, 333, 1000, 4096):
        seen = []
        rows = quantize_rows(w16, chunk=chunk, done=lambda r0, r1, seen=seen: seen.append((r0, r1)))
        assert torch.equal(rows.q, whole.q) and torch.equal(rows.scale, whole.scale), chunk
        assert seen[0][0] == 0 and seen[-1][1] == 1000 and all(a[1] == b[0] for a, b in zip(seen, seen[1:]))


@needs_ext
def test_int8_head_cpp_path_equals_its_torch_reference_bit_for_bit():
    torch.manual_seed(1)
    head = Int8Head(quantize_rows(torch.randn(500, 64) * 0.02))
    x = torch.randn(3, 5, 64) * torch.tensor([1e-3, 1.0, 40.0])[:, None, None]
    assert torch.equal(head(x), head.forward_reference(x))
    with pytest.raises(G.DecodeError, match="non-finite"):
        head(torch.full((1, 64), float("nan")))


@needs_ext
def test_tied_model_shares_one_set_of_int8_rows():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", tie_embeddings=True)).eval()
    w = model.head.weight.detach().clone()
    q = to_int8_head(P.to_packed(copy.deepcopy(model)))
    assert isinstance(q.head, Int8Head) and isinstance(q.tok_emb, Int8Embedding)
    assert q.head.rows is q.tok_emb.rows
    idx = torch.tensor([[5, 9]])
    assert torch.allclose(q.tok_emb(idx)[0], w[[5, 9]], atol=float(q.head.rows.scale.max()))
    wb = P.weight_bytes_per_token(q)
    assert wb["other"] >= q.head.rows.nbytes and wb["other"] < 4 * w.numel()  # int8 rows, not float32
    assert len(G.generate(q, [[1, 2, 3]], 4).tokens[0]) == 4
    untied = to_int8_head(P.to_packed(copy.deepcopy(Transformer(ModelConfig.preset("tiny")).eval())))
    assert isinstance(untied.tok_emb, torch.nn.Embedding)  # an untied embedding stays float32


@needs_ext
def test_int8_head_agrees_with_the_float_head_on_a_trained_checkpoint():
    path = trained_checkpoint()
    exact = L.load_for_decode(path, "packed").model
    int8 = L.load_for_decode(path, "packed", head="int8").model
    idx = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    a, b = G.teacher_forced(exact, idx.tolist()), G.teacher_forced(int8, idx.tolist())  # (B, T, V)
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert top1 >= 0.95, float(top1)  # measured 1.0 here; the int8 rounding moves logits by ~1%
    assert (a - b).abs().max() <= 0.05 * a.abs().max()
    with pytest.raises(DecodeError, match="unknown head"):
        L.load_for_decode(path, "packed", head="bf16")
