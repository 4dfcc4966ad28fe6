"""Write a BitNet GGUF the way other converters do: any linear type, either architecture, either place for beta.

``write_bitnet_gguf(out, cfg, linears, floats, ...)`` writes the model of a FileModel (or of any packed state) as

- ``arch="bitnet"`` (llama.cpp; SiLU-gated FFN, tied head) or ``"bitnet-b1.58"`` (bitnet.cpp; ReLU^2, head tied or
  ``output.weight``);
- ``linear_type`` TQ2_0, TQ1_0, I2_S (bitnet.cpp's, which gguf-py cannot write), F16, BF16 or F32;
- ``scale_in="tensor"``: block scales d = 1 (floats: the bare codes) and beta in an F32 ``.scale`` tensor, exact (how
  bitnet_ref exports); ``"block"``: beta in every block's fp16 d (floats: codes times beta), as llama.cpp's and
  microsoft's converters write them (beta rounded to fp16 or the float type). I2_S keeps its own float32 scale.

It is how test files, the 2B-4T-shaped I2_S file of the docs and the converter faults of
tools/reliability/crosscheck_zoo.py are made. The container is gguf_container.write_container (atomic).
What this is not: bitnet_ref's exporter of a trained checkpoint (gguf_file.export_gguf, through gguf-py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bitnet_ref.formats import ternary_blocks as TB
from bitnet_ref.formats.gguf_container import ARRAY, BOOL, F32, I32, STRING, U32, is_gguf, write_container
from bitnet_ref.formats.gguf_file import NORMS, PROJ
from bitnet_ref.formats.hf import FormatError, byte_chars
from bitnet_ref.model import ModelConfig
from bitnet_ref.runtime.act_modes import LinearSpec

TYPE_IDS = {"F32": 0, "F16": 1, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35, "I2_S": 36}
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37, "I2_S": 40}  # llama_ftype (bitnet.cpp: 40)
ARCH_ACT = {"bitnet": "swiglu", "bitnet-b1.58": "relu2"}


def float_bytes(v: np.ndarray, typ: str) -> np.ndarray:
    """float32 values as the raw bytes of an F32, F16 or BF16 tensor (BF16 rounded to nearest even)."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    if typ == "F32":
        return v.view(np.uint8).reshape(-1)
    if typ == "F16":
        return v.astype("<f2").view(np.uint8).reshape(-1)
    bits = v.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")  # round half to even
    return rounded.view(np.uint8).reshape(-1)


def byte_vocab_metadata() -> list:
    """bitnet_ref's byte vocabulary (gguf_file._byte_vocab's, for this writer): 256 GPT-2 byte characters."""
    chars = byte_chars()
    return [
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, "default"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, chars)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [1] * 256)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, [f"{chars[0] * 2} {chars[0] * 2}"])),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 0),
        ("tokenizer.ggml.add_bos_token", BOOL, False),
        ("tokenizer.ggml.add_eos_token", BOOL, False),
    ]


NO_VOCAB = [("tokenizer.ggml.model", STRING, "no_vocab")]


def _linear_tensors(name: str, spec: LinearSpec, typ: str, scale_in: str, layout: str) -> list:
    w = spec.weight
    n, k, beta = w.n, w.k, np.float32(float(w.beta))
    blocks = spec.block_scales
    if typ in ("TQ2_0", "TQ1_0") and k % TB.QK:
        raise FormatError(f"{name}: rows of {k} weights; {typ} needs a multiple of {TB.QK}")
    codes = TB.unpack_codes(w.packed, n, k, name) if typ != "TQ2_0" else None
    out, post = [], None
    if typ in ("TQ2_0", "TQ1_0"):
        d = np.ones((n, k // TB.QK), np.float32) if blocks is None else blocks.astype(np.float32)
        if scale_in == "block":
            d = d * beta
        else:
            post = beta
        data = TB.tq2_0_join(w.packed, n, k, d) if typ == "TQ2_0" else TB.tq1_0_blocks(codes, d)
    elif typ == "I2_S":
        if blocks is not None:
            raise FormatError(f"{name}: I2_S holds one scale per tensor; this linear has per-block scales")
        data = TB.i2_s_join(codes, float(beta), layout)
    else:
        v = codes.astype(np.float32)
        if blocks is not None:
            v = v * np.repeat(blocks, TB.QK, axis=1)
        if scale_in == "block":
            v = v * beta
        else:
            post = beta
        data = float_bytes(v, typ)
    out.append((name + ".weight", (k, n), TYPE_IDS[typ], np.asarray(data, dtype=np.uint8).reshape(-1)))
    if post is not None:
        out.append((name + ".scale", (1,), 0, float_bytes(np.array([post]), "F32")))
    return out


def write_bitnet_gguf(
    out,
    cfg: ModelConfig,
    linears: dict[str, LinearSpec],
    floats: dict,
    *,
    arch: str = "bitnet",
    linear_type: str = "TQ2_0",
    scale_in: str = "tensor",
    emb_type: str = "F16",
    vocab: list | None = None,
    i2s_layout: str = "x86",
    name: str = "bitnet_ref",
    force: bool = False,
    metadata: list | None = None,
    skip: tuple = (),
) -> dict:
    """Write the GGUF (see the module docstring); ``vocab``: tokenizer metadata entries (default: no_vocab);
    ``metadata``: more (key, type, value) entries, which override the architecture's; ``skip``: GGUF tensor names
    left out (a converter that forgets one). Returns a summary."""
    if arch not in ARCH_ACT:
        raise FormatError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCH_ACT)}")
    if cfg.ffn_act != ARCH_ACT[arch]:
        raise FormatError(f"the {arch!r} graph computes a {ARCH_ACT[arch]} FFN and this model's is {cfg.ffn_act}")
    if arch == "bitnet" and not cfg.tie_embeddings:
        raise FormatError("llama.cpp's bitnet graph has no output head of its own: the model must be tied")
    if linear_type not in TYPE_IDS or scale_in not in ("tensor", "block") or emb_type not in ("F32", "F16", "BF16"):
        raise FormatError(
            f"unknown linear type {linear_type!r}, scale place {scale_in!r} or embedding type {emb_type!r}"
        )
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not (force and out.is_file() and is_gguf(out)):
        raise FormatError(f"{out} exists; pass force=True to replace a GGUF file there")
    tensors = [
        (
            "token_embd.weight",
            (cfg.d_model, cfg.vocab_size),
            TYPE_IDS[emb_type],
            _float(floats, "tok_emb.weight", emb_type),
        )
    ]
    if not cfg.tie_embeddings:
        tensors.append(
            (
                "output.weight",
                (cfg.d_model, cfg.vocab_size),
                TYPE_IDS[emb_type],
                _float(floats, "head.weight", emb_type),
            )
        )
    tensors.append(("output_norm.weight", (cfg.d_model,), 0, _float(floats, "norm.weight", "F32")))
    for i in range(cfg.n_layers):
        for ours, theirs in NORMS.items():
            width = cfg.ffn_hidden if theirs == "ffn_sub_norm" else cfg.d_model
            tensors.append(
                (f"blk.{i}.{theirs}.weight", (width,), 0, _float(floats, f"blocks.{i}.{ours}.weight", "F32"))
            )
        for ours, theirs in PROJ.items():
            spec = linears[f"blocks.{i}.{ours}"]
            tensors += _linear_tensors(f"blk.{i}.{theirs}", spec, linear_type, scale_in, i2s_layout)
    meta = [
        ("general.architecture", STRING, arch),
        ("general.name", STRING, name),
        ("general.file_type", U32, FILE_TYPES[linear_type]),
        (f"{arch}.context_length", U32, cfg.context),
        (f"{arch}.embedding_length", U32, cfg.d_model),
        (f"{arch}.block_count", U32, cfg.n_layers),
        (f"{arch}.feed_forward_length", U32, cfg.ffn_hidden),
        (f"{arch}.attention.head_count", U32, cfg.n_heads),
        (f"{arch}.attention.head_count_kv", U32, cfg.n_kv_heads),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, cfg.norm_eps),
        (f"{arch}.rope.freq_base", F32, cfg.rope_theta),
        (f"{arch}.rope.dimension_count", U32, cfg.head_dim),
        (f"{arch}.vocab_size", U32, cfg.vocab_size),
    ]
    extra = list(metadata or [])
    override = {k for k, _, _ in extra}
    meta = [m for m in meta if m[0] not in override] + extra + list(NO_VOCAB if vocab is None else vocab)
    write_container(out, meta, [t for t in tensors if t[0] not in skip])
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "arch": arch,
        "linear_type": linear_type,
        "tensors": len(tensors),
    }


def _float(floats: dict, key: str, typ: str) -> np.ndarray:
    t = floats[key]
    return float_bytes(t.detach().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32), typ)
