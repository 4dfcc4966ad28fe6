"""A Hugging Face Llama-family model (``LlamaForCausalLM``) read as bitnet_ref weights: the full-precision start
of a ternary fine-tune (``python -m bitnet_ref.train --init-from DIR``).

``read(path)`` takes a directory with ``config.json`` and ``model.safetensors`` (or shards, or a weights_only
``pytorch_model.bin``; read through ``hf_read``) and gives its config in our terms and its weights under our
names, in the ``llama`` layout (``model.py``): that layout computes exactly what the Llama does, so its
full-precision logits are transformers' (tested against the real transformers). The trainer then moves it into
the run's layout (``layouts.relayout``), where the BitNet sub-norms a Llama lacks start at unit gain.

Names: ``model.embed_tokens`` = ``tok_emb``, ``model.layers.N.input_layernorm`` = ``blocks.N.attn_norm``,
``self_attn.{q,k,v,o}_proj`` = ``blocks.N.attn.*``, ``post_attention_layernorm`` = ``blocks.N.ffn_norm``,
``mlp.{gate,up,down}_proj`` = ``blocks.N.ffn.*`` (Llama's SiLU-gated MLP is our SwiGLU FFN), ``model.norm`` =
``norm``, ``lm_head`` = ``head`` (absent when ``tie_word_embeddings``). RoPE: both use the half-split
(rotate_half) convention, so q/k weights are copied as they are; grouped-query attention through
``num_key_value_heads``. ``tokenizer.json`` beside it, when present, is the run's tokenizer.

Refused in one ``FormatError`` line, before any tensor is read: another architecture, a quantized checkpoint,
biases, RoPE scaling, a head_dim that is not hidden_size / heads, an activation other than SiLU; then missing,
unexpected, misshapen or non-float tensors, and NaN/inf values. What this is not: a writer, or a reader of other
families' layouts (Qwen2's q/k/v biases, Gemma's offset norms and scaled embeddings compute something else).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from bitnet_ref.formats.hf import FLOAT_DTYPES, FormatError, config_value, name_pairs, plain_llama_block, read_json
from bitnet_ref.formats.hf_read import TensorSource, finite_float, tie_head, weight_files
from bitnet_ref.model import ModelConfig

ARCHS = ("LlamaForCausalLM",)
ACTS = ("silu", "swish")


@dataclass
class LlamaModel:
    """A Llama read into our names: ``cfg`` (layout llama, quant none) and float32 ``state``."""

    cfg: ModelConfig
    state: dict
    source: str  # what was read, one line
    tokenizer: Path | None  # its tokenizer.json, when it has one


def is_llama_config(d: object) -> bool:
    arch = d.get("architectures") if isinstance(d, dict) else None
    return isinstance(d, dict) and (d.get("model_type") == "llama" or any(a in ARCHS for a in arch or []))


def config_from_llama(d: dict) -> ModelConfig:
    """Our ModelConfig (layout llama, quant none) of a Llama config.json, checked before any weight is read."""
    if not is_llama_config(d):
        arch = d.get("architectures") if isinstance(d, dict) else None
        kind = d.get("model_type") if isinstance(d, dict) else None
        hint = "; a Hugging Face BitNet model is ternary already" if kind == "bitnet" else ""
        raise FormatError(
            f"config.json describes model_type {kind!r:.30} ({arch!r:.60}), not a Llama-family model ({ARCHS[0]}){hint}"
        )
    if d.get("quantization_config") is not None:
        qc = d["quantization_config"]
        method = qc.get("quant_method") if isinstance(qc, dict) else qc
        raise FormatError(
            f"config.json says the weights are quantized ({method!r:.30}); a warm start needs full precision"
        )
    heads, hidden, rope = plain_llama_block(d, "bitnet_ref's linears")
    act = config_value(d, "hidden_act", str, "silu")
    if act not in ACTS:
        raise FormatError(f"config.json hidden_act {act!r:.30}: a Llama's gated MLP maps onto SwiGLU (silu) only")
    kv = d.get("num_key_value_heads")
    try:
        return ModelConfig.from_dict(
            dict(
                vocab_size=config_value(d, "vocab_size", int),
                d_model=hidden,
                n_layers=config_value(d, "num_hidden_layers", int),
                n_heads=heads,
                n_kv_heads=heads if kv is None else kv,
                ffn_hidden=config_value(d, "intermediate_size", int),
                context=config_value(d, "max_position_embeddings", int, 2048),
                quant="none",
                ffn_act="swiglu",
                rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
                norm_eps=config_value(d, "rms_norm_eps", (int, float), 1e-6),
                tie_embeddings=config_value(d, "tie_word_embeddings", bool, False),
                layout="llama",
            )
        )
    except ValueError as e:
        raise FormatError(f"config.json: {e}") from None


def llama_pairs(cfg: ModelConfig) -> list[tuple[str, str, tuple]]:
    """(our name, Llama name, shape) of every tensor: BitNet's names without the sub-norms a Llama lacks."""
    return [p for p in name_pairs(cfg) if ".sub_norm." not in p[0]]


def read(path) -> LlamaModel:
    """Read a Llama-family directory; FormatError (one line) for anything that does not map exactly."""
    p = Path(path)
    if not p.is_dir():
        raise FormatError(f"{p}: a Hugging Face model is a directory with config.json and its weights")
    cfg = config_from_llama(read_json(p / "config.json", "model config"))
    pairs = llama_pairs(cfg)
    with contextlib.ExitStack() as stack:
        src = TensorSource(weight_files(p), stack)
        if src.ckpt is not None:
            raise FormatError(f"{p} holds a bitnet_ref checkpoint, not a Llama's weights: pass the ckpt.pt itself")
        _check(cfg, src, pairs)
        state = {}
        for ours, hf, _ in pairs:
            if hf not in src:
                continue  # a tied lm_head left out
            state[ours] = finite_float(src, hf)
    if cfg.tie_embeddings:
        tie_head(state)
    tok = p / "tokenizer.json"
    return LlamaModel(cfg, state, f"{p} (Hugging Face {ARCHS[0]})", tok if tok.is_file() else None)


def _check(cfg: ModelConfig, src: TensorSource, pairs) -> None:
    """Names, dtypes and shapes of every tensor, before any is loaded."""
    wanted = [hf for ours, hf, _ in pairs if not (ours == "head.weight" and cfg.tie_embeddings)]
    missing = [n for n in wanted if n not in src]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FormatError(f"tensor {missing[0]!r} is missing{more}: the weights do not match config.json")
    known = {hf for _, hf, _ in pairs}
    extra = [n for n in src.names() if n not in known and not n.endswith("rotary_emb.inv_freq")]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise FormatError(f"unexpected tensor {extra[0]!r:.100}{more}: not part of a Llama with this config.json")
    floats = tuple(FLOAT_DTYPES.values())
    for _, hf, shape in pairs:
        if hf not in src:
            continue
        if src.dtype(hf) not in floats:
            raise FormatError(f"{hf} has dtype {src.dtype(hf)}, expected float32, bfloat16 or float16")
        if src.shape(hf) != shape:
            raise FormatError(f"{hf} has shape {list(src.shape(hf))}, expected {list(shape)} from config.json")
