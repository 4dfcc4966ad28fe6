"""Run by test_hostile.py in a child process: throw random shapes, dtypes and strides at every binding of the
kernels extension (bitnet_ref._core) and of the benchmark extension (bitnet_ref._bench).

Each call must return or raise TypeError/ValueError/OverflowError; anything else is reported and the process
exits 1. A crash (segfault, abort) kills the process, which the parent sees as a negative return code.
Not a test module itself (pytest does not collect names starting with "_"). argv[1]: number of examples.
"""

import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_ref import _bench, _core
from bitnet_ref.runtime import kernels

DTYPES = [
    np.int8,
    np.uint8,
    np.int16,
    np.int32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex64,
    object,
]
OK = (TypeError, ValueError, OverflowError)


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    vals = draw(st.sampled_from(["ternary", "small", "wide", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = {
        "ternary": rng.integers(-1, 2, shape),
        "small": rng.integers(-128, 128, shape),
        "wide": rng.integers(-(2**40), 2**40, shape),
        "special": rng.choice(np.array([0.0, np.nan, np.inf, -np.inf, 1e30, -0.0]), shape),
    }[vals]
    with np.errstate(all="ignore"):
        a = np.asarray(base).astype(dtype) if dtype is not object else np.asarray(base).astype(object)
    view = draw(st.sampled_from(["plain", "transpose", "negative", "broadcast", "fortran", "step"]))
    if view == "transpose" and a.ndim >= 2:
        a = a.T
    elif view == "negative" and a.ndim >= 1:
        a = a[::-1]
    elif view == "broadcast" and a.ndim >= 1 and a.shape[0] >= 1:  # zero-stride view over the first row
        a = np.broadcast_to(a[:1], (draw(st.integers(0, 6)),) + a.shape[1:])
    elif view == "fortran":
        a = np.asfortranarray(a)
    elif view == "step" and a.ndim >= 1:
        a = a[::2]
    return a


dims = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**40, 1 << 22, -(2**63)]), st.just(2.0), st.none())
betas = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just("1"), st.none(), st.integers(-2, 2))
threads = st.one_of(st.none(), st.integers(-1, 3))
impls = st.sampled_from(["i2s", "avx2", "avx512vnni", "scalar", "", "fast", None])
reps = st.one_of(st.integers(-2, 3), st.just(2**40), st.just(2.0))


def call(f, *a, **k):
    try:
        f(*a, **k)
    except OK:
        pass


@settings(
    max_examples=int(sys.argv[1]),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(a=arrays(), b=arrays(), n=dims, k=dims, beta=betas, th=threads, impl=impls, r=reps)
def fuzz(a, b, n, k, beta, th, impl, r):
    packed = b.reshape(-1) if b.ndim else b
    call(kernels.pack_ternary, a)
    call(kernels.unpack_ternary, packed, n, k)
    call(kernels.ternary_matmul, a, packed, n, k, threads=th)
    call(kernels.quant_matmul, a, packed, n, k, beta, threads=th)
    call(kernels.act_quant, a)
    # the extension directly: no Python wrapper checks in front of it
    call(_core.pack, a)
    call(_core.unpack, packed, n, k)
    call(_core.matmul, a, packed, n, k)
    call(_core.quant_matmul, a, packed, n, k, beta)
    call(_core.act_quant, a)
    call(kernels.int8_matmul, a, b, threads=th)
    call(_core.int8_matmul, a, b)
    call(_core.int8_matmul, a, a)
    # a real fused decoder: hostile tokens, positions and caches
    call(FUSED.step, a, n, b, b)
    call(FUSED.step, np.array([3], np.int64), n, CACHE_K, CACHE_V)
    call(FUSED.step, a.reshape(-1) if a.ndim else a, 0, CACHE_K, CACHE_V)
    call(FUSED.forward, a, n, CACHE_K, CACHE_V, False)
    call(FUSED.forward, a, b, CACHE_K, CACHE_V, True)
    call(FUSED.forward, a.reshape(1, -1) if a.ndim else a, b if isinstance(b, np.ndarray) else 0, CACHE_K, CACHE_V)
    # the benchmark-only bindings check their arguments too (reps, iters and bytes kept small: they run loops)
    if hasattr(_bench, "i2s_gemv"):
        call(_bench.i2s_repack, packed, n, k)
        call(_bench.i2s_gemv, a, packed, n, k)
        call(_bench.gemv_seconds, impl, a, [packed, b], n, k, r)
        call(_bench.gemv_seconds, impl, a, packed, n, k, 1)  # not a list
    call(_bench.mac_peak, impl, r if isinstance(r, int) and r < 4 else 3)
    call(_bench.measure_read_bandwidth, n if isinstance(n, int) and n < 1 << 16 else 4096, th, r)
    if a.ndim == 2 and a.dtype == np.int8:  # a real pack of a's shape against a wrong-shaped x
        codes = np.clip(a, -1, 1).astype(np.int8)
        good = kernels.pack_ternary(codes)
        call(_core.matmul, b, good, a.shape[0], a.shape[1])
        call(_core.quant_matmul, b, good, a.shape[0], a.shape[1], 1.0)


def _fused_decoder():
    """A tiny random fused decoder (the tiny preset, random packed weights) and a cache of 4 positions."""
    from bitnet_ref.model import ModelConfig
    from bitnet_ref.runtime.fused import FusedTransformer
    from bitnet_ref.runtime.random_packed import random_packed_model

    f = FusedTransformer(random_packed_model(ModelConfig.preset("tiny", context=8), seed=0))
    c = f.new_cache(1, 4)
    return f.decoder, c.k, c.v


FUSED, CACHE_K, CACHE_V = _fused_decoder()

if __name__ == "__main__":
    fuzz()
    print("fuzz ok")
