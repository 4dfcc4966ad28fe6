"""Any BitNet GGUF read exactly: llama.cpp's ``bitnet`` and bitnet.cpp's ``bitnet-b1.58`` files, as a FileModel.

Architectures (``general.architecture``):

- ``bitnet`` (llama.cpp ``src/models/bitnet.cpp``): SiLU-gated FFN, the head is ``token_embd`` (the graph has no
  ``output.weight``; a file that holds one is refused, as llama.cpp refuses it), each linear may carry an F32 ``.scale``
  multiplied after its matmul;
- ``bitnet-b1.58`` (bitnet.cpp's fork, written by ``utils/convert-hf-to-gguf-bitnet.py`` for bitnet-b1.58-2B-4T;
  ``bitnet-25`` is its earlier name): ReLU^2-gated FFN, ``output.weight`` optional (the head is tied without it).

Both: ``attn_norm`` shared by q/k/v, ``attn_sub_norm`` before ``attn_output``, ``ffn_norm`` shared by gate/up,
``ffn_sub_norm`` before ``ffn_down``, ``output_norm``; RMSNorm with ``attention.layer_norm_rms_epsilon``;
grouped-query attention; NEOX (half-split) RoPE with ``rope.freq_base`` over the whole head. That is bitnet_ref's
official layout, so the file maps onto our names (``gguf_file.PROJ``/``NORMS``) one to one.

Linear types, each decoded to our packed codes and scales with no float weight matrix kept:
TQ2_0 and TQ1_0 (any block scale ``d``: one value shared by every non-zero block becomes the tensor's beta, else
the blocks keep their own; llama.cpp multiplies them with Q8_K per-256-block activations), bitnet.cpp's I2_S (its
float32 scale; per-token int8 activations; ``i2s_layout`` "x86" or "arm", see ternary_blocks.py), and F16, BF16 or
F32 tensors that hold ternary values (one magnitude: codes times it; llama.cpp multiplies those in float). A
``.scale`` tensor multiplies beta. Each ``LinearSpec.act`` records what the file's runtime does, for
``FileModel.model(act="file")``. Embedding, head and norms: F32, F16 or BF16. The file's vocabulary becomes the
text codec (gguf_vocab.py).

Every problem is one FormatError line: not GGUF, truncated, another architecture, an unknown or non-ternary tensor
type, a missing or misshapen tensor (a transposed one is named), a tokenizer it cannot read (ids then).
What this is not: a writer (gguf_write.py) or llama.cpp.
"""

from __future__ import annotations

import numpy as np
import torch

from bitnet_ref.formats import ternary_blocks as TB
from bitnet_ref.formats.file_model import FileModel
from bitnet_ref.formats.gguf_container import GGUFFile, TensorInfo
from bitnet_ref.formats.gguf_file import NORMS, PROJ
from bitnet_ref.formats.gguf_vocab import codec_of, is_byte_vocab
from bitnet_ref.formats.hf import FormatError
from bitnet_ref.model import MAX_ROPE, ModelConfig
from bitnet_ref.runtime.act_modes import LinearSpec
from bitnet_ref.runtime.int8_head import HEAD_FORMATS, Int8Rows, quantize_rows_into
from bitnet_ref.runtime.packed import PackedWeight

ARCHS = {"bitnet": "swiglu", "bitnet-b1.58": "relu2", "bitnet-25": "relu2"}
RUNTIME = {"bitnet": "llama.cpp", "bitnet-b1.58": "bitnet.cpp", "bitnet-25": "bitnet.cpp"}
FLOAT_TYPES = ("F32", "F16", "BF16")
LINEAR_TYPES = ("TQ2_0", "TQ1_0", "I2_S", *FLOAT_TYPES)
_ROW_CHUNK = 1024


def _hparams(f: GGUFFile) -> tuple[str, dict]:
    arch = f.get("general.architecture", str)
    if arch not in ARCHS:
        raise FormatError(
            f"{f.path}: architecture {arch!r:.40}, not a BitNet one ({', '.join(ARCHS)}); "
            "bitnet_ref reads BitNet b1.58 files only"
        )

    def key(k, kind, default=...):
        return f.get(f"{arch}.{k}", kind, default)

    h = {
        "arch": arch,
        "n_layers": key("block_count", int),
        "d_model": key("embedding_length", int),
        "ffn_hidden": key("feed_forward_length", int),
        "n_heads": key("attention.head_count", int),
        "context": key("context_length", int, 4096),
        "norm_eps": _short(key("attention.layer_norm_rms_epsilon", (int, float))),
        "rope_theta": _short(key("rope.freq_base", (int, float), 10000.0)),
    }
    h["n_kv_heads"] = key("attention.head_count_kv", int, h["n_heads"])
    head_dim = h["d_model"] // max(h["n_heads"], 1)
    h["rope_dim"] = key("rope.dimension_count", int, head_dim)
    if h["rope_dim"] != head_dim:
        raise FormatError(f"{f.path}: RoPE over {h['rope_dim']} of {head_dim} head dimensions; BitNet rotates all")
    scaling = key("rope.scaling.type", str, "none")
    if scaling not in ("none", ""):
        raise FormatError(f"{f.path}: RoPE scaling {scaling!r:.20}; only plain RoPE is supported")
    return arch, h


def _short(v) -> float:
    """A float32 metadata value as the shortest decimal that is that float32 (1e-05, not 9.99999974e-06): the
    float32 arithmetic is the same, and the config reads as it was written."""
    return float(str(np.float32(v)))


def _config(f: GGUFFile, arch: str, h: dict, vocab: int, tied: bool) -> tuple[ModelConfig, list]:
    notes, ctx = [], h["context"]
    head_dim = h["d_model"] // max(h["n_heads"], 1)
    if head_dim and ctx * head_dim > MAX_ROPE:
        ctx = MAX_ROPE // head_dim
        notes.append(f"context {h['context']} is decoded up to {ctx} positions (RoPE tables are allocated whole)")
    try:
        cfg = ModelConfig.from_dict(
            dict(
                vocab_size=vocab,
                d_model=h["d_model"],
                n_layers=h["n_layers"],
                n_heads=h["n_heads"],
                n_kv_heads=h["n_kv_heads"],
                ffn_hidden=h["ffn_hidden"],
                context=ctx,
                quant="ternary",
                ffn_act=ARCHS[arch],
                rope_theta=h["rope_theta"],
                norm_eps=h["norm_eps"],
                tie_embeddings=tied,
                layout="official",
            )
        )
    except ValueError as e:
        raise FormatError(f"{f.path}: {e}") from None
    return cfg, notes


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear kind."""
    d, kv, h = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden
    return {
        "q_proj": (d, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, d),
        "gate_proj": (h, d),
        "up_proj": (h, d),
        "down_proj": (d, h),
    }


def _info(f: GGUFFile, name: str, shape: tuple) -> TensorInfo:
    """The tensor ``name`` with ggml shape ``shape``; FormatError naming what is missing or misshapen."""
    t = f.tensors.get(name)
    if t is None:
        raise FormatError(f"{f.path}: no tensor {name!r}; the file is incomplete or not this architecture")
    if t.shape != shape:
        hint = ": the matrix is transposed" if len(shape) == 2 and t.shape == shape[::-1] else ""
        raise FormatError(f"{f.path}: {name} has shape {list(t.shape)} where {list(shape)} is expected{hint}")
    return t


def float_values(f: GGUFFile, t: TensorInfo) -> np.ndarray:
    """A float tensor's values as float32, shaped (rows, cols) with ggml's ne reversed (a copy)."""
    raw = f.raw(t.name)
    if t.type == "F32":
        v = raw.view("<f4").astype(np.float32)
    elif t.type == "F16":
        v = raw.view("<f2").astype(np.float32)
    elif t.type == "BF16":
        v = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        raise FormatError(f"{f.path}: {t.name} is {t.type}; bitnet_ref reads F32, F16 or BF16 here")
    if not np.isfinite(v).all():
        raise FormatError(f"{f.path}: {t.name} holds NaN or inf")
    return v.reshape(tuple(reversed(t.shape))) if len(t.shape) > 1 else v


def ternary_of_floats(v: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """(codes int8, magnitude) of a float matrix holding 0 and +-m for one m; FormatError otherwise."""
    a = np.abs(v)
    m = float(a.max()) if a.size else 0.0
    if bool(((a != 0) & (a != m)).any()):
        count = int(np.unique(a[a != 0]).size)
        raise FormatError(f"{name}: {count} different nonzero magnitudes: not ternary codes times one scale")
    return np.sign(v).astype(np.int8), m


def _uniform_block_scale(d: np.ndarray, nonzero: np.ndarray) -> float | None:
    """The one d every non-zero block shares, or None when they differ (1.0 when no block is non-zero)."""
    vals = d[nonzero]
    if vals.size == 0:
        return 1.0
    return float(vals[0]) if bool((vals == vals[0]).all()) else None


def read_linear(f: GGUFFile, name: str, n: int, k: int, i2s_layout: str = "x86") -> tuple[LinearSpec, str, str]:
    """(LinearSpec, stored type, the precision its scale was stored in) of the linear ``name`` (``blk.N.attn_q``...),
    an (N, K) matrix."""
    t = _info(f, name + ".weight", (k, n))
    post = np.float32(1.0)
    if name + ".scale" in f.tensors:
        s = f.tensors[name + ".scale"]
        if s.type != "F32" or s.n_elements != 1:
            raise FormatError(f"{f.path}: {s.name} must be one F32 value, got {s.type} {list(s.shape)}")
        post = f.raw(s.name).view("<f4")[0]
    raw, typ, block_scales, act, dtype, precision = f.raw(t.name), t.type, None, "block", "f32", "f32"
    if typ in ("TQ2_0", "TQ1_0"):
        if typ == "TQ2_0":
            packed, d = TB.tq2_0_split(raw, n, k, t.name)
            nonzero = (packed.reshape(n * k // TB.QK, 64) != 0x55).any(axis=1).reshape(d.shape)
        else:
            codes, d = TB.tq1_0_codes(raw, n, k, t.name)
            packed = TB.pack_codes(codes)
            nonzero = codes.reshape(n, k // TB.QK, TB.QK).any(axis=2)
        shared = _uniform_block_scale(d, nonzero)
        beta = np.float32(shared) * post if shared is not None else post
        block_scales = None if shared is not None else d
        precision = "f32" if shared == 1.0 else "f16"  # d = 1: the scale is the F32 .scale alone
    elif typ == "I2_S":
        packed, scale = TB.i2_s_split(raw, n, k, i2s_layout, t.name)
        beta, act = np.float32(scale) * post, "token"
    elif typ in FLOAT_TYPES:
        codes, m = ternary_of_floats(float_values(f, t), t.name)
        packed, beta, act, dtype = TB.pack_codes(codes), np.float32(m) * post, "none", typ.lower()
        precision = "f32" if m == 1.0 else dtype
    else:
        raise FormatError(
            f"{f.path}: {t.name} has type {typ}; a BitNet linear is one of {', '.join(LINEAR_TYPES)}"
            + (
                " (TL1/TL2 are bitnet.cpp's per-shape lookup-table layouts: convert to I2_S)"
                if t.type_id in (38, 39)
                else ""
            )
        )
    f.drop(t.name)
    w = PackedWeight(np.ascontiguousarray(packed), torch.tensor(float(beta), dtype=torch.float32), n, k)
    return LinearSpec(w, block_scales, act, dtype), typ, precision


def _rows(f: GGUFFile, t: TensorInfo, head: str):
    """A (V, d) embedding or head: float32, or Int8Rows made a chunk at a time from the file mapping."""
    if t.type not in FLOAT_TYPES:
        raise FormatError(f"{f.path}: {t.name} is {t.type}; bitnet_ref reads F32, F16 or BF16 here")
    if head == "fp32":
        out = torch.from_numpy(float_values(f, t))
        f.drop(t.name)
        return out
    d, V = t.shape
    rows = Int8Rows.empty(V, d)
    width = {"F32": 4, "F16": 2, "BF16": 2}[t.type]
    raw = f.raw(t.name)
    for r in range(0, V, _ROW_CHUNK):
        e = min(r + _ROW_CHUNK, V)
        chunk = _chunk_values(raw[r * d * width : e * d * width], t.type)
        quantize_rows_into(torch.from_numpy(chunk.reshape(e - r, d)), rows.q[r:e], rows.scale[r:e])
    f.drop(t.name)
    return rows


def _chunk_values(raw: np.ndarray, typ: str) -> np.ndarray:
    if typ == "F32":
        return raw.view("<f4").astype(np.float32)
    if typ == "F16":
        return raw.view("<f2").astype(np.float32)
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)


def read_bitnet_gguf(path, *, head: str = "fp32", i2s_layout: str = "x86", missing_norms: str = "error") -> FileModel:
    """The FileModel of any BitNet GGUF (see the module docstring); FormatError (one line) for anything else.
    ``head="int8"``: the embedding/head as int8 rows, never as a float32 matrix (fast decoding at real sizes).
    ``missing_norms="unit"``: a missing norm tensor reads as gains of 1 and is listed in ``hparams["missing"]``
    (crosscheck names it), where by default it is an error, as it is for llama.cpp."""
    if head not in HEAD_FORMATS:
        raise ValueError(f"head must be one of {HEAD_FORMATS}, not {head!r}")
    f = GGUFFile(path)
    arch, h = _hparams(f)
    emb = f.tensors.get("token_embd.weight")
    if emb is None or len(emb.shape) != 2 or emb.shape[0] != h["d_model"]:
        raise FormatError(f"{f.path}: no token_embd.weight of width {h['d_model']}")
    has_output = "output.weight" in f.tensors
    if has_output and arch == "bitnet":
        raise FormatError(
            f"{f.path}: an output.weight in a 'bitnet' file; llama.cpp's bitnet graph has none (its head is "
            "token_embd) and refuses the file"
        )
    cfg, notes = _config(f, arch, h, emb.shape[1], tied=not has_output)
    shapes = _shapes(cfg)
    linears, types, precisions = {}, {}, {}
    for i in range(cfg.n_layers):
        for ours, theirs in PROJ.items():
            n, k = shapes[ours.rsplit(".", 1)[1]]
            name = f"blocks.{i}.{ours}"
            linears[name], types[name], precisions[name] = read_linear(f, f"blk.{i}.{theirs}", n, k, i2s_layout)
    floats = {"tok_emb.weight": _rows(f, _info(f, "token_embd.weight", emb.shape), head)}
    if has_output:
        floats["head.weight"] = _rows(f, _info(f, "output.weight", emb.shape), head)
    missing = []
    for i in range(cfg.n_layers):
        for ours, theirs in NORMS.items():
            width = cfg.ffn_hidden if theirs == "ffn_sub_norm" else cfg.d_model
            key, gguf_name = f"blocks.{i}.{ours}.weight", f"blk.{i}.{theirs}.weight"
            if gguf_name not in f.tensors and missing_norms == "unit":
                floats[key] = torch.ones(width)
                missing.append(key)
                continue
            floats[key] = torch.from_numpy(float_values(f, _info(f, gguf_name, (width,))))
    floats["norm.weight"] = torch.from_numpy(float_values(f, _info(f, "output_norm.weight", (cfg.d_model,))))
    if missing:
        notes.append(f"{len(missing)} norm tensors missing, read as unit gains (a runtime refuses such a file)")
    head_t = f.tensors["output.weight" if has_output else "token_embd.weight"]
    known = _expected_names(cfg, has_output)
    extra = sorted(n for n in f.tensors if n not in known)
    if extra:
        notes.append(
            f"tensors the {arch} graph does not read: {', '.join(extra[:4])}" + (" ..." if len(extra) > 4 else "")
        )
    try:
        codec = codec_of(f.metadata, cfg.vocab_size)
    except ValueError as e:
        raise FormatError(f"{f.path}: {e}") from None
    h.update(
        vocab=cfg.vocab_size,
        tied=not has_output,
        head_type=head_t.type,
        tokenizer=f.metadata.get("tokenizer.ggml.model", "none"),
        byte_vocab=is_byte_vocab(f.metadata),
        bitnet_ref_config=f.metadata.get("bitnet_ref.config"),
        missing=missing,
    )
    return FileModel(
        cfg,
        linears,
        floats,
        f"{f.path} (GGUF, {arch}, {', '.join(sorted(set(types.values())))} linears)",
        "gguf",
        RUNTIME[arch],
        head_dtype=head_t.type.lower() if head_t.type in FLOAT_TYPES else "f32",
        tokenizer=codec,
        tensor_types=types,
        scale_types=precisions,
        hparams=h,
        notes=notes,
    )


def _expected_names(cfg: ModelConfig, has_output: bool) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if has_output else set())
    for i in range(cfg.n_layers):
        names |= {f"blk.{i}.{t}.weight" for t in NORMS.values()}
        names |= {f"blk.{i}.{t}.{s}" for t in PROJ.values() for s in ("weight", "scale")}
    return names | {"rope_freqs.weight"}
