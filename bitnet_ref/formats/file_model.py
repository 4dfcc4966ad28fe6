"""A BitNet model as a file holds it: ternary codes and scales, float tensors, tokenizer, and whose runtime reads it.

Every reader of other people's files (GGUF of llama.cpp or bitnet.cpp: gguf_model.py; a Hugging Face directory in
microsoft's packed layout: hf_read.read_file_model) returns a ``FileModel``, and so does ``from_checkpoint`` for
a bitnet_ref checkpoint, so decoding (decode/loader.py) and comparing (crosscheck/) treat them alike:
``FileModel.model(act=...)`` is the decoding Transformer (runtime/assemble.py), with no fp32 latent anywhere.

What this is not: a reader or a writer itself (the modules named above; gguf_write.write_bitnet_gguf writes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from bitnet_ref import quant as Q
from bitnet_ref.formats.hf import FormatError, official_state
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime.act_modes import LinearSpec
from bitnet_ref.runtime.assemble import assemble, ternary_reference
from bitnet_ref.runtime.packed import PackedWeight

HARMLESS_ABLATIONS = {"const-wd"}


@dataclass
class FileModel:
    cfg: ModelConfig  # official layout
    linears: dict[str, LinearSpec]  # BitLinear module name -> codes, scales, how the file's runtime multiplies
    floats: dict  # our state_dict names -> float32 tensors (``Int8Rows`` for the embedding/head with head="int8")
    source: str  # what was read, one line
    kind: str  # "gguf", "hf" or "bitnet_ref"
    runtime: str  # whose graph the file is written for: "llama.cpp", "bitnet.cpp", "transformers", "bitnet_ref"
    head_dtype: str = "f32"  # the stored head's type (f32, f16, bf16): what its runtime rounds the input to
    tokenizer: object = None  # hf.TextCodec, gguf_vocab's codecs, hf.IdCodec, or None (bytes / ids, as trained)
    tensor_types: dict = field(default_factory=dict)  # our name -> the stored type ("TQ2_0", "F16", "U8", ...)
    scale_types: dict = field(default_factory=dict)  # linear -> the precision its scale was stored in (f32, f16, bf16)
    hparams: dict = field(default_factory=dict)  # what the file says, as read (for comparisons)
    notes: list = field(default_factory=list)
    ckpt: dict | None = None  # a bitnet_ref checkpoint, when that is what was read

    def model(self, act: str = "token", threads: int | None = None) -> Transformer:
        """The decoding model (runtime/assemble.py); ``act="file"`` computes what the file's runtime computes."""
        return assemble(self.cfg, self.linears, self.floats, act=act, head_dtype=self.head_dtype, threads=threads)

    def reference(self) -> Transformer:
        """The plain-torch recipe model of these codes and scales (no C++ kernel): the decode probe's oracle."""
        return ternary_reference(self.cfg, self.linears, self.floats)

    def checkpoint(self) -> dict:
        """What the decode probe reads from a checkpoint (no weights: ``model`` is None; a file has no latents)."""
        if self.ckpt is not None:
            return self.ckpt
        return {"format": self.kind, "source": self.source, "config": asdict(self.cfg), "model": None, "step": None}

    @property
    def n_params(self) -> int:
        return self.cfg.num_params()


def from_checkpoint(ckpt: dict, source: str = "checkpoint") -> FileModel:
    """The FileModel of a bitnet_ref checkpoint: ``quant.weight_quant``'s codes and beta, the official layout's
    floats. FormatError for what no BitNet file can hold (an ablated forward, a float model, per-linear norms with
    different q/k/v or gate/up gains)."""
    from bitnet_ref.formats.ternary_blocks import pack_codes

    cfg = ModelConfig.from_dict(ckpt["config"])
    bad = [a for a in cfg.ablate if a not in HARMLESS_ABLATIONS]
    if bad:
        raise FormatError(f"{source} was trained with ablation {', '.join(bad)}; no BitNet file holds that forward")
    if cfg.quant != "ternary":
        raise FormatError(f"{source} is a quant={cfg.quant!r} model: it has no ternary codes")
    cfg, state = official_state(cfg, ckpt["model"])
    linears, types = {}, {}
    for name in _linear_names(cfg):
        w = state[name + ".weight"].detach().to(torch.float32)
        codes, beta = Q.weight_quant(w)  # (N, K) int8, () float32
        linears[name] = LinearSpec(PackedWeight(pack_codes(codes.numpy()), beta, *codes.shape))
        types[name] = "latent F32"
    floats = {k: v.detach().to(torch.float32) for k, v in state.items() if not k.endswith("_proj.weight")}
    if cfg.tie_embeddings:
        floats.pop("head.weight", None)
    return FileModel(cfg, linears, floats, source, "bitnet_ref", "bitnet_ref", tensor_types=types, ckpt=ckpt)


def _linear_names(cfg: ModelConfig) -> list[str]:
    projs = (
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "ffn.gate_proj",
        "ffn.up_proj",
        "ffn.down_proj",
    )
    return [f"blocks.{i}.{p}" for i in range(cfg.n_layers) for p in projs]
