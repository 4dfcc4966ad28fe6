"""A small LLaMA-style decoder built from BitLinear layers: the BitNet b1.58 training-time model.

Architecture, three layouts (``ModelConfig.layout``):

- ``official`` (default): the block of BitNet b1.58 2B-4T and Hugging Face's BitNetForCausalLM. Four RMSNorms
  per block: ``attn_norm`` (input_layernorm) shared by q/k/v, ``attn.sub_norm`` (attn_sub_norm) before o_proj,
  ``ffn_norm`` (post_attention_layernorm) shared by gate/up, ``ffn.sub_norm`` (ffn_sub_norm) before
  down_proj. The BitLinears hold no norm; q/k/v (and gate/up) read one normalised input, which is quantized
  to int8 once and shared.
- ``per-linear-norm``: the FAQ's reading ("remove RMSNorm before attention and SwiGLU because BitLinear has
  built-in RMSNorm"): every BitLinear normalises its own input with its own gain right before the int8
  activation quantizer, seven per block. Checkpoints written before layouts existed use it. It is also the
  "extra RMSNorm before each linear" variant of the full-precision-to-ternary studies (arXiv 2505.08823).
- ``llama``: the Llama block, two RMSNorms (input_layernorm, post_attention_layernorm) and no sub-norms, so
  o_proj and down_proj quantize an un-normalised input. A Llama-family model maps onto it exactly (its
  full-precision logits are the Llama's); it is what quantizing such a model "as it stands" trains.

Either way q/k/v and gate/up are separate BitLinears, each with its own weight scale, as the official
converter does; grouped-query attention with ``n_kv_heads``. Embeddings, the final RMSNorm and the output
head stay full precision (untied by default). No biases anywhere; RoPE (half-split, LLaMA/HF convention,
``rope_theta``); gated FFN with ReLU^2 (BitNet b1.58 2B4T) or SwiGLU.

quant="none" is the same architecture with the quantizers off (RMSNorm + plain linear): the FP baseline.
Between the two, ``Transformer.set_quant_strength(w, a)`` blends the quantization in, x + s * (quant(x) - x) with
the straight-through estimator (the quantization warmup of a full-precision-to-ternary fine-tune); at strength
1 the forward is the recipe's, bit for bit, at 0 the full-precision one.
Init: every linear and embedding weight ~ N(0, 0.02), norms at 1 (the GPT-2/nanoGPT convention; absmean
quantization is scale invariant, so the init std only sets beta, i.e. the output scale).

This is the fake-quant training model; the packed int8 x ternary runtime path lives elsewhere.
"""

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import quant as Q

ABLATIONS = {
    "no-ste": "weights quantized with no straight-through estimator, so latent weights get no gradient "
    "(research notes §3 #1: kyegomez/BitNet sign/round without STE)",
    "clamp-ste": "STE on round() then a plain clamp, so clipped weights lose their gradient "
    "(§3 #1b: pytorch/ao PR #4806, pytorch/pytorch #184574)",
    "quant-head": "ternary embedding and output head, head input int8 too "
    "(§3 #4: kyegomez replace_hf.py; HF keeps lm_head FP 'for numerical stability')",
    "no-subln": "no RMSNorm inside BitLinear: no pre-norms and no SubLN before the activation quant "
    "(§3 #5: b1 paper §2.1, HF blog PPL 6.3 vs 5.9)",
    "no-dequant": "F.linear on raw int8/ternary codes, never multiplying gamma*beta back "
    "(§3 #2: Mrw33554432/bitLinear-phi-1.5, 7.5 vs 2.5 loss)",
    "const-wd": "weight decay held at its peak for the whole run, schedule only "
    "(§3 #8: FAQ rationale, parameter-golf #367 plateau)",
}
_NEEDS_QUANT = ("no-ste", "clamp-ste", "no-dequant")  # meaningless with quant="none": refused, not ignored

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, ffn_hidden=192, context=64),
    "default": dict(d_model=256, n_layers=4, n_heads=4, ffn_hidden=704, context=128),
    "wide": dict(d_model=2048, n_layers=4, n_heads=16, ffn_hidden=5504, context=256),
    # the shapes of two public models, for benchmarks (random init; their vocabularies need their tokenizers)
    "bitnet-b1.58-2b-4t": dict(
        d_model=2560,
        n_layers=30,
        n_heads=20,
        n_kv_heads=5,
        ffn_hidden=6912,
        context=4096,
        vocab_size=128256,
        rope_theta=500000.0,
        ffn_act="relu2",
        tie_embeddings=True,
    ),
    "bitnet-b1.58-large": dict(
        d_model=1536, n_layers=24, n_heads=16, ffn_hidden=4096, context=2048, vocab_size=32002, ffn_act="swiglu"
    ),
}
LAYOUTS = ("official", "per-linear-norm", "llama")
FULL_STRENGTH = (1.0, 1.0)  # quantization strength (weights, activations) of the recipe's forward

# Hard caps, checked before anything is allocated (a hostile checkpoint config must not trigger a huge alloc).
MAX_PARAMS = 4_000_000_000  # admits bitnet-b1.58-2B-4T (2.4 B); 16 GB of fp32 latents
MAX_D_MODEL = 16384
MAX_VOCAB = 1 << 20
MAX_LAYERS = 1024
MAX_CONTEXT = 1 << 17
MAX_FFN = 1 << 17
MAX_ROPE = 1 << 24  # context * head_dim: the RoPE tables are allocated at construction


@dataclass
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = n_heads
    ffn_hidden: int = 0  # 0 = derived: 8/3 * d_model rounded up to a multiple of 64
    context: int = 128  # max sequence length (RoPE tables, KV cache)
    quant: str = "ternary"  # "ternary" | "none"
    ffn_act: str = "relu2"  # "relu2" | "swiglu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    ablate: list = field(default_factory=list)  # names in ABLATIONS
    # "official": the 2B-4T block, four RMSNorms (input_layernorm shared by q/k/v, attn_sub_norm before o_proj,
    # post_attention_layernorm shared by gate/up, ffn_sub_norm before down_proj); "per-linear-norm": every
    # BitLinear normalises its own input with its own gain (seven per block; this project's first layout);
    # "llama": the official layout without the two sub-norms (a Llama-family block, two norms)
    layout: str = "official"

    def __post_init__(self):
        if self.ffn_hidden == 0 and isinstance(self.d_model, int) and self.d_model > 0:
            self.ffn_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)
        if self.n_kv_heads == 0 and isinstance(self.n_heads, int):
            self.n_kv_heads = self.n_heads
        self.ablate = list(self.ablate)
        self.validate()

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a plain dict (e.g. a checkpoint's), refusing unknown keys and wrong types.

        A dict without ``layout`` was written before layouts existed: it describes the per-linear-norm layout.
        """
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        d = {"layout": "per-linear-norm", **d}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields), key=repr)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(repr(k)[:40] for k in unknown)}")
        kw = {}
        for k, v in d.items():
            kind: Any = fields[k].type  # int | float | str | bool | list
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if kind is list and isinstance(v, tuple):
                v = list(v)
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise ValueError(f"model config {k} must be {kind.__name__}, got {type(v).__name__}")
            kw[k] = v
        return cls(**kw)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({"layout": "official", **PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def num_params(self) -> int:
        d, h, V, L = self.d_model, self.ffn_hidden, self.vocab_size, self.n_layers
        linears = 2 * d * d + 2 * d * self.kv_dim + 3 * d * h
        norms = {"per-linear-norm": 6 * d + h, "official": 3 * d + h, "llama": 2 * d}[self.layout]  # 7, 4 or 2
        return V * d * (1 if self.tie_embeddings else 2) + L * (linears + norms) + d

    def validate(self):
        def bad(msg):
            raise ValueError(f"model config: {msg}")

        for k, lo, hi in [
            ("vocab_size", 2, MAX_VOCAB),
            ("d_model", 2, MAX_D_MODEL),
            ("n_layers", 1, MAX_LAYERS),
            ("n_heads", 1, MAX_D_MODEL),
            ("ffn_hidden", 1, MAX_FFN),
            ("context", 1, MAX_CONTEXT),
        ]:
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                bad(f"{k} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.d_model % self.n_heads:
            bad(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (
            not isinstance(self.n_kv_heads, int)
            or isinstance(self.n_kv_heads, bool)
            or self.n_kv_heads < 1
            or self.n_heads % self.n_kv_heads
        ):
            bad(f"n_kv_heads must divide n_heads {self.n_heads}, got {self.n_kv_heads!r}")
        if self.layout not in LAYOUTS:
            bad(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.head_dim % 2:
            bad(f"head_dim {self.head_dim} must be even for RoPE")
        if self.context * self.head_dim > MAX_ROPE:
            bad(f"context * head_dim = {self.context * self.head_dim:,} is over the {MAX_ROPE:,} limit")
        if self.quant not in ("ternary", "none"):
            bad(f"quant must be 'ternary' or 'none', got {self.quant!r}")
        if self.ffn_act not in ("relu2", "swiglu"):
            bad(f"ffn_act must be 'relu2' or 'swiglu', got {self.ffn_act!r}")
        for k in ("rope_theta", "norm_eps"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                bad(f"{k} must be a positive finite number, got {v!r}")
        if self.norm_eps >= 1:
            bad(f"norm_eps must be below 1, got {self.norm_eps}")
        if not isinstance(self.tie_embeddings, bool):
            bad(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        for a in self.ablate:
            if not isinstance(a, str) or a not in ABLATIONS:
                bad(f"unknown ablation {a!r}; choose from {', '.join(ABLATIONS)}")
        if len(set(self.ablate)) != len(self.ablate):
            bad(f"duplicate ablation in {self.ablate}")
        if "no-ste" in self.ablate and "clamp-ste" in self.ablate:
            bad("ablations no-ste and clamp-ste are mutually exclusive")
        if self.quant == "none" and any(a in _NEEDS_QUANT for a in self.ablate):
            bad(f"ablations {', '.join(_NEEDS_QUANT)} change the quantizer and have no effect with quant='none'")
        if self.num_params() > MAX_PARAMS:
            bad(f"{self.num_params():,} parameters is over the {MAX_PARAMS:,} limit")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


class BitLinear(nn.Module):
    """Drop-in for nn.Linear(in, out, bias=False): [RMSNorm] -> int8 act fake-quant -> ternary weight fake-quant.

    Holds fp32 latent weights; quantizes only inside forward and keeps no state across calls. The reference
    forward is `quant.fake_quant_linear`: the FAQ's value and STE gradients, with the matmul done on the
    integer codes so the packed runtime path can reproduce it exactly. ``norm=True`` gives the layer its own
    RMSNorm (the per-linear-norm layout); in the official layout the block normalises outside and several
    BitLinears that read one input can share its quantization (``quantize_input``, then ``forward(x, act)``).
    ``strength`` (weights, activations), set through ``Transformer.set_quant_strength``, blends the quantization in
    (``quant.blended_linear``); at (1, 1), the default, the forward is the reference one above.
    """

    def __init__(self, in_features, out_features, *, quant="ternary", ablate=(), eps=1e-5, norm=True):
        super().__init__()
        self.in_features, self.out_features, self.quant = in_features, out_features, quant
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # (out, in)
        nn.init.normal_(self.weight, std=0.02)
        self.norm = RMSNorm(in_features, eps) if norm and "no-subln" not in ablate else nn.Identity()
        self.dequant = "no-dequant" not in ablate
        self.wq = (
            Q.weight_fake_quant_no_ste
            if "no-ste" in ablate
            else Q.weight_fake_quant_clamp_ste
            if "clamp-ste" in ablate
            else None
        )
        self.strength = FULL_STRENGTH  # plain floats, not state: the trainer sets them every step

    def quantize_input(self, x):
        """The int8 codes and scale of x (after this layer's norm), to share among layers reading the same x;
        None where this layer would not use them (full precision, a blended strength, the ablations)."""
        if self.quant == "none" or not self.dequant or self.wq is not None or self.strength != FULL_STRENGTH:
            return None
        return Q.act_quant(self.norm(x))

    def forward(self, x, act=None):
        x = self.norm(x)
        if self.quant == "none":
            return F.linear(x, self.weight)
        if self.strength != FULL_STRENGTH:
            return Q.blended_linear(x, self.weight, *self.strength)
        if not self.dequant:
            return F.linear(Q.act_codes_ste(x), Q.weight_codes_ste(self.weight))
        if self.wq is not None:
            # broken-STE ablations: the reference forward value (so packed decoding matches it bit for bit) plus
            # a term that is exactly zero in value and carries the ablation's (broken) latent-weight gradient
            y = Q.fake_quant_linear(x, self.weight.detach())
            w_hat = self.wq(self.weight)
            if w_hat.requires_grad:
                y = y + F.linear(Q.act_fake_quant(x).detach(), (w_hat - w_hat.detach()).to(x.dtype))
            return y
        return Q.fake_quant_linear(x, self.weight, act)  # = F.linear(act_fake_quant(x), weight_fake_quant(w))

    @torch.no_grad()
    def ternary_state(self):
        """(codes int8 (out, in), beta float) of the current latent weight."""
        codes, beta = Q.weight_quant(self.weight)
        return codes, float(beta)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, quant={self.quant}"


def rope_tables(head_dim: int, context: int, theta: float):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    ang = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)  # (T, hd/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, hd)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):  # x (B, H, T, hd), cos/sin (T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Per-layer keys/values for incremental decoding; `pos` is the number of positions already filled."""

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype, device):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch, self.max_len, self.pos = batch, max_len, 0


def _norm(cfg: "ModelConfig", dim: int, *, sub: bool = False) -> nn.Module:
    """A block-level RMSNorm (Identity in the per-linear layout, for a sub-norm in the llama layout, and under
    no-subln)."""
    if cfg.layout == "per-linear-norm" or "no-subln" in cfg.ablate or (sub and cfg.layout == "llama"):
        return nn.Identity()
    return RMSNorm(dim, cfg.norm_eps)


def _linears(cfg: "ModelConfig", *shapes):
    kw = dict(quant=cfg.quant, ablate=cfg.ablate, eps=cfg.norm_eps, norm=cfg.layout == "per-linear-norm")
    return [BitLinear(i, o, **kw) for i, o in shapes]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, kv = cfg.d_model, cfg.kv_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.shared = cfg.layout != "per-linear-norm"  # q/k/v read one normalised input: quantize it once
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = _linears(cfg, (d, d), (d, kv), (d, kv), (d, d))
        self.sub_norm = _norm(cfg, d, sub=True)  # attn_sub_norm (per-linear layout: o_proj's own norm)

    def forward(self, x, cos, sin, cache=None, layer=0):
        B, T, C = x.shape
        act = self.q_proj.quantize_input(x) if self.shared else None
        q = self.q_proj(x, act).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x, act).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x, act).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            p = cache.pos
            cache.k[layer, :, :, p : p + T] = k
            cache.v[layer, :, :, p : p + T] = v
            k, v = (
                cache.k[layer, :, :, : p + T].to(q.dtype),
                cache.v[layer, :, :, : p + T].to(q.dtype),
            )  # (B, Hkv, p+T, hd)
            # query i sits at absolute position p+i and may see keys 0..p+i
            mask, causal = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p), False
        if self.n_kv_heads != self.n_heads:  # grouped-query attention: each key/value head serves a group
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, S, hd)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, H, T, hd)
        return self.o_proj(self.sub_norm(y.transpose(1, 2).reshape(B, T, C)))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.ffn_hidden
        self.act, self.shared = cfg.ffn_act, cfg.layout != "per-linear-norm"
        self.gate_proj, self.up_proj, self.down_proj = _linears(cfg, (d, h), (d, h), (h, d))
        self.sub_norm = _norm(cfg, h, sub=True)  # ffn_sub_norm (per-linear layout: down_proj's own norm)

    def forward(self, x):
        act = self.gate_proj.quantize_input(x) if self.shared else None
        g = self.gate_proj(x, act)  # (B, T, h)
        g = F.relu(g).square() if self.act == "relu2" else F.silu(g)
        return self.down_proj(self.sub_norm(g * self.up_proj(x, act)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm, self.ffn_norm = _norm(cfg, cfg.d_model), _norm(cfg, cfg.d_model)  # input/post_attention
        self.attn, self.ffn = Attention(cfg), FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    # The decode path swaps these for int8 rows (runtime/int8_head.py), so they are typed by role, not class.
    tok_emb: Any
    head: Any
    rope_cos: torch.Tensor  # (context, hd) buffers
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.quant_head = "quant-head" in cfg.ablate
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)  # final norm, full precision
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for m in (self.tok_emb, self.head):
            nn.init.normal_(m.weight, std=0.02)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (context, hd)
        self.register_buffer("rope_sin", sin, persistent=False)

    def set_quant_strength(self, weights: float, activations: float) -> None:
        """Blend the quantization of every BitLinear in: x + s * (quant(x) - x), s in [0, 1] for the weights and
        for the activations (1, 1: the recipe's forward exactly; 0, 0: full precision exactly)."""
        s = (float(weights), float(activations))
        if not all(0.0 <= v <= 1.0 for v in s):
            raise ValueError(f"quantization strength must lie in [0, 1], got {s}")
        if s != FULL_STRENGTH and any(a in _NEEDS_QUANT for a in self.cfg.ablate):
            raise ValueError(f"the ablations {', '.join(_NEEDS_QUANT)} replace the quantizer: no strength to blend")
        for _, m in self.bitlinears():
            m.strength = s

    def bitlinears(self) -> Iterator[tuple[str, BitLinear]]:
        """(name, module) for every BitLinear (with quant='none' these are the plain, unquantized linears)."""
        return ((n, m) for n, m in self.named_modules() if isinstance(m, BitLinear))

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        max_len = self.cfg.context if max_len is None else max_len
        if not 1 <= max_len <= self.cfg.context:
            raise ValueError(f"cache length {max_len} must be in [1, context={self.cfg.context}]")
        p = self.norm.weight  # float32 on the model's device (tok_emb may hold int8 rows when decoding)
        return KVCache(self.cfg.n_layers, batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, p.dtype, p.device)

    def forward(self, idx, targets=None, cache=None, *, last_only: bool = False):
        """Logits (B, T, V) float32 and the mean cross-entropy when targets are given. last_only: only the last
        position goes through the final norm and head (logits (B, 1, V)): a prompt before generation."""
        if last_only and targets is not None:
            raise ValueError("last_only computes no logits for the targets' positions")
        B, T = idx.shape
        start = 0 if cache is None else cache.pos
        limit = self.cfg.context if cache is None else cache.max_len
        if start + T > limit:
            raise ValueError(f"sequence of {start + T} positions exceeds the limit of {limit}")
        if cache is not None and B != cache.batch:
            raise ValueError(f"batch {B} does not match the cache's batch {cache.batch}")
        # the module call (not F.embedding on .weight): a decoding model may hold int8 rows (head.Int8Embedding)
        if self.quant_head:
            x = F.embedding(idx, Q.weight_fake_quant(self.tok_emb.weight))  # (B, T, C)
        else:
            x = self.tok_emb(idx)  # (B, T, C)
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, hd)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        x = self.norm(x[:, -1:] if last_only else x)
        if self.quant_head:
            logits = F.linear(Q.act_fake_quant(x), Q.weight_fake_quant(self.head.weight))
        else:
            logits = self.head(x)
        logits = logits.float()  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
