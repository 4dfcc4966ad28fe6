"""A decoding Transformer built straight from a file's ternary linears and float tensors, never from fp32 latents.

``assemble(cfg, specs, floats, act=...)``: the model skeleton is made on the meta device (no weight is allocated),
every BitLinear becomes a ``ModeLinear`` of its ``LinearSpec`` (runtime/act_modes.py), and the norms, embedding
and head are the file's tensors themselves (not copies). ``act``:

- ``"token"`` (default): every linear computes the BitNet recipe (int8 per token); where a linear has one scale
  this is the exact packed path, bit for bit what the training forward computes with these codes and scales;
- ``"file"``: every linear computes what the file's own runtime computes (``LinearSpec.act``: llama.cpp's
  per-block int8 on TQ weights, float on F16 weights, per token on I2_S), and a float head rounds its input to
  the stored embedding's type as ggml does: the reference a faithful runtime agrees with to float rounding;
- any of ``act_modes.ACT_MODES``, for every linear.

``head``: ``"fp32"`` (the file's values as float32) or ``"int8"`` (``floats`` holds ``Int8Rows``: the int8 head of
runtime/int8_head.py, for fast decoding at real sizes). Also ``ternary_reference``: the same model in plain torch
(``TorchTernaryLinear``: int8 codes, ``quant.act_quant``, a float32 matmul of the integer codes), independent of the
C++ kernel, for the decode probe's parity check of files that hold codes and no latents.
What this is not: a file reader (formats/) or the training model (model.Transformer with latents).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref import quant as Q
from bitnet_ref.model import BitLinear, ModelConfig, RMSNorm, Transformer, rope_tables
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.act_modes import ACT_MODES, FloatHead, LinearSpec, ModeLinear
from bitnet_ref.runtime.int8_head import Int8Embedding, Int8Head, Int8Rows
from bitnet_ref.runtime.packed import replace_submodule

ACT_CHOICES = ("token", "file", *ACT_MODES[1:])


@contextlib.contextmanager
def _no_weight_init():
    """Skip the N(0, 0.02) draws while a skeleton is built: on the meta device they draw nothing, but route through
    torch's reference ops, whose first use imports torch._dynamo (seconds). Every weight is replaced afterwards."""
    saved = nn.init.normal_
    nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        nn.init.normal_ = saved


def _skeleton(cfg: ModelConfig) -> Transformer:
    with torch.device("meta"), _no_weight_init():
        return Transformer(cfg)


def _norms_and_embeddings(model: Transformer, cfg: ModelConfig, floats: dict, head_dtype: str, act: str) -> None:
    """Norm gains, embedding and head from ``floats`` (our state_dict names), in place, no copies."""
    emb, head = floats["tok_emb.weight"], floats.get("head.weight", floats["tok_emb.weight"])
    if isinstance(emb, Int8Rows) or isinstance(head, Int8Rows):
        if not (isinstance(emb, Int8Rows) and isinstance(head, Int8Rows)):
            raise ValueError("an int8 head needs the embedding as int8 rows too (or a float head)")
        model.tok_emb, model.head = Int8Embedding(emb), Int8Head(head)
    else:
        model.tok_emb = nn.Embedding.from_pretrained(emb, freeze=True)
        model.head = FloatHead(head, head_dtype if act == "file" else "f32")
    for name, m in list(model.named_modules()):
        if isinstance(m, RMSNorm):
            norm = RMSNorm(m.weight.numel(), cfg.norm_eps)
            norm.weight = nn.Parameter(floats[name + ".weight"], requires_grad=False)
            replace_submodule(model, name, norm)
    cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin


def assemble(
    cfg: ModelConfig,
    specs: dict[str, LinearSpec],
    floats: dict,
    *,
    act: str = "token",
    head_dtype: str = "f32",
    threads: int | None = None,
) -> Transformer:
    """The decoding model of a file (see the module docstring). Needs the C++ extension."""
    if act not in ACT_CHOICES:
        raise ValueError(f"unknown activation mode {act!r}; choose one of {', '.join(ACT_CHOICES)}")
    if not kernels.available():
        raise RuntimeError(f"the packed model needs the C++ extension ({kernels.import_error()})")
    model = _skeleton(cfg)
    for name, _ in list(model.bitlinears()):
        norm = nn.Identity()  # the official layout's BitLinears hold no norm: the block's norms do
        replace_submodule(
            model, name, ModeLinear(specs[name], norm, act=None if act == "file" else act, threads=threads)
        )
    _norms_and_embeddings(model, cfg, floats, head_dtype, act)
    _check_materialised(model)
    return model.eval()


class TorchTernaryLinear(nn.Module):
    """The recipe in plain torch from int8 codes: act_quant, an exact float32 matmul of the integer codes, then
    ``* (gamma * beta)``: the value ``quant.fake_quant_linear`` computes, with no C++ kernel involved."""

    def __init__(self, codes: torch.Tensor, beta: torch.Tensor):
        super().__init__()
        self.codes, self.beta = codes, beta.to(torch.float32).reshape(())  # (N, K) int8
        self.norm = nn.Identity()

    def quantize_input(self, x):
        return Q.act_quant(x)

    def forward(self, x, act=None):
        q, gamma = Q.act_quant(x) if act is None else act
        with torch.autocast(q.device.type, enabled=False):
            acc = F.linear(q.to(gamma.dtype), self.codes.to(gamma.dtype))
        return (acc * (gamma * self.beta)).to(x.dtype)


def ternary_reference(cfg: ModelConfig, specs: dict[str, LinearSpec], floats: dict) -> Transformer:
    """The plain-torch reference of a file in the recipe's arithmetic (``TorchTernaryLinear``); every linear must
    have one scale (no per-block scales), and the float head is float32. Holds int8 codes: one byte a weight."""
    model = _skeleton(cfg)
    for name, _ in list(model.bitlinears()):
        s = specs[name]
        if s.block_scales is not None:
            raise ValueError(f"{name} has per-block scales; the recipe has one scale per tensor")
        codes = torch.from_numpy(kernels.unpack_ternary(s.weight.packed, s.weight.n, s.weight.k))
        replace_submodule(model, name, TorchTernaryLinear(codes, s.weight.beta))
    _norms_and_embeddings(model, cfg, floats, "f32", "token")
    _check_materialised(model)
    return model.eval()


def _check_materialised(model: Transformer) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left or any(isinstance(m, BitLinear) for m in model.modules()):
        raise AssertionError(f"assemble left meta tensors behind: {left[:3]}")
