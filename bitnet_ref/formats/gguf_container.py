"""The GGUF container without the ``gguf`` package: metadata, tensor directory and the tensors' bytes, read and written.

GGUF (llama.cpp's ``ggml/include/gguf.h``; version 2 and 3): the magic ``GGUF``, a uint32 version, the tensor
and key-value counts (uint64), the key-value pairs (a string key, a uint32 value type, the value; arrays carry
their item type and count), then one record per tensor (name, dimension count, dimensions ``ne`` innermost
first, ggml type id, byte offset from the data section), then the data section at the next multiple of
``general.alignment`` (default 32). Little-endian only, as every file in the wild.

Everything is checked against the file's size before it is used, so a truncated, foreign or hostile file is one
``FormatError`` line, never a huge allocation or a read past the end. The tensor bytes are a read-only memory map
(``GGUFFile.raw``), nothing is copied until a reader asks; ``drop`` tells the kernel a copied tensor's pages are
no longer needed, so they leave this process's resident memory.

``write_container`` writes one (typed metadata, raw tensor bytes, atomically), including the types gguf-py cannot
write (bitnet.cpp's I2_S). What this is not: a model reader (``gguf_model.py`` knows the BitNet architectures) or a
block codec (``ternary_blocks.py``); bitnet_ref's own export still goes through gguf-py (``gguf_file.py``).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_ref.files import atomic_write
from bitnet_ref.formats.hf import FormatError

MAGIC = b"GGUF"
MAX_COUNT = 1 << 20  # tensors or keys: real files have hundreds
MAX_STRING = 64 << 20  # one string value (a chat template, a merges entry)
MAX_ARRAY = 1 << 24  # items in one array (vocabularies are ~10^5)
MAX_DIMS = 4

# ggml type id -> (name, weights per block, bytes per block). I2_S is bitnet.cpp's: one byte per four weights plus
# a 32-byte tail holding its float32 scale (``size_bytes``). Ids 38/39 are TL1/TL2 in bitnet.cpp's fork, where
# upstream ggml has reused 39 for MXFP4: ``type_name`` says both.
TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    36: ("I2_S", 4, 1),
}
OTHER_NAMES = {38: "TL1 (bitnet.cpp)", 39: "TL2 (bitnet.cpp) or MXFP4 (ggml)", 40: "NVFP4", 41: "Q1_0"}
I2_S_TAIL = 32  # bytes after an I2_S tensor's codes; its float32 scale is the first four

# value type id -> struct format of a scalar (strings and arrays are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12


def type_name(type_id: int) -> str:
    return TYPES[type_id][0] if type_id in TYPES else OTHER_NAMES.get(type_id, f"unknown ggml type {type_id}")


@dataclass
class TensorInfo:
    name: str
    shape: tuple  # ggml's ne, innermost first: a (N, K) matrix is (K, N)
    type_id: int
    offset: int  # absolute byte offset in the file
    nbytes: int  # bytes of its data (0 when the type is unknown)

    @property
    def type(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def size_bytes(type_id: int, shape: tuple) -> int:
    """Bytes of a tensor's data; 0 for a type this reader does not know (its bytes are never read)."""
    if type_id not in TYPES:
        return 0
    n = 1
    for d in shape:
        n *= d
    if type_id == 36:  # I2_S: 2 bits a weight + the scale tail (bitnet.cpp's ggml_nbytes)
        return n // 4 + I2_S_TAIL
    _, block, size = TYPES[type_id]
    if shape and shape[0] % block:
        return -1  # rows must hold whole blocks
    return n // block * size


class _Cursor:
    """Reads little-endian values from the header, refusing to run past ``end``."""

    def __init__(self, buf, end: int, path):
        self.buf, self.pos, self.end, self.path = buf, 0, end, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(
                f"{self.path}: truncated GGUF header (needs byte {self.pos + n:,}, file has {self.end:,})"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > MAX_STRING:
            raise FormatError(f"{self.path}: a GGUF string of {n:,} bytes; the file is damaged or not GGUF")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.scalar("<I"), self.scalar("<Q")
            if count > MAX_ARRAY:
                raise FormatError(f"{self.path}: metadata {key!r:.60} is an array of {count:,} items; too many")
            if itype in _NUMPY:
                size = np.dtype(_NUMPY[itype]).itemsize
                arr = np.frombuffer(self.take(count * size), dtype=_NUMPY[itype]).copy()
                return arr.astype(bool) if itype == 7 else arr
            if itype == _STRING:
                return [self.string() for _ in range(count)]
            raise FormatError(f"{self.path}: metadata {key!r:.60} is an array of value type {itype}, which GGUF lacks")
        raise FormatError(f"{self.path}: metadata {key!r:.60} has value type {vtype}, which GGUF does not define")


class GGUFFile:
    """A GGUF file opened for reading: ``metadata`` (key -> value), ``tensors`` (name -> TensorInfo), ``raw(name)``."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._f = open(self.path, "rb")
            size = self.path.stat().st_size
            if size < 24:
                raise FormatError(f"{self.path}: {size} bytes, too short for a GGUF file")
            self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read it ({e.strerror or e})") from None
        self.size = size
        self._parse()

    def _parse(self) -> None:
        c = _Cursor(self._mm, self.size, self.path)
        if c.take(4) != MAGIC:
            raise FormatError(f"{self.path} is not a GGUF file (no GGUF magic at its start)")
        self.version = c.scalar("<I")
        if self.version not in (2, 3):
            raise FormatError(f"{self.path}: GGUF version {self.version}; this reader reads versions 2 and 3")
        n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise FormatError(f"{self.path}: {n_tensors:,} tensors and {n_kv:,} keys; the header is damaged")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = c.string()
            self.metadata[key] = c.value(c.scalar("<I"), key)
        infos = []
        for _ in range(n_tensors):
            name, n_dims = c.string(), c.scalar("<I")
            if n_dims > MAX_DIMS:
                raise FormatError(f"{self.path}: tensor {name!r:.60} has {n_dims} dimensions; ggml has at most 4")
            shape = tuple(c.scalar("<Q") for _ in range(n_dims))
            infos.append((name, shape, c.scalar("<I"), c.scalar("<Q")))
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise FormatError(f"{self.path}: general.alignment {align!r:.20} is not a power of two")
        data = -(-c.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, rel in infos:
            if name in self.tensors:
                raise FormatError(f"{self.path}: tensor {name!r:.80} appears twice")
            nbytes = size_bytes(type_id, shape)
            if nbytes < 0:
                raise FormatError(
                    f"{self.path}: tensor {name!r:.80} ({type_name(type_id)}): rows of {shape[0]} do not fill "
                    "whole blocks"
                )
            info = TensorInfo(name, shape, type_id, data + rel, nbytes)
            if info.offset + nbytes > self.size:
                raise FormatError(
                    f"{self.path}: tensor {name!r:.80} ends at byte {info.offset + nbytes:,} but the file has "
                    f"{self.size:,}: the file is truncated"
                )
            self.tensors[name] = info

    # ---------------------------------------------------------------------------------------------- access

    def get(self, key: str, kind=None, default=...):
        """A metadata value, type-checked (``kind`` a type or tuple of types); FormatError if missing or wrong."""
        if key not in self.metadata:
            if default is ...:
                raise FormatError(f"{self.path}: no metadata key {key!r}")
            return default
        v = self.metadata[key]
        kinds = _tuple(kind) if kind is not None else None
        if kinds is not None and not (isinstance(v, kinds) and (bool in kinds or not isinstance(v, bool))):
            raise FormatError(f"{self.path}: metadata {key!r} is {v!r:.60}, not {_kind_name(kind)}")
        return v

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, uint8, a read-only view of the file mapping (no copy)."""
        t = self.tensors[name]
        if t.type_id not in TYPES:
            raise FormatError(f"{self.path}: tensor {name!r} has type {t.type}, which this reader cannot decode")
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def drop(self, name: str) -> None:
        """Release the mapped pages of a tensor already copied (the file stays in the page cache)."""
        t = self.tensors[name]
        if not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = t.offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(t.offset + t.nbytes, self.size)
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    return " or ".join(k.__name__ for k in _tuple(kind))


def is_gguf(path) -> bool:
    """True for a regular file that starts with the GGUF magic."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return p.is_file() and f.read(4) == MAGIC
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- writing


def _encode_string(v: str) -> bytes:
    b = v.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _encode_value(vtype: int, v) -> bytes:
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype], v)
    if vtype == STRING:
        return _encode_string(v)
    if vtype == ARRAY:
        itype, items = v
        head = struct.pack("<IQ", itype, len(items))
        if itype == STRING:
            return head + b"".join(_encode_string(x) for x in items)
        return head + np.asarray(items, dtype=_NUMPY[itype]).tobytes()
    raise ValueError(f"GGUF has no value type {vtype}")


def write_container(path, metadata: list, tensors: list, *, alignment: int = 32) -> None:
    """Write a GGUF v3 file atomically. ``metadata``: (key, value type, value) with value (item type, items) for
    arrays; ``tensors``: (name, shape ne innermost first, ggml type id, raw bytes as a uint8 array)."""
    head = [MAGIC, struct.pack("<IQQ", 3, len(tensors), len(metadata) + 1)]
    head += [_encode_string("general.alignment"), struct.pack("<II", U32, alignment)]
    for key, vtype, v in metadata:
        head += [_encode_string(key), struct.pack("<I", vtype), _encode_value(vtype, v)]
    offsets, pos = [], 0
    for name, shape, type_id, data in tensors:
        want = size_bytes(type_id, tuple(shape))
        if want != np.asarray(data).size:
            raise ValueError(f"{name}: {np.asarray(data).size} bytes for a {type_name(type_id)} tensor of {shape}")
        offsets.append(pos)
        pos = -(-(pos + want) // alignment) * alignment
    for (name, shape, type_id, _), off in zip(tensors, offsets):
        head += [_encode_string(name), struct.pack("<I", len(shape)), struct.pack(f"<{len(shape)}Q", *shape)]
        head += [struct.pack("<IQ", type_id, off)]
    header = b"".join(head)

    def write(f):
        f.write(header)
        f.write(b"\0" * (-len(header) % alignment))
        for (_, _, _, data), off in zip(tensors, offsets):
            f.write(np.ascontiguousarray(data, dtype=np.uint8).data)
            f.write(b"\0" * (-(off + np.asarray(data).size) % alignment))

    atomic_write(path, write)
