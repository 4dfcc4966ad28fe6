"""The Hugging Face BitNet format, both ways: a bitnet_ref model as a transformers ``BitNetForCausalLM`` directory,
and such a directory (or a plain state dict of its names) as a bitnet_ref Transformer.

A directory holds ``config.json`` (model_type "bitnet", its ``quantization_config``), ``model.safetensors`` (or
shards with ``model.safetensors.index.json``, or a ``weights_only`` ``.pt``/``.bin``), and for byte-level
models ``tokenizer.json`` + ``tokenizer_config.json`` (256 byte tokens, id = byte value). Two forms:

- **latent**: fp32 latent weights, ``{bitnet, autobitlinear, online}``: transformers quantizes on every forward,
  as our trainer does, and can train on;
- **packed**: ternary codes packed HF's way (``code + 1``, four rows a byte along dim 0, so out % 4 == 0) and
  ``weight_scale``: ``{bitnet, autobitlinear, offline}``, whose scale is beta. On import the other linear
  class, ``bitlinear``, is read too: its ``weight_scale`` is 1 / beta (it divides by it).

Export writes the codes and beta of ``quant.weight_quant``, never a re-quantized dequantized tensor. Import keeps
them too (``Imported.ternary``; the packed runtime uses them as they are), and gives the fake-quant Transformer
the latent ``quant.weight_latent`` finds for them (exact unless float32 cannot hold such a mean: ``inexact``).

Names (official layout; a per-linear-norm checkpoint exports only when its q/k/v and gate/up gains are equal):
``tok_emb`` = ``model.embed_tokens``, ``blocks.N.attn_norm`` = ``model.layers.N.input_layernorm``,
``blocks.N.attn.{q,k,v,o}_proj`` = ``model.layers.N.self_attn.*``, ``blocks.N.attn.sub_norm`` = ``attn_sub_norm``,
``blocks.N.ffn_norm`` = ``post_attention_layernorm``, ``blocks.N.ffn.{gate,up,down}_proj`` = ``mlp.*``,
``blocks.N.ffn.sub_norm`` = ``mlp.ffn_sub_norm``, ``norm`` = ``model.norm``, ``head`` = ``lm_head``.

What this is not: transformers (never imported here), a hub client, or a GGUF writer. The writing and the
command line are in ``export.py``; errors are ``FormatError``, one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bitnet_ref.checkpoint import CheckpointError
from bitnet_ref.model import ModelConfig, Transformer

ARCH = "BitNetForCausalLM"
PACKED_QC = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
LATENT_QC = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
ACT = {"relu2": "relu2", "swiglu": "silu"}  # ours -> hidden_act (HF's MLP is down(act(gate) * up))
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
MAX_JSON_BYTES = 16 << 20


class FormatError(CheckpointError):
    """A model file or directory that cannot be imported or exported; the message is one line."""


# ---------------------------------------------------------------------------------------------- names


def name_pairs(cfg: ModelConfig) -> list[tuple[str, str, tuple]]:
    """(our state_dict name, HF name, shape) of every tensor of the official layout; linears are (out, in)."""
    d, kv, h, V = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden, cfg.vocab_size
    pairs = [("tok_emb.weight", "model.embed_tokens.weight", (V, d))]
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"model.layers.{i}."
        pairs += [(o + "attn_norm.weight", t + "input_layernorm.weight", (d,))]
        pairs += [
            (f"{o}attn.{p}.weight", f"{t}self_attn.{p}.weight", s)
            for p, s in (("q_proj", (d, d)), ("k_proj", (kv, d)), ("v_proj", (kv, d)), ("o_proj", (d, d)))
        ]
        pairs += [
            (o + "attn.sub_norm.weight", t + "self_attn.attn_sub_norm.weight", (d,)),
            (o + "ffn_norm.weight", t + "post_attention_layernorm.weight", (d,)),
        ]
        pairs += [
            (f"{o}ffn.{p}.weight", f"{t}mlp.{p}.weight", s)
            for p, s in (("gate_proj", (h, d)), ("up_proj", (h, d)), ("down_proj", (d, h)))
        ]
        pairs += [(o + "ffn.sub_norm.weight", t + "mlp.ffn_sub_norm.weight", (h,))]
    return pairs + [("norm.weight", "model.norm.weight", (d,)), ("head.weight", "lm_head.weight", (V, d))]


def is_linear(ours: str) -> bool:
    return ours.endswith("_proj.weight")


def official_state(cfg: ModelConfig, state: dict) -> tuple[ModelConfig, dict]:
    """The same model in the official layout: per-linear-norm gains become the shared block norms when the
    layers that read one input (q/k/v, gate/up) carry equal gains; else FormatError (not representable)."""
    if cfg.layout == "official":
        return cfg, dict(state)
    if cfg.layout == "llama":
        raise FormatError(
            "the llama layout has no attn_sub_norm / ffn_sub_norm, which the BitNet block has; a model trained "
            "without them has no exact BitNet export"
        )
    out = {k: v for k, v in state.items() if not k.endswith("_proj.norm.weight")}
    for i in range(cfg.n_layers):
        for part, projs, target in (
            ("attn", ("q_proj", "k_proj", "v_proj"), "attn_norm"),
            ("attn", ("o_proj",), "attn.sub_norm"),
            ("ffn", ("gate_proj", "up_proj"), "ffn_norm"),
            ("ffn", ("down_proj",), "ffn.sub_norm"),
        ):
            gains = [state[f"blocks.{i}.{part}.{p}.norm.weight"] for p in projs]
            if any(not torch.equal(gains[0], g) for g in gains[1:]):
                raise FormatError(
                    f"layer {i}: the RMSNorm gains of {'/'.join(projs)} differ, and the BitNet block "
                    "has one shared norm there; this per-linear-norm checkpoint has no exact export"
                )
            out[f"blocks.{i}.{target}.weight"] = gains[0]
    return ModelConfig.from_dict({**asdict(cfg), "layout": "official"}), out


# ---------------------------------------------------------------------------------------------- config


def hf_config(cfg: ModelConfig, form: str) -> dict:
    """config.json for a BitNetForCausalLM of ``cfg`` in ``form`` ("latent" or "packed")."""
    c = {
        "architectures": [ARCH],
        "model_type": "bitnet",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "hidden_act": ACT[cfg.ffn_act],
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        # rope_theta for transformers 4.x, rope_parameters for 5.x (which also reads the former)
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
        # our vocabularies have no BOS/EOS token; transformers' defaults (128000, 128001) lie outside them
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if cfg.quant == "ternary":
        c["quantization_config"] = dict(PACKED_QC if form == "packed" else LATENT_QC)
    return c


def config_value(d: dict, key: str, kind, default=...):
    """config.json's ``key``, of type ``kind`` (a bool is no int), or ``default``; FormatError when missing or wrong."""
    v = d.get(key, default)
    if v is ...:
        raise FormatError(f"config.json has no {key!r}")
    if not (isinstance(v, bool) if kind is bool else isinstance(v, kind) and not isinstance(v, bool)):
        raise FormatError(f"config.json {key!r} must be {getattr(kind, '__name__', 'a number')}, got {v!r:.60}")
    return v


def plain_llama_block(d: dict, ours: str) -> tuple[int, int, dict]:
    """What a LLaMA-shaped config.json must say for ``ours`` (the block that reads it) to hold it: head_dim =
    hidden / heads, no biases, plain RoPE. Returns (heads, hidden, the RoPE parameters: rope_theta may be there)."""
    heads, hidden = config_value(d, "num_attention_heads", int), config_value(d, "hidden_size", int)
    if d.get("head_dim") not in (None, hidden // max(heads, 1)):
        raise FormatError(f"config.json head_dim {d.get('head_dim')!r:.20} is not hidden_size / num_attention_heads")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise FormatError(f"config.json asks for biases; {ours} has none")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise FormatError(f"config.json asks for RoPE scaling {rope!r:.80}; only plain RoPE is supported")
    return heads, hidden, rope


def _linear_kind(d: dict) -> str:
    """How the linears are stored: "none" (no quantization_config: transformers runs them in float), "online"
    (latent weights), "autobitlinear" (codes + weight_scale = beta) or "bitlinear" (codes + weight_scale = 1/beta)."""
    qc = d.get("quantization_config")
    if qc is None:
        return "none"
    if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
        raise FormatError(
            f"config.json quantization_config is not BitNet's (quant_method "
            f"{qc.get('quant_method') if isinstance(qc, dict) else qc!r:.40})"
        )
    if qc.get("use_rms_norm"):
        raise FormatError(
            "quantization_config use_rms_norm adds a second RMSNorm inside every linear, which "
            "bitnet_ref's block does not have"
        )
    skip = qc.get("modules_to_not_convert") or []
    if not isinstance(skip, list) or any(m != "lm_head" for m in skip):
        raise FormatError(
            f"quantization_config modules_to_not_convert {skip!r:.60}: bitnet_ref quantizes every linear but lm_head"
        )
    lc, mode = qc.get("linear_class", "bitlinear"), qc.get("quantization_mode", "offline")
    if lc not in ("bitlinear", "autobitlinear") or mode not in ("online", "offline"):
        raise FormatError(f"quantization_config linear_class {lc!r:.30} / quantization_mode {mode!r:.30} is unknown")
    return "online" if (lc, mode) == ("autobitlinear", "online") else lc


def config_from_hf(d: dict) -> tuple[ModelConfig, str]:
    """(ModelConfig, linear kind) of a config.json, checked (and size-capped) before any weight is read."""
    if not isinstance(d, dict):
        raise FormatError("config.json is not a JSON object")
    arch = d.get("architectures") or []
    if d.get("model_type") != "bitnet" and ARCH not in (arch if isinstance(arch, list) else []):
        raise FormatError(
            f"config.json describes model_type {d.get('model_type')!r:.30} ({arch!r:.60}), not "
            f"a Hugging Face BitNet model (model_type 'bitnet', {ARCH})"
        )
    heads, hidden, rope = plain_llama_block(d, "the BitNet block")
    theta = rope.get("rope_theta", d.get("rope_theta", 500000.0))  # transformers' BitNet default
    act = config_value(d, "hidden_act", str, "relu2")
    acts = {"relu2": "relu2", "silu": "swiglu", "swish": "swiglu"}
    if act not in acts:
        raise FormatError(f"config.json hidden_act {act!r:.30}: bitnet_ref has relu2 and silu (SwiGLU) only")
    kv = d.get("num_key_value_heads", 5)  # transformers' BitNetConfig default; null means num_attention_heads
    kind = _linear_kind(d)
    try:
        cfg = ModelConfig.from_dict(
            dict(
                vocab_size=config_value(d, "vocab_size", int),
                d_model=hidden,
                n_layers=config_value(d, "num_hidden_layers", int),
                n_heads=heads,
                n_kv_heads=heads if kv is None else kv,
                ffn_hidden=config_value(d, "intermediate_size", int),
                context=config_value(d, "max_position_embeddings", int, 2048),
                quant="none" if kind == "none" else "ternary",
                ffn_act=acts[act],
                rope_theta=theta,
                norm_eps=config_value(d, "rms_norm_eps", (int, float), 1e-5),
                tie_embeddings=config_value(d, "tie_word_embeddings", bool, False),
                layout="official",
            )
        )
    except ValueError as e:
        raise FormatError(f"config.json: {e}") from None
    return cfg, kind


# ---------------------------------------------------------------------------------------------- packing


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """HF's packing (integrations/bitnet.py pack_weights): codes (N, K) int8, N % 4 == 0 -> (N/4, K) uint8,
    row i*(N/4)+p in byte-row p at bits 2i..2i+1, stored as code + 1."""
    n = codes.shape[0]
    if n % 4:
        raise FormatError(f"{n} output rows: HF packs four rows a byte, so out_features must be a multiple of 4")
    u = (codes.to(torch.int16) + 1).to(torch.uint8).reshape(4, n // 4, -1)  # (4, N/4, K)
    return u[0] | (u[1] << 2) | (u[2] << 4) | (u[3] << 6)


def unpack_rows(packed: torch.Tensor, name: str = "weight") -> torch.Tensor:
    """Inverse of pack_rows: (R, K) uint8 -> (4R, K) int8 codes in {-1, 0, 1}."""
    fields = torch.cat([(packed >> (2 * i)) & 3 for i in range(4)])  # (4R, K) in 0..3
    if bool((fields == 3).any()):
        raise FormatError(f"{name} holds the 2-bit value 3, which is no ternary code (stored as code + 1 in 0..2)")
    return fields.to(torch.int8) - 1


# ---------------------------------------------------------------------------------------------- tokenizer


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, the one the tokenizers ByteLevel pieces use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b], extra = chr(256 + extra), extra + 1
    return [out[b] for b in range(256)]


def byte_tokenizer():
    """A tokenizers.Tokenizer whose ids are the UTF-8 bytes of the text (256 tokens, no merges, no specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={c: b for b, c in enumerate(byte_chars())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tokenizer_config(context: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
    }


class TextCodec:
    """Text <-> token ids through a tokenizer.json (the ``tokenizers`` library), for prompts and samples."""

    def __init__(self, tok, source: str):
        self.tok, self.source = tok, source

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(t) for t in ids], skip_special_tokens=False)


class IdCodec:
    """No tokenizer: prompts are space-separated token ids and samples are shown as ids."""

    source = "token ids (no tokenizer.json)"

    def encode(self, text: str) -> list[int]:
        try:
            return [int(t) for t in text.split()]
        except ValueError:
            raise ValueError("this model has no tokenizer.json: give the prompt as space-separated token ids") from None

    def decode(self, ids) -> str:
        return " ".join(str(int(t)) for t in ids)


def read_tokenizer(path: Path, vocab_size: int):
    """The TextCodec of ``path`` (a tokenizer.json), checked against the model's vocabulary."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exceptions with multi-line messages
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise FormatError(f"{path} does not parse as a tokenizers tokenizer.json ({first})") from None
    n = tok.get_vocab_size(with_added_tokens=True)
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if n > vocab_size or top >= vocab_size:
        raise FormatError(
            f"{path} has {max(n, top + 1)} tokens but the model's vocabulary (embedding rows) is {vocab_size}"
        )
    return TextCodec(tok, str(path))


# ---------------------------------------------------------------------------------------------- JSON


def read_json(path: Path, what: str) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise FormatError(f"{path} is over {MAX_JSON_BYTES >> 20} MB: not a {what}")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path.parent} has no {path.name}") from None
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON ({str(e).splitlines()[0][:120]})") from None


def finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Imported:
    """A model read from a Hugging Face BitNet directory (or a bitnet_ref checkpoint), ready for build_model."""

    cfg: ModelConfig
    state: dict  # our state_dict names -> float32 tensors
    source: str  # what was read, one line
    form: str  # "latent", "packed", "float" (no quantization_config) or "bitnet_ref"
    ternary: dict | None = None  # packed sources: BitLinear name -> (codes int8 (N, K), beta float32 ())
    inexact: list = field(default_factory=list)  # BitLinears whose latent's beta is not the stored one
    tokenizer: object = None  # TextCodec, IdCodec, or None (a bitnet_ref checkpoint: bytes or ids as before)
    ckpt: dict | None = None  # a bitnet_ref checkpoint as read, else None

    def checkpoint(self) -> dict:
        """The dict checkpoint.build_model and the decode probe read: config, model weights, no training state."""
        if self.ckpt is not None:
            return self.ckpt
        return {"format": "hf", "source": self.source, "config": asdict(self.cfg), "model": self.state, "step": None}

    def model(self) -> Transformer:
        m = Transformer(self.cfg)
        m.load_state_dict(self.state)
        return m.eval()
