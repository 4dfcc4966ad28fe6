"""Tests for bitnet_ref.runtime.kernels: packed layout, round trips, exact matmul on every path, bad input,
and the fused float path (act_quant, quant_matmul) against bitnet_ref.quant, bit for bit.

Every kernel the CPU supports (portable "scalar", "avx2", "avx512vnni", "neon", "dotprod") is compared with numpy's
int64 product for exact equality; the C++ CTest suite (cpp/test_ternary.cpp) covers the same ground
without Python.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bitnet_ref import quant as Q
from bitnet_ref.runtime import kernels

BACKENDS = kernels.supported_backends() if kernels.available() else ["scalar"]


def pack_py(codes: np.ndarray) -> np.ndarray:
    """The layout documented in cpp/ternary.h, written independently in numpy."""
    n, k = codes.shape
    nblk = -(-k // 128)
    c = np.ones((n, nblk * 128), dtype=np.uint8)  # padding: weight 0 = code 1
    c[:, :k] = codes.astype(np.int16) + 1
    c = c.reshape(n, nblk, 4, 32)  # [row, block, field i, byte j] = element 32 i + j
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return packed.reshape(-1).astype(np.uint8)


def product(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return x.astype(np.int64) @ codes.astype(np.int64).T  # (M, N)


def codes_arrays(max_n=6, max_k=300):
    shapes = st.tuples(st.integers(0, max_n), st.integers(0, max_k))
    return arrays(np.int8, shapes, elements=st.integers(-1, 1), fill=st.nothing())


@st.composite
def matmul_cases(draw):
    m = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    k = draw(st.one_of(st.integers(1, 300), st.sampled_from([127, 128, 129, 255, 256, 257, 384, 640])))
    codes = draw(arrays(np.int8, (n, k), elements=st.integers(-1, 1), fill=st.nothing()))
    x = draw(arrays(np.int8, (m, k), elements=st.integers(-128, 127), fill=st.nothing()))
    return x, codes


def test_extension_is_available():
    assert kernels.available(), kernels.import_error()
    assert kernels.import_error() is None
    assert kernels.backend() in kernels.supported_backends()
    assert "scalar" in kernels.supported_backends()
    assert kernels.has_avx2() == ("avx2" in kernels.supported_backends())
    assert set(kernels.supported_backends()) <= {"scalar", "avx2", "avx512vnni", "neon", "dotprod"}


@settings(deadline=None, max_examples=150)
@given(codes_arrays())
def test_pack_matches_documented_layout_and_round_trips(codes):
    n, k = codes.shape
    packed = kernels.pack_ternary(codes)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == kernels.packed_nbytes(n, k) == n * (-(-k // 128)) * 32
    np.testing.assert_array_equal(packed, pack_py(codes))
    back = kernels.unpack_ternary(packed, n, k)
    assert back.dtype == np.int8 and back.shape == (n, k)
    np.testing.assert_array_equal(back, codes)


@settings(deadline=None, max_examples=150)
@given(matmul_cases())
def test_matmul_exact_on_every_path(case):
    x, codes = case
    n, k = codes.shape
    packed = kernels.pack_ternary(codes)
    want = product(x, codes)
    got = kernels.ternary_matmul(x, packed, n, k)
    assert got.dtype == np.int32 and got.shape == (x.shape[0], n)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kernels.ternary_matmul(x, packed, n, k, force_scalar=True), want)
    for b in BACKENDS:
        np.testing.assert_array_equal(kernels.ternary_matmul(x, packed, n, k, backend=b), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,n,k", [(1, 64, 4096), (8, 33, 11008), (3, 5, 20000), (64, 20, 1000), (1, 1, 1)])
def test_matmul_large_dense(backend, m, n, k):
    rng = np.random.default_rng(m * 1000 + k)
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    got = kernels.ternary_matmul(x, kernels.pack_ternary(codes), n, k, backend=backend)
    np.testing.assert_array_equal(got, product(x, codes))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 129, 2047, 4096, 11008, 20000])
@pytest.mark.parametrize("w", [-1, 0, 1])
@pytest.mark.parametrize("xv", [-128, 127])
def test_matmul_overflow_corners(backend, k, w, xv):
    codes = np.full((3, k), w, dtype=np.int8)
    x = np.full((2, k), xv, dtype=np.int8)
    got = kernels.ternary_matmul(x, kernels.pack_ternary(codes), 3, k, backend=backend)
    np.testing.assert_array_equal(got, np.full((2, 3), w * xv * k))


@pytest.mark.parametrize("m,n,k", [(1, 512, 4096), (8, 300, 1024), (64, 37, 1000)])
def test_threads_match_single_thread(m, n, k):
    rng = np.random.default_rng(7)
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    packed = kernels.pack_ternary(codes)
    want = product(x, codes)
    one = kernels.ternary_matmul(x, packed, n, k, threads=1)
    np.testing.assert_array_equal(one, want)
    for t in (2, 3, 8):
        for b in BACKENDS:
            np.testing.assert_array_equal(kernels.ternary_matmul(x, packed, n, k, threads=t, backend=b), want)


def in_threads(call, args, repeats=5):
    """call(a) for every a in args, each in its own thread at the same time, `repeats` times over; the last results."""
    results = [None] * len(args)

    def work(i):
        for _ in range(repeats):
            results[i] = call(args[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def test_set_threads_and_concurrent_callers():
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 2, size=(256, 4096), dtype=np.int8)
    packed = kernels.pack_ternary(codes)
    xs = [rng.integers(-128, 128, size=(2, 4096), dtype=np.int8) for _ in range(4)]
    old = kernels.get_threads()
    kernels.set_threads(2)
    try:
        assert kernels.get_threads() == 2
        results = in_threads(lambda x: kernels.ternary_matmul(x, packed, 256, 4096), xs)
        for x, got in zip(xs, results):
            np.testing.assert_array_equal(got, product(x, codes))
    finally:
        kernels.set_threads(old)
    assert kernels.get_threads() == old


def test_zero_sized_shapes():
    assert kernels.pack_ternary(np.zeros((0, 5), np.int8)).size == 0
    p = kernels.pack_ternary(np.zeros((3, 0), np.int8))
    assert p.size == 0
    assert kernels.unpack_ternary(p, 3, 0).shape == (3, 0)
    np.testing.assert_array_equal(kernels.ternary_matmul(np.zeros((2, 0), np.int8), p, 3, 0), np.zeros((2, 3)))
    p = kernels.pack_ternary(np.ones((4, 10), np.int8))
    assert kernels.ternary_matmul(np.zeros((0, 10), np.int8), p, 4, 10).shape == (0, 4)


def test_torch_and_noncontiguous_inputs_give_right_answer():
    rng = np.random.default_rng(11)
    codes = rng.integers(-1, 2, size=(40, 300), dtype=np.int8)
    x = rng.integers(-128, 128, size=(6, 300), dtype=np.int8)
    packed = kernels.pack_ternary(torch.from_numpy(codes))
    np.testing.assert_array_equal(packed, kernels.pack_ternary(codes))
    want = product(x, codes)
    np.testing.assert_array_equal(kernels.ternary_matmul(torch.from_numpy(x), torch.from_numpy(packed), 40, 300), want)
    # Non-contiguous views are copied to contiguous arrays: the answer is still exact.
    big = np.zeros((6, 600), np.int8)
    big[:, ::2] = x
    assert not big[:, ::2].flags.c_contiguous
    np.testing.assert_array_equal(kernels.ternary_matmul(big[:, ::2], packed, 40, 300), want)
    np.testing.assert_array_equal(kernels.ternary_matmul(np.asfortranarray(x), packed, 40, 300), want)
    np.testing.assert_array_equal(kernels.pack_ternary(np.asfortranarray(codes)), packed)
    np.testing.assert_array_equal(kernels.pack_ternary(torch.from_numpy(codes.T.copy()).T), packed)
    # Wider integer dtypes are accepted when the values fit.
    np.testing.assert_array_equal(kernels.ternary_matmul(x.astype(np.int64), packed, 40, 300), want)
    np.testing.assert_array_equal(kernels.pack_ternary(codes.astype(np.int32)), packed)


GOOD_CODES = np.array([[1, 0, -1], [0, 1, 1]], dtype=np.int8)
GOOD_PACKED = pack_py(GOOD_CODES)
GOOD_X = np.array([[5, -7, 9]], dtype=np.int8)


def corrupt(byte_index, value):
    p = GOOD_PACKED.copy()
    p[byte_index] = value
    return p


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: kernels.pack_ternary(np.array([[0, 2]], np.int8)), ValueError, r"\{-1, 0, 1\}"),
        (lambda: kernels.pack_ternary(np.array([[-2, 0]], np.int8)), ValueError, r"\{-1, 0, 1\}"),
        (lambda: kernels.pack_ternary(np.array([[0, 257]], np.int64)), ValueError, "values must be in"),
        (lambda: kernels.pack_ternary(np.array([[0.0, 1.0]], np.float32)), TypeError, "integer"),
        (lambda: kernels.pack_ternary(torch.zeros(2, 3)), TypeError, "integer"),
        (lambda: kernels.pack_ternary(np.array([[True, False]])), TypeError, "integer"),
        (lambda: kernels.pack_ternary(np.zeros(3, np.int8)), ValueError, "2-D"),
        (lambda: kernels.pack_ternary(np.zeros((2, 2, 2), np.int8)), ValueError, "2-D"),
        (lambda: kernels.pack_ternary([[0, 1]]), TypeError, "numpy array"),
        (lambda: kernels.pack_ternary(torch.zeros(2, 3, dtype=torch.int8, device="meta")), TypeError, "CPU"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED[:-1], 2, 3), ValueError, "truncated"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED, 3, 3), ValueError, "needs"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED, 2, 200), ValueError, "needs"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED.astype(np.int8), 2, 3), TypeError, "uint8"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED.astype(np.float32), 2, 3), TypeError, "uint8"),
        (lambda: kernels.unpack_ternary(corrupt(0, 0xFF), 2, 3), ValueError, "code 3"),
        (lambda: kernels.unpack_ternary(corrupt(5, 0x56), 2, 3), ValueError, "padding"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED, -1, 3), ValueError, ">= 0"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED, 2.0, 3), TypeError, "int"),
        (lambda: kernels.ternary_matmul(GOOD_X.astype(np.float32), GOOD_PACKED, 2, 3), TypeError, "integer"),
        (lambda: kernels.ternary_matmul(torch.ones(1, 3), GOOD_PACKED, 2, 3), TypeError, "integer"),
        (lambda: kernels.ternary_matmul(np.array([[1, 2, 300]]), GOOD_PACKED, 2, 3), ValueError, "values must be in"),
        (lambda: kernels.ternary_matmul(GOOD_X[0], GOOD_PACKED, 2, 3), ValueError, "2-D"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED[:-1], 2, 3), ValueError, "truncated"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 1, 3), ValueError, "needs"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 2, 4), ValueError, "columns"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED.astype(np.int16), 2, 3), TypeError, "uint8"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 2, 3, threads=0), ValueError, "threads"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 2, 3, backend="bogus"), ValueError, "unknown backend"),
        (
            lambda: kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 2, 3, backend="avx2", force_scalar=True),
            ValueError,
            "conflicts",
        ),
        (lambda: kernels.packed_nbytes(1, (1 << 22) + 1), ValueError, "maximum"),
        (lambda: kernels.set_threads(0), ValueError, "threads"),
    ],
)
def test_bad_input_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_good_example_by_hand():
    # rows: [1, 0, -1] . [5, -7, 9] = -4 ; [0, 1, 1] . [5, -7, 9] = 2
    np.testing.assert_array_equal(kernels.pack_ternary(GOOD_CODES), GOOD_PACKED)
    for b in BACKENDS:
        np.testing.assert_array_equal(kernels.ternary_matmul(GOOD_X, GOOD_PACKED, 2, 3, backend=b), [[-4, 2]])


def run_python(code, **env):
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_env_var_forces_scalar_path():
    code = (
        "import numpy as np; from bitnet_ref.runtime import kernels as K; "
        "c = np.array([[1, -1, 0]], np.int8); x = np.array([[3, 4, 5]], np.int8); "
        "print(K.backend(), K.ternary_matmul(x, K.pack_ternary(c), 1, 3)[0, 0])"
    )
    assert run_python(code, BITNET_REF_FORCE_SCALAR="1") == "scalar -1"
    assert run_python(code, BITNET_REF_FORCE_SCALAR="0").split() == [kernels.backend(), "-1"]


def test_package_import_does_not_load_extension():
    code = (
        "import sys, bitnet_ref, bitnet_ref.runtime.kernels; "
        "print('bitnet_ref._core' in sys.modules, 'bitnet_ref._bench' in sys.modules)"
    )
    assert run_python(code) == "False False"


# ---- fused float path: act_quant and quant_matmul ----------------------------------------------------------------


@st.composite
def float_rows(draw, max_m=5, max_k=300):
    """float32 (M, K) activations that stress the quantizer: many scales, exact .5 ties, zeros, the 1e-5 floor."""
    m, k = draw(st.integers(1, max_m)), draw(st.integers(1, max_k))
    kind = draw(st.sampled_from(["normal", "halves", "zeros", "tiny", "outlier"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        x = torch.randn(m, k, generator=g) * 10.0 ** draw(st.integers(-8, 6))
    elif kind == "halves":  # with a row max of 127, x * inv hits k + 0.5 exactly: ties go to even
        x = torch.randint(-508, 509, (m, k), generator=g).float() / 4
        x[:, 0] = 127.0
    elif kind == "zeros":
        x = torch.zeros(m, k)
    elif kind == "tiny":  # below the 1e-5 absmax floor
        x = torch.full((m, k), 3e-6) * torch.randn(m, k, generator=g).sign()
    else:  # one large value per row, the rest small: most codes round to 0 or +-1
        x = torch.randn(m, k, generator=g)
        x[:, draw(st.integers(0, k - 1))] = 1e4
    return x.float().numpy()


def two_step(x, codes, packed, beta, backend=None):
    """The reference path: torch act_quant -> int32 kernel -> acc.float() * (gamma * beta), as runtime/packed.py did."""
    q, gamma = Q.act_quant(torch.from_numpy(x))  # (M, K) int8, (M, 1) float32
    n, k = codes.shape
    acc = torch.from_numpy(kernels.ternary_matmul(q.numpy(), packed, n, k, backend=backend))  # (M, N) int32
    return (acc.float() * (gamma * torch.tensor(beta, dtype=torch.float32))).numpy()


@settings(deadline=None, max_examples=200)
@given(float_rows())
def test_act_quant_is_bit_exact_with_quant_act_quant(x):
    q1, g1 = Q.act_quant(torch.from_numpy(x))
    q2, g2 = kernels.act_quant(x)
    assert q2.dtype == np.int8 and g2.dtype == np.float32 and g2.shape == (x.shape[0], 1)
    np.testing.assert_array_equal(q2, q1.numpy())
    assert np.array_equal(g2.view(np.uint32), g1.numpy().view(np.uint32))  # bitwise, not just ==


def test_act_quant_rounds_ties_to_even():
    x = np.array([[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0]], np.float32)  # inv = (1/127)*127 = 1.0 exactly
    q, gamma = kernels.act_quant(x)
    np.testing.assert_array_equal(q, [[127, 2, 4, -2, 0, 0, 2, -127]])
    assert gamma[0, 0] == np.float32(1.0)


@settings(deadline=None, max_examples=120)
@given(
    float_rows(max_m=4, max_k=600),
    st.integers(1, 9),
    st.floats(0.0009765625, 16.0, width=32),
    st.integers(0, 2**31 - 1),
)
def test_quant_matmul_bit_identical_to_two_step(x, n, beta, seed):
    k = x.shape[1]
    codes = np.random.default_rng(seed).integers(-1, 2, size=(n, k), dtype=np.int8)
    packed = kernels.pack_ternary(codes)
    want = two_step(x, codes, packed, beta)
    for b in BACKENDS:
        got = kernels.quant_matmul(x, packed, n, k, beta, backend=b)
        assert got.dtype == np.float32 and got.shape == (x.shape[0], n)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,n,k", [(1, 64, 4096), (8, 33, 11008), (3, 300, 2048)])
def test_quant_matmul_large(backend, m, n, k):
    rng = np.random.default_rng(m + n + k)
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    packed = kernels.pack_ternary(codes)
    beta = np.float32(0.0371)
    want = two_step(x, codes, packed, beta)
    for threads in (1, 2):
        got = kernels.quant_matmul(x, packed, n, k, beta, backend=backend, threads=threads)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_quant_matmul_empty_shapes():
    # K = 0: empty sums (torch's act_quant refuses an empty row, the fused call gives 0); M = 0: no rows
    p = kernels.pack_ternary(np.zeros((5, 0), np.int8))
    np.testing.assert_array_equal(kernels.quant_matmul(np.zeros((2, 0), np.float32), p, 5, 0, 1.0), np.zeros((2, 5)))
    p = kernels.pack_ternary(np.ones((4, 10), np.int8))
    assert kernels.quant_matmul(np.zeros((0, 10), np.float32), p, 4, 10, 1.0).shape == (0, 4)


def test_quant_matmul_accepts_torch_and_noncontiguous_inputs():
    rng = np.random.default_rng(5)
    codes = rng.integers(-1, 2, size=(7, 200), dtype=np.int8)
    packed = kernels.pack_ternary(codes)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    want = kernels.quant_matmul(x, packed, 7, 200, 0.5)
    np.testing.assert_array_equal(want, two_step(x, codes, packed, 0.5))
    big = np.zeros((3, 400), np.float32)
    big[:, ::2] = x
    np.testing.assert_array_equal(kernels.quant_matmul(big[:, ::2], packed, 7, 200, 0.5), want)
    xt = torch.from_numpy(x).requires_grad_()
    np.testing.assert_array_equal(kernels.quant_matmul(xt, torch.from_numpy(packed), 7, 200, torch.tensor(0.5)), want)
    np.testing.assert_array_equal(kernels.quant_matmul(x, packed, 7, 200, np.float32(0.5), force_scalar=True), want)


def test_quant_matmul_concurrent_callers():
    rng = np.random.default_rng(9)
    codes = rng.integers(-1, 2, size=(256, 2048), dtype=np.int8)
    packed = kernels.pack_ternary(codes)
    xs = [rng.standard_normal((2, 2048)).astype(np.float32) for _ in range(4)]
    want = [kernels.quant_matmul(x, packed, 256, 2048, 0.25, threads=1) for x in xs]
    results = in_threads(lambda x: kernels.quant_matmul(x, packed, 256, 2048, 0.25, threads=2), xs)
    for w, got in zip(want, results):
        np.testing.assert_array_equal(got, w)


GOOD_XF = np.array([[0.5, -1.0, 2.0]], np.float32)


def with_value(v):
    x = np.tile(GOOD_XF, (2, 1))
    x[1, 2] = v
    return x


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: kernels.quant_matmul(GOOD_XF.astype(np.float64), GOOD_PACKED, 2, 3, 1.0), TypeError, "float32"),
        (lambda: kernels.quant_matmul(GOOD_X, GOOD_PACKED, 2, 3, 1.0), TypeError, "float32"),
        (
            lambda: kernels.quant_matmul(torch.ones(1, 3, dtype=torch.float64), GOOD_PACKED, 2, 3, 1.0),
            TypeError,
            "float32",
        ),
        (lambda: kernels.quant_matmul(torch.ones(1, 3, device="meta"), GOOD_PACKED, 2, 3, 1.0), TypeError, "CPU"),
        (lambda: kernels.quant_matmul([[1.0, 2.0, 3.0]], GOOD_PACKED, 2, 3, 1.0), TypeError, "numpy array"),
        (lambda: kernels.quant_matmul(GOOD_XF[0], GOOD_PACKED, 2, 3, 1.0), ValueError, "2-D"),
        (lambda: kernels.quant_matmul(GOOD_XF[None], GOOD_PACKED, 2, 3, 1.0), ValueError, "2-D"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 4, 1.0), ValueError, "columns"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED[:-1], 2, 3, 1.0), ValueError, "truncated"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED.astype(np.int8), 2, 3, 1.0), TypeError, "uint8"),
        (
            lambda: kernels.quant_matmul(with_value(np.nan), GOOD_PACKED, 2, 3, 1.0),
            ValueError,
            r"finite; found nan at \(1, 2\)",
        ),
        (lambda: kernels.quant_matmul(with_value(np.inf), GOOD_PACKED, 2, 3, 1.0), ValueError, "finite; found inf"),
        (lambda: kernels.quant_matmul(with_value(-np.inf), GOOD_PACKED, 2, 3, 1.0), ValueError, "finite; found -inf"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, float("nan")), ValueError, "beta"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, 1e39), ValueError, "beta"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, 0.0), ValueError, "beta"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, -1.0), ValueError, "beta"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, "1.0"), TypeError, "beta"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, 1.0, threads=0), ValueError, "threads"),
        (lambda: kernels.quant_matmul(GOOD_XF, GOOD_PACKED, 2, 3, 1.0, backend="bogus"), ValueError, "unknown backend"),
        (lambda: kernels.act_quant(with_value(np.nan)), ValueError, "finite"),
        (lambda: kernels.act_quant(GOOD_X), TypeError, "float32"),
        (lambda: kernels.act_quant(GOOD_XF[0]), ValueError, "2-D"),
    ],
)
def test_fused_bad_input_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_core_quant_matmul_checks_before_reading():
    """The extension itself (not only the wrapper) refuses wrong dtypes, layouts and sizes."""
    from bitnet_ref import _core

    with pytest.raises(TypeError, match="float32"):
        _core.quant_matmul(GOOD_XF.astype(np.float64), GOOD_PACKED, 2, 3, 1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.quant_matmul(np.asfortranarray(np.tile(GOOD_XF, (2, 1))), GOOD_PACKED, 2, 3, 1.0)
    with pytest.raises(ValueError, match="truncated"):
        _core.quant_matmul(GOOD_XF, GOOD_PACKED[:-1], 2, 3, 1.0)
    with pytest.raises(ValueError, match="maximum"):
        _core.quant_matmul(np.zeros((1, 1), np.float32), GOOD_PACKED, 1, (1 << 22) + 1, 1.0)


# ---- benchmark-only code: the bitnet_ref._bench extension (cpp/bench/) -------------------------------------------


def _bench():
    """bitnet_ref._bench. The same install builds it with _core, so (as in test_extension_is_available) a missing
    one is a failure, not a skip."""
    from bitnet_ref import _bench

    return _bench


def _i2s_bench():
    if not kernels.available():
        return None
    bench = _bench()
    return bench if hasattr(bench, "i2s_gemv") and kernels.has_avx2() else None


needs_i2s = pytest.mark.skipif(_i2s_bench() is None, reason="I2_S baseline needs the extension on an AVX2 x86 CPU")

# The benchmark-only functions, by the names they are (or were) bound and exported under.
BENCH_NAMES = ("measure_read_bandwidth", "mac_peak", "mac_loop", "i2s_gemv", "i2s_repack", "gemv_seconds")


def test_core_carries_no_benchmark_code():
    """The shipped extension is the kernels and their bindings only: no benchmark binding, and no benchmark
    function among the names in the module file (its exported symbols), so linking a bench source into _core
    again fails here. They are all in _bench."""
    from bitnet_ref import _core

    assert [n for n in dir(_core) if "bench" in n or any(b in n for b in BENCH_NAMES)] == []
    with open(_core.__file__, "rb") as f:
        binary = f.read()
    assert [b for b in BENCH_NAMES if b.encode() in binary] == []
    assert hasattr(_bench(), "measure_read_bandwidth") and hasattr(_bench(), "mac_peak")


def test_measure_read_bandwidth_is_positive_and_refuses_bad_input():
    assert _bench().measure_read_bandwidth(1 << 20, 1, 1) > 0
    for streams in (1, 3, 8):  # the task's range in that many streams, the tail read after them
        assert _bench().measure_read_bandwidth((1 << 20) + 24, 2, 1, streams) > 0
    with pytest.raises(ValueError, match=">= 1"):
        _bench().measure_read_bandwidth(0, 1, 1)
    with pytest.raises(ValueError, match="streams"):
        _bench().measure_read_bandwidth(1 << 20, 1, 1, 9)


# ---- the bitnet.cpp-style I2_S baseline (benchmark only: cpp/bench/i2s_avx2.cpp) ---------------------------------


def pack_i2s_py(codes: np.ndarray) -> np.ndarray:
    """bitnet.cpp's I2_S x86 layout, from the research notes, in numpy: byte j holds j, j+32, j+64, j+96 at
    bits 7:6, 5:4, 3:2, 1:0 of each 128-weight block."""
    n, k = codes.shape
    c = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(n, k // 128, 4, 32)
    return ((c[:, :, 0] << 6) | (c[:, :, 1] << 4) | (c[:, :, 2] << 2) | c[:, :, 3]).reshape(-1).astype(np.uint8)


def i2s_gemv(x, codes):
    bench = _i2s_bench()
    n, k = codes.shape
    w = bench.i2s_repack(kernels.pack_ternary(codes), n, k)
    np.testing.assert_array_equal(w, pack_i2s_py(codes))
    return bench.i2s_gemv(x, w, n, k)


@needs_i2s
@settings(deadline=None, max_examples=60)
@given(st.integers(1, 90), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_i2s_baseline_equals_reference_on_random_input(blocks, n, seed):
    # random x in [-128, 127]: a lane's int16 sum over 32 blocks has std ~1.5e3, far from 32767
    rng = np.random.default_rng(seed)
    k = 128 * blocks
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(1, k), dtype=np.int8)
    np.testing.assert_array_equal(i2s_gemv(x, codes), product(x, codes))


@needs_i2s
@pytest.mark.parametrize("w", [-1, 1])
@pytest.mark.parametrize("xv", [-128, 127])
def test_i2s_baseline_exact_at_k_2048_but_wraps_at_4096_where_ours_stays_exact(w, xv):
    codes = np.full((2, 2048), w, np.int8)
    x = np.full((1, 2048), xv, np.int8)
    np.testing.assert_array_equal(i2s_gemv(x, codes), product(x, codes))  # 16 blocks: worst case -32768 fits
    codes = np.full((2, 4096), w, np.int8)
    x = np.full((1, 4096), xv, np.int8)
    want = product(x, codes)
    if w == 1 and xv == -128:  # 32 blocks * -2048 = -65536 per int16 lane: wraps to 0, result = -act_sum
        np.testing.assert_array_equal(i2s_gemv(x, codes), -want)
    for b in BACKENDS:
        np.testing.assert_array_equal(kernels.ternary_matmul(x, kernels.pack_ternary(codes), 2, 4096, backend=b), want)


@needs_i2s
def test_i2s_baseline_refuses_bad_input():
    bench = _i2s_bench()
    p = kernels.pack_ternary(np.zeros((2, 200), np.int8))
    with pytest.raises(ValueError, match="multiple of 128"):
        bench.i2s_repack(p, 2, 200)
    p = kernels.pack_ternary(np.zeros((2, 256), np.int8))
    with pytest.raises(ValueError, match="shape"):
        bench.i2s_gemv(np.zeros((2, 256), np.int8), p, 2, 256)
    with pytest.raises(ValueError, match="truncated"):
        bench.i2s_gemv(np.zeros((1, 256), np.int8), p[:-1], 2, 256)


@needs_i2s
def test_gemv_seconds_times_each_implementation_and_refuses_bad_input():
    bench = _i2s_bench()
    codes = np.random.default_rng(0).integers(-1, 2, size=(8, 256), dtype=np.int8)
    x = np.ones((1, 256), np.int8)
    p = kernels.pack_ternary(codes)
    w = bench.i2s_repack(p, 8, 256)
    impls = {"i2s": [w, w.copy()], **{b: [p, p.copy()] for b in BACKENDS if b != "scalar"}}
    if "avx2" in BACKENDS:
        impls["avx2-adjacent"] = [p]  # the row-order baseline of tools/bench/bench_kernels.py
    for impl, bufs in impls.items():
        for threads in (1, 2):
            secs = bench.gemv_seconds(impl, x, bufs, 8, 256, 5, threads)
            assert len(secs) == 5 and all(0 < s < 1 for s in secs), impl
    with pytest.raises(ValueError, match="threads"):
        bench.gemv_seconds("i2s", x, [w], 8, 256, 1, 0)
    with pytest.raises(ValueError, match="impl"):
        bench.gemv_seconds("scalar", x, [p], 8, 256, 1)
    with pytest.raises(ValueError, match="unknown backend"):
        bench.gemv_seconds("fast", x, [p], 8, 256, 1)
    with pytest.raises(ValueError, match="at least one"):
        bench.gemv_seconds("i2s", x, [], 8, 256, 1)
    with pytest.raises(ValueError, match="truncated"):
        bench.gemv_seconds("i2s", x, [w, w[:-1]], 8, 256, 1)
    with pytest.raises(ValueError, match="reps"):
        bench.gemv_seconds("i2s", x, [w], 8, 256, 0)
    with pytest.raises(TypeError, match="uint8"):
        bench.gemv_seconds("i2s", x, [w.view(np.int8)], 8, 256, 1)


def test_mac_peak_measures_each_simd_backend():
    bench = _bench()
    for b in BACKENDS:
        if b == "scalar":
            with pytest.raises(ValueError, match="SIMD"):
                bench.mac_peak(b)
        else:  # 0 only in builds without the assembly loops; any real core does > 1 G MAC/s
            peak = bench.mac_peak(b, 100000)
            assert peak == 0.0 or peak > 1e9, (b, peak)
    with pytest.raises(ValueError, match="iters"):
        bench.mac_peak(BACKENDS[-1], 0)


# ---- the 1.6-bit format (cpp/ternary5.h) ------------------------------------------------------------


def pack16_py(codes: np.ndarray) -> np.ndarray:
    """The 1.6-bit layout documented in cpp/ternary5.h, written independently in numpy."""
    n, k = codes.shape
    nblk = -(-k // 160)
    c = np.ones((n, nblk * 160), dtype=np.int64)  # padding: weight 0 = code 1
    c[:, :k] = codes.astype(np.int64) + 1
    c = c.reshape(n, nblk, 5, 32)  # [row, block, digit i, byte j] = element 32 i + j
    v = 81 * c[:, :, 0] + 27 * c[:, :, 1] + 9 * c[:, :, 2] + 3 * c[:, :, 3] + c[:, :, 4]
    q = -((-v * 256) // 243)  # ceil(v * 256 / 243)
    return q.reshape(-1).astype(np.uint8)


@settings(deadline=None, max_examples=150)
@given(codes_arrays(max_k=400))
def test_pack16_matches_documented_layout_and_round_trips(codes):
    n, k = codes.shape
    packed = kernels.pack_ternary(codes, format="1.6")
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == kernels.packed_nbytes(n, k, format="1.6") == n * (-(-k // 160)) * 32
    np.testing.assert_array_equal(packed, pack16_py(codes))
    np.testing.assert_array_equal(kernels.unpack_ternary(packed, n, k, format="1.6"), codes)


def test_pack16_every_group_of_five_round_trips_and_other_bytes_are_refused():
    digits = np.array([[v // 3 ** (4 - i) % 3 for i in range(5)] for v in range(243)])  # (243, 5)
    codes = np.zeros((243, 160), dtype=np.int8)
    codes[:, [0, 32, 64, 96, 128]] = digits - 1  # byte 0 of row v encodes group v
    packed = kernels.pack_ternary(codes, format="1.6")
    np.testing.assert_array_equal(kernels.unpack_ternary(packed, 243, 160, format="1.6"), codes)
    used = set(packed.reshape(243, 32)[:, 0].tolist())
    assert len(used) == 243
    for b in sorted(set(range(256)) - used):  # the 13 bytes no group encodes
        bad = np.full(32, 0x80, np.uint8)  # padding
        bad[3] = b
        with pytest.raises(ValueError, match="encodes no five ternary values"):
            kernels.unpack_ternary(bad, 1, 160, format="1.6")


@settings(deadline=None, max_examples=150)
@given(matmul_cases(), st.sampled_from([1, 159, 160, 161, 1920, 1921]))
def test_matmul16_exact_and_equal_to_the_2bit_path(case, extra_k):
    x, codes = case
    if extra_k > 1:  # also K around the 160 block and the 12-block int16 widening
        rng = np.random.default_rng(extra_k + codes.size)
        codes = rng.integers(-1, 2, size=(codes.shape[0], extra_k), dtype=np.int8)
        x = rng.integers(-128, 128, size=(x.shape[0], extra_k), dtype=np.int8)
    n, k = codes.shape
    want = product(x, codes)
    p16 = kernels.pack_ternary(codes, format="1.6")
    np.testing.assert_array_equal(kernels.ternary_matmul(x, kernels.pack_ternary(codes), n, k), want)
    for b in BACKENDS:
        got = kernels.ternary_matmul(x, p16, n, k, backend=b, format="1.6")
        assert got.dtype == np.int32 and got.shape == (x.shape[0], n)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 160, 161, 1921, 4096, 11008, 20000])
@pytest.mark.parametrize("w", [-1, 0, 1])
@pytest.mark.parametrize("xv", [-128, 127])
def test_matmul16_overflow_corners(backend, k, w, xv):
    codes = np.full((3, k), w, dtype=np.int8)
    x = np.full((2, k), xv, dtype=np.int8)
    got = kernels.ternary_matmul(x, kernels.pack_ternary(codes, format="1.6"), 3, k, backend=backend, format="1.6")
    np.testing.assert_array_equal(got, np.full((2, 3), w * xv * k))


@pytest.mark.parametrize("m,n,k", [(1, 512, 4096), (8, 300, 1024), (64, 37, 1000), (1, 260, 11008)])
def test_matmul16_threads_match(m, n, k):
    rng = np.random.default_rng(11)
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    packed = kernels.pack_ternary(codes, format="1.6")
    want = product(x, codes)
    for t in (1, 2, 3):
        for b in BACKENDS:
            np.testing.assert_array_equal(
                kernels.ternary_matmul(x, packed, n, k, threads=t, backend=b, format="1.6"), want
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_quant_matmul16_bit_identical_to_2bit(backend):
    rng = np.random.default_rng(3)
    n, k = 37, 1000
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = (rng.standard_normal((5, k)) * 3).astype(np.float32)
    y2 = kernels.quant_matmul(x, kernels.pack_ternary(codes), n, k, 0.41, backend=backend)
    y16 = kernels.quant_matmul(x, kernels.pack_ternary(codes, format="1.6"), n, k, 0.41, backend=backend, format="1.6")
    assert y16.dtype == np.float32
    np.testing.assert_array_equal(y16, y2)


GOOD16 = kernels.pack_ternary(GOOD_CODES, format="1.6") if kernels.available() else np.zeros(64, np.uint8)


def corrupt16(byte_index, value):
    p = GOOD16.copy()
    p[byte_index] = value
    return p


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: kernels.pack_ternary(GOOD_CODES, format="1.58"), ValueError, "format must be"),
        (lambda: kernels.pack_ternary(GOOD_CODES, format=2), ValueError, "format must be"),
        (lambda: kernels.pack_ternary(np.array([[0, 2]], np.int8), format="1.6"), ValueError, r"\{-1, 0, 1\}"),
        (lambda: kernels.unpack_ternary(GOOD16[:-1], 2, 3, format="1.6"), ValueError, "truncated"),
        (lambda: kernels.unpack_ternary(GOOD_PACKED, 2, 200, format="1.6"), ValueError, "needs"),
        (lambda: kernels.unpack_ternary(corrupt16(1, 0x01), 2, 3, format="1.6"), ValueError, "encodes no five"),
        (lambda: kernels.unpack_ternary(corrupt16(3, 0xD5), 2, 3, format="1.6"), ValueError, "padding"),
        (lambda: kernels.unpack_ternary(GOOD16, 2, 150, format="2"), ValueError, "needs"),  # a 1.6-bit buffer as 2-bit
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD16[:-1], 2, 3, format="1.6"), ValueError, "truncated"),
        (lambda: kernels.ternary_matmul(GOOD_X, GOOD16, 2, 3, format="1.5"), ValueError, "format must be"),
        (
            lambda: kernels.quant_matmul(GOOD_X.astype(np.float32), GOOD16, 2, 3, 1.0, format=None),
            ValueError,
            "format must be",
        ),
        (lambda: kernels.packed_nbytes(2, 3, format="3"), ValueError, "format must be"),
    ],
)
def test_bad_input16_is_refused(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_core_refuses_unknown_format_before_reading():
    from bitnet_ref import _core

    with pytest.raises(ValueError, match="unknown packed format"):
        _core.matmul(GOOD_X, GOOD16, 2, 3, "", 0, "1.7")
    with pytest.raises(ValueError, match="unknown packed format"):
        _core.pack(GOOD_CODES, "")


def test_good16_example_by_hand():
    # Element j of a row is digit 0 of byte j; the other four digits are padding (code 1). Code 2 (w = +1):
    # group (2, 1, 1, 1, 1), v = 202, byte ceil(202 * 256 / 243) = 213; code 1: v = 121, byte 128 (also every
    # padding byte); code 0 (w = -1): v = 40, byte 43.
    assert GOOD16.size == 64
    assert GOOD16[:3].tolist() == [213, 128, 43] and GOOD16[32:35].tolist() == [128, 213, 213]
    assert (GOOD16[3:32] == 128).all()
    for b in BACKENDS:
        np.testing.assert_array_equal(kernels.ternary_matmul(GOOD_X, GOOD16, 2, 3, backend=b, format="1.6"), [[-4, 2]])


FUZZ16 = """
import numpy as np
from bitnet_ref import _core
OK = (TypeError, ValueError, OverflowError)
rng = np.random.default_rng(0)
fmts = ["1.6", "2", "", "1.60", "16", None, 1.6]
for i in range(3000):
    a = rng.integers(-130, 130, size=tuple(rng.integers(0, 6, size=rng.integers(0, 4)))).astype(
        rng.choice([np.int8, np.uint8, np.int16, np.float32]))
    packed = rng.integers(0, 256, size=rng.integers(0, 200)).astype(rng.choice([np.uint8, np.int8]))
    n, k = (int(v) for v in rng.integers(-2, 40, size=2))
    f = fmts[i % len(fmts)]
    for call in (lambda: _core.pack(a, f), lambda: _core.unpack(packed, n, k, f),
                 lambda: _core.matmul(a, packed, n, k, "", 0, f), lambda: _core.packed_nbytes(n, k, f),
                 lambda: _core.quant_matmul(a, packed, n, k, 1.0, "", 0, f)):
        try:
            call()
        except OK:
            pass
print("ok")
"""


def test_core_survives_random_arguments_for_the_16_format():
    # Random shapes, dtypes, sizes and format names straight into the extension, in a child process (a crash
    # would kill it): every call returns or raises TypeError/ValueError/OverflowError. Random bytes are
    # mostly invalid 1.6-bit groups, which matmul must survive (garbage out, no crash).
    assert run_python(FUZZ16) == "ok"
