"""The GGUF file of llama.cpp's ``bitnet`` architecture, both ways: a bitnet_ref model written for llama.cpp, and
such a file (one this module wrote) read back as a packed model that decodes without any fp32 latent weight.

What llama.cpp's bitnet graph computes (``src/models/bitnet.cpp``, llama.cpp as vendored by llama-cpp-python
0.3.36), and so what a model must be to be written here:

- the official layout: ``attn_norm`` shared by q/k/v, ``attn_sub_norm`` before ``attn_output``, ``ffn_norm`` shared
  by gate/up, ``ffn_sub_norm`` before ``ffn_down``, ``output_norm``; RMSNorm with ``attention.layer_norm_rms_epsilon``;
  NEOX (half-split) RoPE, ours; grouped-query attention through ``attention.head_count_kv``;
- a SiLU-gated FFN (``LLM_FFN_SILU, LLM_FFN_PAR``, hard-coded): ``ffn_act="swiglu"``. ReLU^2 is refused;
- no ``output.weight``: the logits are ``token_embd`` times the final hidden state, so the head must be tied;
- every linear ``W`` may carry a ``.scale`` tensor, F32 of shape {1}, multiplied after the matmul
  (``build_lora_mm``). Each ternary linear is written as TQ2_0 with every block scale d = 1 and its beta as that
  ``.scale``: beta stays exactly the float32 our forward multiplies by, where a block d would round it to fp16.

TQ2_0 (ggml-common.h ``block_tq2_0``, 66 bytes per 256 weights): ``qs[64]`` then an fp16 ``d``; the stored code is
w + 1; byte m of each 32-byte half holds elements m, m+32, m+64, m+96 in bits 0-1, 2-3, 4-5, 6-7. That is our 2-bit
packed format (cpp/ternary.h) exactly, so a row of TQ2_0 blocks is our packed row with ``00 3c`` (fp16 1.0) after
every 64 bytes. It needs rows of a multiple of 256 weights: a narrower linear is refused, or with
``approximate=True`` written as F16 codes (exact) + its ``.scale``, which llama.cpp multiplies with fp16
activations instead of int8 ones (the file records it in ``bitnet_ref.approximate``).

Everything else: ``token_embd`` F16 (llama.cpp's own converter's choice; also its head) or F32, norms F32.
Vocabulary: a byte-level model (256 tokens, trained on text) gets a byte-level BPE vocabulary of its 256 byte
tokens and no merges (``_byte_vocab``), so llama.cpp's tokenizer maps text to exactly our ids; any other
vocabulary is written as ``no_vocab`` with its size (feed token ids).

Needs the ``gguf`` package (``pip install "bitnet_ref[gguf]"``), imported only when a file is written or read.
What this is not: the reader of other people's GGUF files (``read_gguf`` reads what ``write_gguf`` wrote; any
BitNet GGUF, any block scale, I2_S included, is gguf_model.read_bitnet_gguf's), or
llama.cpp (never imported here; tests and tools/bench/bench_decode.py use llama-cpp-python). The command line is
``python -m bitnet_ref.export CKPT --format gguf --out model.gguf`` (export.py).
"""

from __future__ import annotations

import json
import mmap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bitnet_ref import quant as Q
from bitnet_ref.files import atomic_write
from bitnet_ref.formats.hf import FormatError, byte_chars, official_state
from bitnet_ref.model import ModelConfig, Transformer, rope_tables
from bitnet_ref.runtime.int8_head import HEAD_FORMATS, Int8Embedding, Int8Head, Int8Rows, quantize_rows
from bitnet_ref.runtime.packed import PackedWeight, swap_bitlinears

ARCH = "bitnet"
QK = 256  # weights per TQ2_0 block (ggml's QK_K)
QS_BYTES = 64  # qs bytes per TQ2_0 block: two of our 32-byte, 128-weight blocks
D_ONE = np.array([1.0], dtype="<f2").view(np.uint8)  # the fp16 block scale 1.0: bytes 00 3c
EMB_TYPES = ("f16", "f32")
FORMAT_VERSION = 1  # bitnet_ref.format_version: what read_gguf understands
HARMLESS_ABLATIONS = {"const-wd"}
INSTALL_HINT = 'pip install "bitnet_ref[gguf]" (in a checkout: pip install -e ".[gguf]")'

PROJ = {
    "attn.q_proj": "attn_q",
    "attn.k_proj": "attn_k",
    "attn.v_proj": "attn_v",
    "attn.o_proj": "attn_output",
    "ffn.gate_proj": "ffn_gate",
    "ffn.up_proj": "ffn_up",
    "ffn.down_proj": "ffn_down",
}
NORMS = {
    "attn_norm": "attn_norm",
    "attn.sub_norm": "attn_sub_norm",
    "ffn_norm": "ffn_norm",
    "ffn.sub_norm": "ffn_sub_norm",
}


def gguf_module():
    """The ``gguf`` package, or a one-line FormatError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise FormatError(f"GGUF needs the gguf package, which is not installed; {INSTALL_HINT}") from None
    return gguf


# ---------------------------------------------------------------------------------------------- names


def linear_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our BitLinear module name, GGUF tensor name without ``.weight``) of every linear."""
    return [(f"blocks.{i}.{ours}", f"blk.{i}.{theirs}") for i in range(cfg.n_layers) for ours, theirs in PROJ.items()]


def float_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our state_dict name, GGUF tensor name) of every float tensor of the official layout (the head is tied)."""
    names = [("tok_emb.weight", "token_embd.weight")]
    names += [
        (f"blocks.{i}.{ours}.weight", f"blk.{i}.{theirs}.weight")
        for i in range(cfg.n_layers)
        for ours, theirs in NORMS.items()
    ]
    return names + [("norm.weight", "output_norm.weight")]


# ---------------------------------------------------------------------------------------------- packing


def pack_codes(codes) -> np.ndarray:
    """Ternary codes (N, K) int8 -> our 2-bit packed buffer (cpp/ternary.h; kernels.pack_ternary's bytes), numpy
    only, so exporting needs no C++ extension. K is padded with zeros (code 1) to a multiple of 128."""
    c = np.asarray(codes, dtype=np.int8)
    n, k = c.shape
    kp = -(-k // 128) * 128
    u = np.ones((n, kp), dtype=np.uint8)
    u[:, :k] = c + 1  # code = w + 1
    u = u.reshape(n, kp // 128, 4, 32)  # field f of byte j holds element 32 f + j of its block
    return (u[:, :, 0] | u[:, :, 1] << 2 | u[:, :, 2] << 4 | u[:, :, 3] << 6).reshape(-1)


def unpack_codes(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """The inverse of pack_codes: int8 (N, K)."""
    kp = -(-k // 128) * 128
    b = np.asarray(packed, dtype=np.uint8).reshape(n, kp // 128, 1, 32)
    u = (b >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3  # (N, blocks, 4, 32)
    if (u == 3).any():
        raise FormatError("packed ternary data holds code 3, which is not a ternary weight")
    return (u.reshape(n, kp).astype(np.int8) - 1)[:, :k]


def tq2_0_rows(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Our packed (N, K) buffer as TQ2_0 blocks with d = 1: uint8 (N, K / 256 * 66). K must be a multiple of 256."""
    qs = np.asarray(packed, dtype=np.uint8).reshape(n * k // QK, QS_BYTES)
    return np.concatenate([qs, np.broadcast_to(D_ONE, (qs.shape[0], 2))], axis=1).reshape(n, k // QK * 66)


def packed_from_tq2_0(rows: np.ndarray, n: int, k: int, name: str) -> np.ndarray:
    """The inverse of tq2_0_rows; refuses a block scale other than 1 (not this exporter's file)."""
    blocks = np.asarray(rows, dtype=np.uint8).reshape(n * k // QK, QS_BYTES + 2)
    if not (blocks[:, QS_BYTES:] == D_ONE).all():
        raise FormatError(
            f"{name}: TQ2_0 block scales other than 1; read_gguf reads only files bitnet_ref wrote "
            "(gguf_model.read_bitnet_gguf reads any)"
        )
    return np.ascontiguousarray(blocks[:, :QS_BYTES]).reshape(-1)


# ---------------------------------------------------------------------------------------------- writing


def check_representable(cfg: ModelConfig, approximate: bool = False) -> list[str]:
    """Raise FormatError (one line) for a model llama.cpp's bitnet graph cannot compute; else the notes to print
    (approximations taken because ``approximate`` allowed them)."""
    ablations = [a for a in cfg.ablate if a not in HARMLESS_ABLATIONS]
    if ablations:
        raise FormatError(
            f"the model was trained with ablation {', '.join(ablations)}, whose forward is not "
            "BitNet's; llama.cpp would compute something else"
        )
    if cfg.quant != "ternary":
        raise FormatError(
            f"a quant={cfg.quant!r} model has no ternary weights; the GGUF export writes ternary "
            "models (use --format hf for a float one)"
        )
    if cfg.ffn_act != "swiglu":
        raise FormatError(
            f"llama.cpp's bitnet graph computes a SiLU-gated FFN only, and this model's is "
            f"{cfg.ffn_act}; train with --ffn-act swiglu to export to GGUF"
        )
    if not cfg.tie_embeddings:
        raise FormatError(
            "llama.cpp's bitnet graph uses the token embedding as the output head, and this model's "
            "head is untied; train with --tie-embeddings to export to GGUF"
        )
    if cfg.layout != "official":
        raise FormatError("internal: write_gguf takes the official layout (export_gguf converts per-linear-norm)")
    narrow = sorted({w for w in (cfg.d_model, cfg.ffn_hidden) if w % QK})
    if narrow and not approximate:
        raise FormatError(
            f"TQ2_0 needs linear input widths that are multiples of {QK}, and this model has "
            f"{', '.join(map(str, narrow))}; pass --approximate to write those linears as F16 codes "
            "(llama.cpp then multiplies them with fp16 activations, not int8)"
        )
    if narrow:
        return [
            f"approximate: linears of input width {', '.join(map(str, narrow))} (not a multiple of {QK}) are "
            "F16 codes with an F32 scale; llama.cpp multiplies them with fp16 activations, not int8 ones"
        ]
    return []


def _byte_vocab(w, gguf) -> None:
    """The 256 byte tokens as a GPT-2 style byte-level BPE with no effective merges: token b is the character
    GPT-2 maps byte b to (hf.py's byte tokenizer, the same vocabulary), so llama.cpp's tokenizer turns text into our
    ids. llama.cpp needs a merges list and gguf-py writes no empty array: the one merge joins two 2-character
    symbols, which never exist when every symbol is one byte, so it never applies."""
    chars = byte_chars()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(chars)
    w.add_token_types([gguf.TokenType.NORMAL] * 256)
    w.add_token_merges([f"{chars[0] * 2} {chars[0] * 2}"])
    w.add_bos_token_id(0)  # llama.cpp wants ids for them; we train with none, so nothing is ever added
    w.add_eos_token_id(0)  # byte 0 (NUL), absent from text: llama.cpp's own generation loops stop there
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


def write_gguf(
    out,
    cfg: ModelConfig,
    packed: dict[str, PackedWeight],
    floats: dict[str, torch.Tensor],
    *,
    emb_type: str = "f16",
    byte_vocab: bool = False,
    approximate: bool = False,
    force: bool = False,
    name: str = "bitnet_ref",
    step=None,
) -> dict:
    """Write a GGUF for llama.cpp's bitnet architecture from a packed state, never touching fp32 latents.

    ``packed``: BitLinear module name -> PackedWeight (format "2"; ``packed.packed_state`` of the official layout,
    or random codes built packed); ``floats``: the official layout's float tensors by state_dict name (embedding,
    norms; see ``float_names``). ``byte_vocab``: write the 256-byte vocabulary (text models), else ``no_vocab``.
    Written to a temporary file beside ``out``, fsynced and renamed into place. Returns a summary dict.
    """
    gguf = gguf_module()
    if emb_type not in EMB_TYPES:
        raise FormatError(f"unknown embedding type {emb_type!r}; choose one of {', '.join(EMB_TYPES)}")
    notes = check_representable(cfg, approximate)
    out = Path(out)
    check_target(out, force)
    missing = [o for o, _ in linear_names(cfg) if o not in packed] + [o for o, _ in float_names(cfg) if o not in floats]
    if missing:
        raise FormatError(f"the model state has no {missing[0]!r} ({len(missing)} tensors missing)")

    w = gguf.GGUFWriter(None, ARCH)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if byte_vocab:
        _byte_vocab(w, gguf)
    else:
        w.add_tokenizer_model("no_vocab")
    w.add_uint32("bitnet_ref.format_version", FORMAT_VERSION)
    w.add_string("bitnet_ref.config", _config_json(cfg))
    w.add_string("bitnet_ref.step", str(step))
    if notes:
        w.add_string("bitnet_ref.approximate", "; ".join(notes))

    for ours, theirs in float_names(cfg):
        t = floats[ours].detach().to(torch.float32).cpu().numpy()
        w.add_tensor(theirs, t.astype(np.float16) if ours == "tok_emb.weight" and emb_type == "f16" else t)
    tq2, f16 = 0, 0
    for ours, theirs in linear_names(cfg):
        pw = packed[ours]
        if pw.format != "2":
            raise FormatError(f"{ours} is packed in format {pw.format!r}; GGUF export reads the 2-bit format")
        if pw.k % QK:
            w.add_tensor(theirs + ".weight", unpack_codes(pw.packed, pw.n, pw.k).astype(np.float16))
            f16 += 1
        else:
            w.add_tensor(
                theirs + ".weight", tq2_0_rows(pw.packed, pw.n, pw.k), raw_dtype=gguf.GGMLQuantizationType.TQ2_0
            )
            tq2 += 1
        w.add_tensor(theirs + ".scale", pw.beta.detach().to(torch.float32).reshape(1).numpy())
    atomic_write(
        out,
        lambda tmp: _write_gguf_to(w, tmp),
        to_path=True,
        before_replace=lambda: check_target(out, force=True) if out.exists() or out.is_symlink() else None,
    )
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "tq2_0": tq2,
        "f16_linears": f16,
        "emb_type": emb_type,
        "vocab": "bytes" if byte_vocab else "no_vocab",
        "step": step,
        "notes": notes,
    }


def _config_json(cfg: ModelConfig) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)


def check_target(out: Path, force: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise FormatError(f"{out} exists; pass --force to replace it")
    if out.is_symlink() or not out.is_file() or not _is_gguf(out):
        raise FormatError(f"{out} exists and is not a GGUF file; not replacing it, even with --force")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _write_gguf_to(w, path: Path) -> None:
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_gguf(
    ckpt: dict, out, *, emb_type: str = "f16", approximate: bool = False, force: bool = False, ids_only: bool = False
) -> dict:
    """Write a training checkpoint (as load_checkpoint returns it) as a GGUF: the codes and beta of
    ``quant.weight_quant``, exactly what our forward multiplies with, never re-quantized from dequantized floats.

    A run trained with a subword tokenizer (``data.tokenizer`` in the checkpoint: a tokenizer.json beside it) is
    refused: its BPE is not converted to GGUF vocabulary (yet). ``ids_only`` writes it anyway, as ``no_vocab``.
    """
    cfg = ModelConfig.from_dict(ckpt["config"])
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    if data.get("tokenizer") and not ids_only:
        raise FormatError(
            "the checkpoint was trained with a subword tokenizer (tokenizer.json), which the GGUF "
            "export does not convert to llama.cpp vocabulary; pass --ids-only to write token ids only"
        )
    notes = []
    if cfg.layout != "official":
        check_representable(ModelConfig.from_dict({**asdict(cfg), "layout": "official"}), approximate)
        cfg, state = official_state(cfg, ckpt["model"])  # FormatError unless the shared gains are equal
        notes.append("per-linear-norm layout: q/k/v and gate/up gains are equal, written as the shared block norms")
    else:
        state = dict(ckpt["model"])
    check_representable(cfg, approximate)
    packed = {}
    for ours, _ in linear_names(cfg):
        codes, beta = Q.weight_quant(state[ours + ".weight"].detach().to(torch.float32))  # (N, K) int8, () float32
        packed[ours] = PackedWeight(pack_codes(codes.numpy()), beta, *codes.shape)
    byte_vocab = (
        cfg.vocab_size == 256 and data.get("kind", "stdlib") in ("stdlib", "text") and not data.get("tokenizer")
    )
    if not byte_vocab:
        notes.append("no vocabulary (no_vocab): the checkpoint's tokens are not bytes; feed llama.cpp token ids")
    summary = write_gguf(
        out,
        cfg,
        packed,
        state,
        emb_type=emb_type,
        byte_vocab=byte_vocab,
        approximate=approximate,
        force=force,
        step=ckpt.get("step"),
    )
    if emb_type == "f16":
        notes.append(
            "token_embd (also llama.cpp's output head) is F16: logits differ from the fp32 checkpoint's by "
            "that rounding; --emb-type f32 keeps it exact"
        )
    summary["notes"] = notes + summary["notes"]
    return summary


# ---------------------------------------------------------------------------------------------- reading


def read_gguf(path, *, head: str = "fp32") -> tuple[ModelConfig, dict[str, PackedWeight], dict]:
    """(config, packed state, float tensors) of a GGUF that write_gguf wrote; FormatError for anything else.

    The TQ2_0 rows become our packed rows again (the bytes are the same); F16 codes of an approximate export are
    packed back. ``head="fp32"``: the embedding is read as float32 (an F16 one holds the values llama.cpp computes
    with). ``head="int8"``: ``floats["tok_emb.weight"]`` is instead the ``head.Int8Rows`` of those float32 values,
    made chunk by chunk from the file mapping, so the float32 matrix never exists (1.3 GB at the 2B-4T shape); the
    same rows as ``head.quantize_rows`` of the float32 embedding. ``packed_model`` makes it the int8 tied head.
    """
    if head not in HEAD_FORMATS:
        raise ValueError(f"head must be one of {HEAD_FORMATS}, not {head!r}")
    gguf = gguf_module()
    try:
        r = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise FormatError(
            f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:120] if str(e) else e})"
        ) from None
    fields = r.fields
    if "bitnet_ref.format_version" not in fields or fields["bitnet_ref.format_version"].contents() != FORMAT_VERSION:
        raise FormatError(
            f"{path}: not a GGUF written by bitnet_ref (format {FORMAT_VERSION}); read_gguf reads only those "
            "(gguf_model.read_bitnet_gguf reads any BitNet GGUF)"
        )
    cfg = ModelConfig.from_dict(json.loads(fields["bitnet_ref.config"].contents()))
    tensors = {t.name: t for t in r.tensors}
    wanted = [n for _, n in float_names(cfg)] + [n + s for _, n in linear_names(cfg) for s in (".weight", ".scale")]
    missing = [n for n in wanted if n not in tensors]
    if missing:
        raise FormatError(f"{path}: no tensor {missing[0]!r} ({len(missing)} missing); the file is damaged")
    floats = {}
    for ours, theirs in float_names(cfg):
        t = tensors[theirs]
        if ours == "tok_emb.weight" and head == "int8":
            row_bytes = int(t.n_bytes) // int(t.data.shape[0])
            floats[ours] = quantize_rows(
                t.data, done=lambda r0, r1, t=t, rb=row_bytes: _drop_pages(r, t, r0 * rb, r1 * rb)
            )
            continue
        floats[ours] = torch.from_numpy(np.array(t.data, dtype=np.float32))
        _drop_pages(r, t)
    packed = {}
    shapes = {
        "q_proj": (cfg.d_model, cfg.d_model),
        "k_proj": (cfg.kv_dim, cfg.d_model),
        "v_proj": (cfg.kv_dim, cfg.d_model),
        "o_proj": (cfg.d_model, cfg.d_model),
        "gate_proj": (cfg.ffn_hidden, cfg.d_model),
        "up_proj": (cfg.ffn_hidden, cfg.d_model),
        "down_proj": (cfg.d_model, cfg.ffn_hidden),
    }
    for ours, theirs in linear_names(cfg):
        n, k = shapes[ours.rsplit(".", 1)[1]]
        t = tensors[theirs + ".weight"]
        if t.tensor_type == gguf.GGMLQuantizationType.TQ2_0:
            buf = packed_from_tq2_0(t.data, n, k, t.name)
        else:
            codes = np.array(t.data, dtype=np.float32).reshape(n, k)
            if not np.isin(codes, (-1.0, 0.0, 1.0)).all():
                raise FormatError(f"{t.name}: F16 weights that are not ternary codes")
            buf = pack_codes(codes.astype(np.int8))
        beta = torch.tensor(float(np.asarray(tensors[theirs + ".scale"].data).reshape(-1)[0]), dtype=torch.float32)
        packed[ours] = PackedWeight(buf, beta, n, k)
        _drop_pages(r, t)
    return cfg, packed, floats


def _drop_pages(reader, t, lo: int = 0, hi: int | None = None) -> None:
    """Tell the kernel we are done with a copied tensor's pages of the file mapping (bytes lo:hi of its data, by
    default all), so they stop counting in this process's resident memory (the file stays in the page cache).
    Without it, reading a file maps all of it into the peak RSS on top of the copies."""
    mm = getattr(reader.data, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    hi = int(t.n_bytes) if hi is None else hi
    start = (t.data_offset + lo) // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(t.data_offset + hi, len(mm))
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def packed_model(
    cfg: ModelConfig, packed: dict[str, PackedWeight], floats: dict[str, torch.Tensor], *, threads: int | None = None
) -> Transformer:
    """A packed Transformer (PackedBitLinear layers, on the CPU, eval mode) built straight from a packed state:
    the model is made on the meta device, so no fp32 latent weight is ever allocated (2.4 B of them would be
    9.6 GB at the 2B-4T shape). ``floats`` holds the embedding and norms (the head is the tied embedding); an
    embedding given as ``head.Int8Rows`` (``read_gguf(head="int8")``) becomes the int8 tied head and embedding."""
    with torch.device("meta"):  # (the first meta-device build imports torch._dynamo: seconds, once)
        model = Transformer(cfg)
    swap_bitlinears(model, packed, threads=threads)  # the official layout's BitLinears hold no norm of their own
    names = float_names(cfg)
    if isinstance(floats["tok_emb.weight"], Int8Rows):  # swapped in before to_empty: no float32 (V, d) allocated
        rows = floats["tok_emb.weight"]
        model.tok_emb, model.head = Int8Embedding(rows), Int8Head(rows, threads)
        names = names[1:]
    model.to_empty(device="cpu")
    with torch.no_grad():
        for ours, _ in names:  # the tensors themselves, not copies: a 2B embedding is 1.3 GB
            owner, _, leaf = ours.rpartition(".")
            setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(floats[ours], requires_grad=False))
        if cfg.tie_embeddings and len(names) == len(float_names(cfg)):
            model.head.weight = model.tok_emb.weight  # to_empty gave the head its own (uninitialised) tensor
        cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
        model.rope_cos, model.rope_sin = cos, sin
    return model.eval()
