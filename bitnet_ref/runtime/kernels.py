"""Packed ternary weights and the exact int8 x ternary matmul, on CPU.

A thin wrapper over the C++ extension ``bitnet_ref._core``: it turns numpy arrays or CPU torch
tensors into the numpy arrays the extension accepts, checks them, and gives clear errors. Two packed
formats, chosen with ``format=``: ``"2"`` (the default: 2 bits per weight, blocks of 128, code = w + 1,
documented in ``cpp/ternary.h``) and ``"1.6"`` (five weights per byte, blocks of 160, documented in
``cpp/ternary5.h``: 20% fewer bytes, a dearer unpack). A buffer must be used with the format it was packed
in; both give the same exact products. The scale (beta) is not part of the packed buffer; the caller keeps it.

Also the fused BitLinear core ``quant_matmul`` (float32 activations -> per-row int8 quantization -> exact
int8 x ternary product -> float32 scaled by gamma * beta, all in one C++ call) and its quantizer alone,
``act_quant``; both are bit-exact with ``bitnet_ref.quant`` (checked in tests/test_kernels.py).

What it is not: no autograd, no float math beyond that quantizer and the final scaling. The extension is imported
lazily, so ``import bitnet_ref`` and the trainer work without it; ``available()`` says whether it loaded and
``import_error()`` says why not.

Paths: the best kernel the CPU has is chosen at run time (``backend()``: "avx512vnni" or "avx2" on x86-64,
"dotprod" (ARMv8.2 dot product) or "neon" (ARMv8.0) on 64-bit ARM, else "scalar").
``BITNET_REF_FORCE_SCALAR=1`` in the environment (read once, at the first kernel call) or
``force_scalar=True`` per call forces the portable reference path.

Threads: one by default, ``set_threads(n)`` changes the default, ``threads=`` overrides it per
call. Only calls with enough work (about 2M multiply-adds) are split across threads.

Input handling: codes and activations may be any integer dtype whose values fit (checked before
narrowing to int8, so nothing wraps silently); float or bool inputs are a TypeError. Non-contiguous
inputs are copied to contiguous ones, so they give the right answer. CUDA tensors are refused.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = [
    "FORMATS",
    "available",
    "import_error",
    "pack_ternary",
    "unpack_ternary",
    "ternary_matmul",
    "act_quant",
    "quant_matmul",
    "int8_matmul",
    "packed_nbytes",
    "has_avx2",
    "backend",
    "supported_backends",
    "set_threads",
    "get_threads",
]

_core = None
_import_error: str | None = None
_INT8 = np.dtype(np.int8)
_UINT8 = np.dtype(np.uint8)
_FLOAT32 = np.dtype(np.float32)
FORMATS = ("2", "1.6")  # the packed formats: bits per weight, as strings


def _load():
    """Import bitnet_ref._core on first use; raise ImportError with the reason if it is missing."""
    global _core, _import_error
    if _core is None and _import_error is None:
        try:
            import bitnet_ref._core as core
        except ImportError as exc:  # not built, or built for another Python
            _import_error = f"{type(exc).__name__}: {exc}"
        else:
            _core = core
    if _core is None:
        raise ImportError(
            f"the C++ extension bitnet_ref._core is not available ({_import_error}); "
            "install the package with `pip install -e .` to build it"
        )
    return _core


def available() -> bool:
    """True if the C++ extension can be imported."""
    try:
        _load()
    except ImportError:
        return False
    return True


def import_error() -> str | None:
    """Why the extension could not be imported, or None if it can."""
    available()
    return _import_error


def _to_numpy(a, name: str) -> np.ndarray:
    """numpy array from a numpy array or a CPU torch tensor (shares memory where it can)."""
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.split(".")[0] == "torch" and hasattr(a, "detach"):
        if a.device.type != "cpu":
            raise TypeError(f"{name} is a {a.device.type} tensor; move it to the CPU first (.cpu())")
        if a.is_floating_point() or a.is_complex():
            raise TypeError(f"{name} must be an integer tensor, got {a.dtype}")
        return a.detach().resolve_conj().resolve_neg().numpy()
    raise TypeError(f"{name} must be a numpy array or a CPU torch tensor, got {type(a).__name__}")


def _int8_matrix(a, name: str, lo: int, hi: int) -> np.ndarray:
    """C-contiguous int8 (rows, cols) array with values in [lo, hi]; the checks come first."""
    arr = _to_numpy(a, name)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int8), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.int8:
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"{name} values must be in [{lo}, {hi}], got min {arr.min()}, max {arr.max()}")
        arr = arr.astype(np.int8)
    return np.ascontiguousarray(arr)


def _packed_buffer(packed) -> np.ndarray:
    arr = _to_numpy(packed, "packed")
    if arr.dtype != np.uint8:
        raise TypeError(f"packed must have dtype uint8 (from pack_ternary), got {arr.dtype}")
    return np.ascontiguousarray(arr).reshape(-1)


def _dim(v, name: str) -> int:
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _format(format) -> str:
    if format in FORMATS and type(format) is str:
        return format
    raise ValueError(f"format must be one of {', '.join(repr(f) for f in FORMATS)}, got {format!r}")


def packed_nbytes(n: int, k: int, *, format: str = "2") -> int:
    """Bytes that pack_ternary uses for an (n, k) matrix.

    n * ceil(k / 128) * 32 for format "2", n * ceil(k / 160) * 32 for "1.6"."""
    return _load().packed_nbytes(_dim(n, "n"), _dim(k, "k"), _format(format))


def pack_ternary(codes, *, format: str = "2") -> np.ndarray:
    """Pack codes (N, K) with values in {-1, 0, 1} into a 1-D uint8 buffer of packed_nbytes(N, K, format=format)."""
    core = _load()
    format = _format(format)
    arr = _to_numpy(codes, "codes")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array (int8) with values in {{-1, 0, 1}}, got dtype {arr.dtype}")
    return core.pack(_int8_matrix(arr, "codes", -1, 1), format)


def unpack_ternary(packed, n: int, k: int, *, format: str = "2") -> np.ndarray:
    """Unpack to int8 (n, k). Raises ValueError on a wrong size or corrupt codes/padding."""
    core = _load()
    return core.unpack(*_weights(packed, n, k), _format(format))


def ternary_matmul(
    x,
    packed,
    n: int,
    k: int,
    *,
    force_scalar: bool = False,
    threads: int | None = None,
    backend: str | None = None,
    format: str = "2",
) -> np.ndarray:
    """Exact int32 (M, N): y[m, j] = sum_i x[m, i] * w[j, i] for x int8 (M, K) and packed w (N, K).

    format= is the format packed was made in ("2" or "1.6"). force_scalar=True uses the portable reference
    kernel; backend= names one kernel explicitly ("scalar", "avx2", "avx512vnni", "neon", "dotprod"; ValueError
    if this CPU lacks it; the 1.6-bit format has no AVX-512 kernel and runs the AVX2 one). threads=None uses
    get_threads(). The packed buffer is trusted to come from pack_ternary (its size is checked,
    its codes are not, per call; unpack_ternary checks them).
    """
    core = _core if _core is not None else _load()
    # Fast path (decode calls this per token): exact numpy int8/uint8 inputs skip all conversion;
    # the extension itself re-checks dtype, shape, contiguity and sizes before touching data.
    if not (type(x) is np.ndarray and x.dtype is _INT8 and x.flags.c_contiguous):
        x = _int8_matrix(x, "x", -128, 127)
    if format != "2":
        format = _format(format)
    return core.matmul(x, *_weights(packed, n, k), *_dispatch(force_scalar, backend, threads), format)


def _weights(packed, n, k) -> tuple[np.ndarray, int, int]:
    """(packed, n, k) as the extension takes them; exact uint8 buffers and ints pass through untouched."""
    if not (type(packed) is np.ndarray and packed.dtype is _UINT8 and packed.ndim == 1):
        packed = _packed_buffer(packed)
    if type(n) is not int:
        n = _dim(n, "n")
    if type(k) is not int:
        k = _dim(k, "k")
    return packed, n, k


def _dispatch(force_scalar, backend, threads) -> tuple[str, int]:
    """The (backend, threads) pair the extension takes: "" = best for this CPU, 0 = the set_threads default."""
    if (
        not force_scalar
        and (threads is None or (type(threads) is int and threads >= 1))
        and (backend is None or type(backend) is str)
    ):  # the common calls: nothing to convert or check here
        return backend or "", threads or 0
    if force_scalar:
        if backend not in (None, "scalar"):
            raise ValueError(f"force_scalar=True conflicts with backend={backend!r}")
        backend = "scalar"
    if threads is None:
        threads = 0
    elif operator.index(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return backend or "", operator.index(threads)


def _float32_matrix(a, name: str) -> np.ndarray:
    """C-contiguous float32 (rows, cols) array from a numpy array or CPU torch tensor; float32 only, because
    quant.act_quant computes a float64 input in float64 and a silent conversion would change its codes."""
    if isinstance(a, np.ndarray):
        arr = a
    elif type(a).__module__.split(".")[0] == "torch" and hasattr(a, "detach"):
        if a.device.type != "cpu":
            raise TypeError(f"{name} is a {a.device.type} tensor; move it to the CPU first (.cpu())")
        if str(a.dtype) != "torch.float32":  # no torch import here: the module must load without it
            raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
        arr = a.detach().resolve_conj().resolve_neg().numpy()
    else:
        raise TypeError(f"{name} must be a numpy array or a CPU torch tensor, got {type(a).__name__}")
    if arr.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def act_quant(x):
    """Per-row absmax int8 quantization of float32 x (M, K) in C++: (q int8 (M, K), gamma float32 (M, 1)).

    Bit for bit quant.act_quant on float32: s = max(max|x|, 1e-5), q = clamp(round_half_even(x * ((1/s) * 127)),
    -128, 127), gamma = s / 127. ValueError if x holds NaN or inf.
    """
    core = _core if _core is not None else _load()
    if not (type(x) is np.ndarray and x.dtype is _FLOAT32 and x.flags.c_contiguous):
        x = _float32_matrix(x, "x")
    return core.act_quant(x)


def quant_matmul(
    x,
    packed,
    n: int,
    k: int,
    beta,
    *,
    force_scalar: bool = False,
    threads: int | None = None,
    backend: str | None = None,
    format: str = "2",
) -> np.ndarray:
    """Fused BitLinear core: float32 (M, N) = float(q @ w.T) * (gamma * beta), where (q, gamma) = act_quant(x).

    x is float32 (M, K); packed, n, k as for ternary_matmul; beta the weight scale (rounded to float32, must be
    finite and > 0). gamma * beta is one float32 multiply and the int32 product is converted to float32 before
    it is scaled, which is the order of quant.fake_quant_linear: the result equals that forward bit for bit.
    One C++ call, with the GIL released unless the call is tiny; ValueError if x holds NaN or inf.
    force_scalar/backend/threads/format as for ternary_matmul.
    """
    core = _core if _core is not None else _load()
    if not (type(x) is np.ndarray and x.dtype is _FLOAT32 and x.flags.c_contiguous):
        x = _float32_matrix(x, "x")
    packed, n, k = _weights(packed, n, k)
    if type(beta) is not float:
        if isinstance(beta, (str, bytes)) or not hasattr(beta, "__float__"):
            raise TypeError(f"beta must be a real number, got {type(beta).__name__}")
        beta = float(beta)
    if format != "2":
        format = _format(format)
    return core.quant_matmul(x, packed, n, k, beta, *_dispatch(force_scalar, backend, threads), format)


def has_avx2() -> bool:
    """True if the CPU has AVX2 + FMA and this build contains the AVX2 kernel."""
    return _load().has_avx2()


def backend() -> str:
    """The kernel used by default: "avx512vnni", "avx2", "dotprod", "neon" or "scalar" (BITNET_REF_FORCE_SCALAR=1)."""
    return _load().default_backend()


def supported_backends() -> list[str]:
    """Every kernel this CPU and build can run, the portable "scalar" one included."""
    return list(_load().supported_backends())


def set_threads(n: int) -> None:
    """Default thread count for ternary_matmul (starts at 1; os.cpu_count() for all cores)."""
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _load().set_threads(n)


def get_threads() -> int:
    """Current default thread count for ternary_matmul."""
    return _load().get_threads()


def int8_matmul(
    x, w, *, force_scalar: bool = False, threads: int | None = None, backend: str | None = None
) -> np.ndarray:
    """Exact int32 (M, N) = x (M, K) int8 @ w (N, K) int8 transposed, in C++ (the int8 head's product).

    Any int8 values, K <= 65536 (the int32 bound). Portable reference or AVX2, picked like ternary_matmul;
    the GIL is released unless the call is tiny. force_scalar/backend/threads as for ternary_matmul.
    """
    core = _core if _core is not None else _load()
    if not (type(x) is np.ndarray and x.dtype is _INT8 and x.flags.c_contiguous):
        x = _int8_matrix(x, "x", -128, 127)
    if not (type(w) is np.ndarray and w.dtype is _INT8 and w.flags.c_contiguous):
        w = _int8_matrix(w, "w", -128, 127)
    return core.int8_matmul(x, w, *_dispatch(force_scalar, backend, threads))
