"""The ternary block layouts of other runtimes, to and from bitnet_ref's 2-bit packed rows (numpy only).

bitnet_ref's packed row (cpp/ternary.h, ``gguf_file.pack_codes``): K padded to a multiple of 128 with zeros; each
128-weight block is 32 bytes, and bits 2f..2f+1 of byte j hold element 32 f + j as the code w + 1.

- **TQ2_0** (llama.cpp, ggml-common.h ``block_tq2_0``): 256 weights in 66 bytes, ``qs[64]`` then an fp16 ``d``.
  Each 32-byte half of ``qs`` is exactly one of our blocks, so a row's ``qs`` bytes are our packed row; the
  weight is ``d * w`` (llama.cpp's converter writes d = the block's absmax, i.e. beta rounded to fp16).
- **TQ1_0** (``block_tq1_0``): 256 weights in 54 bytes, ``qs[48]``, ``qh[4]``, fp16 ``d``. The codes w + 1 are
  base-3 digits stored as a fixed-point fraction, most significant first: byte j of ``qs[0:32]`` holds elements
  j, j+32, ..., j+128; byte j of ``qs[32:48]`` elements 160+j, 176+j, ..., 224+j; byte j of ``qh`` elements
  240+j, 244+j, 248+j, 252+j. Digit t of byte q is ``((q * 3**t mod 256) * 3) >> 8`` (ggml-quants.c).
- **I2_S** (bitnet.cpp, src/ggml-bitnet-mad.cpp ``quantize_i2_s``): the whole tensor flattened row-major, packed
  in blocks with the code w + 1, then a 32-byte tail whose first four bytes are the float32 scale (beta; bitnet.cpp
  multiplies each product by it). The block depends on the build that wrote the file: ``x86`` (AVX builds) packs
  128 weights in 32 bytes, byte j holding elements j, j+32, j+64, j+96 in bits 7-6, 5-4, 3-2, 1-0 (our fields in
  reverse order); ``arm`` (NEON builds) packs 64 weights in 16 bytes the same way (elements j, j+16, j+32, j+48).
  The file does not say which; x86 is what the Python converter and the x86 builds write.

Every decoder checks sizes and refuses the code 3 (no ternary weight), so a damaged tensor is one FormatError line.
What this is not: a GGUF reader (gguf_container.py, gguf_model.py) or a kernel (the packed runtime multiplies our rows).
"""

from __future__ import annotations

import numpy as np
import torch

from bitnet_ref.formats.hf import FormatError, unpack_rows

QK = 256  # weights per TQ1_0 / TQ2_0 block (ggml's QK_K)
TQ2_0_BYTES, TQ1_0_BYTES = 66, 54
I2_S_LAYOUTS = {"x86": 128, "arm": 64}  # weights per I2_S block
I2_S_TAIL = 32

# byte -> the same byte with its four 2-bit fields in reverse order (I2_S x86 <-> our 128-weight blocks)
FIELD_REVERSE = np.array(
    [((b & 3) << 6) | (((b >> 2) & 3) << 4) | (((b >> 4) & 3) << 2) | (b >> 6) for b in range(256)], dtype=np.uint8
)
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _padded(k: int) -> int:
    return -(-k // 128) * 128


def pack_codes(codes) -> np.ndarray:
    """Ternary codes (N, K) int8 -> our packed buffer (N * padded(K) / 4,) uint8 (gguf_file.pack_codes' bytes)."""
    c = np.asarray(codes, dtype=np.int8)
    n, k = c.shape
    kp = _padded(k)
    u = np.ones((n, kp), dtype=np.uint8)
    u[:, :k] = c + 1
    u = u.reshape(n, kp // 128, 4, 32)
    return (u[:, :, 0] | u[:, :, 1] << 2 | u[:, :, 2] << 4 | u[:, :, 3] << 6).reshape(-1)


def unpack_codes(packed, n: int, k: int, name: str = "tensor") -> np.ndarray:
    """Our packed buffer -> codes (N, K) int8; FormatError on a code 3."""
    kp = _padded(k)
    b = np.asarray(packed, dtype=np.uint8).reshape(n, kp // 128, 1, 32)
    u = (b >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    _no_code_3(u, name)
    return (u.reshape(n, kp).astype(np.int8) - 1)[:, :k]


def _no_code_3(fields: np.ndarray, name: str) -> None:
    if bool((fields == 3).any()):
        raise FormatError(f"{name}: packed data holds the 2-bit value 3, which is no ternary code (w + 1 is 0..2)")


def check_packed(packed: np.ndarray, name: str) -> None:
    """FormatError if any 2-bit field of our packed buffer is 3 (a byte whose fields are all 0..2 passes)."""
    b = np.asarray(packed, dtype=np.uint8)
    bad = b >> 1
    bad &= b
    bad &= 0x55  # a field whose two bits are both set
    if bool(bad.any()):
        raise FormatError(f"{name}: packed data holds the 2-bit value 3, which is no ternary code (w + 1 is 0..2)")


# ---------------------------------------------------------------------------------------------- TQ2_0


def tq2_0_split(raw, n: int, k: int, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """A TQ2_0 tensor (N rows of K weights, K % 256 == 0) -> (our packed buffer, d (N, K/256) float32)."""
    blocks = _blocks(raw, n, k, TQ2_0_BYTES, name)
    packed = np.ascontiguousarray(blocks[:, :64]).reshape(-1)
    check_packed(packed, name)
    d = np.ascontiguousarray(blocks[:, 64:]).view("<f2").astype(np.float32).reshape(n, k // QK)
    return packed, d


def tq2_0_join(packed, n: int, k: int, d) -> np.ndarray:
    """Our packed buffer (K % 256 == 0) + block scales d (N, K/256) -> TQ2_0 bytes (N, K/256 * 66)."""
    qs = np.asarray(packed, dtype=np.uint8).reshape(n * k // QK, 64)
    dd = np.broadcast_to(np.asarray(d, dtype=np.float32).astype("<f2"), (n, k // QK)).reshape(-1, 1)
    return np.concatenate([qs, dd.copy().view(np.uint8)], axis=1).reshape(n, k // QK * TQ2_0_BYTES)


def _blocks(raw, n: int, k: int, size: int, name: str) -> np.ndarray:
    if k % QK:
        raise FormatError(f"{name}: rows of {k} weights; TQ blocks hold {QK}")
    b = np.asarray(raw, dtype=np.uint8)
    if b.size != n * k // QK * size:
        raise FormatError(f"{name}: {b.size} bytes where {n}x{k} weights take {n * k // QK * size}")
    return b.reshape(n * k // QK, size)


# ---------------------------------------------------------------------------------------------- TQ1_0


def tq1_0_codes(raw, n: int, k: int, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """A TQ1_0 tensor -> (codes (N, K) int8, d (N, K/256) float32)."""
    blocks = _blocks(raw, n, k, TQ1_0_BYTES, name)
    nb = blocks.shape[0]

    def digits(part, count):  # (nb, bytes) -> (nb, count * bytes) digits, digit t of byte j at t * bytes + j
        q = part[:, None, :] * _POW3[:count].reshape(1, count, 1)  # uint8 products wrap mod 256, as in ggml
        return ((q.astype(np.uint16) * 3) >> 8).reshape(nb, -1)

    trits = np.concatenate([digits(blocks[:, :32], 5), digits(blocks[:, 32:48], 5), digits(blocks[:, 48:52], 4)], 1)
    if bool((trits > 2).any()):  # cannot happen for any byte value; kept as the decoder's own check
        raise FormatError(f"{name}: a TQ1_0 digit outside 0..2")
    d = np.ascontiguousarray(blocks[:, 52:]).view("<f2").astype(np.float32).reshape(n, k // QK)
    return (trits.astype(np.int8) - 1).reshape(n, k), d


def tq1_0_blocks(codes, d) -> np.ndarray:
    """Codes (N, K) int8 + block scales d (N, K/256) -> TQ1_0 bytes (N, K/256 * 54) (ggml's quantize_row_tq1_0)."""
    c = np.asarray(codes, dtype=np.int8)
    n, k = c.shape
    u = (c.reshape(n * k // QK, QK) + 1).astype(np.uint16)

    def pack(part, count, width):  # most significant digit first: value = sum u_t * 3**(count-1-t) (* 3 for qh)
        w = part.reshape(-1, count, width)
        v = sum(w[:, t] * 3 ** (4 - t) for t in range(count))
        return ((v * 256 + 242) // 243).astype(np.uint8)  # ceil(v * 256 / 243)

    qs0, qs1, qh = pack(u[:, :160], 5, 32), pack(u[:, 160:240], 5, 16), pack(u[:, 240:], 4, 4)
    dd = np.broadcast_to(np.asarray(d, dtype=np.float32).astype("<f2"), (n, k // QK)).reshape(-1, 1)
    out = np.concatenate([qs0, qs1, qh, dd.copy().view(np.uint8)], axis=1)
    return out.reshape(n, k // QK * TQ1_0_BYTES)


# ---------------------------------------------------------------------------------------------- I2_S


def i2_s_split(raw, n: int, k: int, layout: str = "x86", name: str = "tensor") -> tuple[np.ndarray, float]:
    """An I2_S tensor -> (our packed buffer, its float32 scale). ``layout``: "x86" (default) or "arm"."""
    if layout not in I2_S_LAYOUTS:
        raise FormatError(f"unknown I2_S layout {layout!r}; choose one of {', '.join(I2_S_LAYOUTS)}")
    b = np.asarray(raw, dtype=np.uint8)
    count = n * k
    if b.size != count // 4 + I2_S_TAIL or count % 4:
        raise FormatError(f"{name}: {b.size} bytes where an I2_S tensor of {n}x{k} weights takes {count // 4 + 32}")
    scale = float(b[count // 4 : count // 4 + 4].copy().view("<f4")[0])
    q = I2_S_LAYOUTS[layout]
    if layout == "x86" and k % 128 == 0:  # the blocks are ours with the fields reversed
        body = b[: count // 4]
        check_packed(body, name)  # a field 3 stays a field 3 when the fields swap places
        return FIELD_REVERSE[body], scale
    if count % q:
        raise FormatError(f"{name}: {count} weights do not fill whole {q}-weight I2_S blocks")
    g = q // 4  # bytes per block
    blocks = b[: count // 4].reshape(-1, 1, g)
    fields = (blocks >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)) & 3  # (blocks, 4, g): element f g + j
    _no_code_3(fields, name)
    codes = (fields.reshape(n, k).astype(np.int8)) - 1
    return pack_codes(codes), scale


def i2_s_join(codes, scale: float, layout: str = "x86") -> np.ndarray:
    """Codes (N, K) int8 + scale -> I2_S bytes (N*K/4 + 32,), as bitnet.cpp's quantize_i2_s lays them out."""
    c = np.asarray(codes, dtype=np.int8).reshape(-1)
    q = I2_S_LAYOUTS[layout]
    if c.size % q:
        raise FormatError(f"{c.size} weights do not fill whole {q}-weight I2_S blocks")
    u = (c + 1).astype(np.uint8).reshape(-1, 4, q // 4)
    body = (u[:, 0] << 6 | u[:, 1] << 4 | u[:, 2] << 2 | u[:, 3]).reshape(-1)
    tail = np.zeros(I2_S_TAIL, dtype=np.uint8)
    tail[:4] = np.array([scale], dtype="<f4").view(np.uint8)
    return np.concatenate([body, tail])


# ---------------------------------------------------------------------------------------------- HF rows


def hf_rows_to_packed(hf: np.ndarray, name: str = "tensor") -> np.ndarray:
    """Hugging Face's packing (uint8 (N/4, K): row i*(N/4)+p in byte-row p at bits 2i, code + 1) straight to our
    packed buffer (N, K) without an int8 code matrix.

    The four bytes of one element position of our block (elements j, j+32, j+64, j+96: fields f = 0..3) hold, in
    their fields i = 0..3, the four rows i*R + p: a 4x4 matrix of 2-bit fields whose transpose is the four bytes of
    our rows. Gathered into one uint32 (byte f at bits 8f), it is transposed with two masked swaps."""
    b = np.asarray(hf, dtype=np.uint8)
    r, k = b.shape
    kp = _padded(k)
    if kp != k:  # padding needs the codes; rare (no public model has such a width)
        return pack_codes(unpack_rows(torch.from_numpy(b.copy()), name).numpy())
    check_packed(b, name)  # a field 3 stays a field 3 when fields move
    x = np.ascontiguousarray(b.reshape(r, k // 128, 4, 32).transpose(0, 1, 3, 2)).view(np.uint32)  # (R, nb, 32, 1)
    t = ((x >> 12) ^ x) & 0x0000F0F0  # swap the off-diagonal 2x2 blocks of fields: (f<2, i>=2) <-> (f>=2, i<2)
    x ^= t ^ (t << 12)
    t = ((x >> 6) ^ x) & 0x00CC00CC  # then within each block: (f even, i odd) <-> (f + 1, i - 1)
    x ^= t ^ (t << 6)
    out = x.view(np.uint8).reshape(r, k // 128, 32, 4).transpose(3, 0, 1, 2)  # [i, p, block, j]
    return np.ascontiguousarray(out).reshape(-1)
