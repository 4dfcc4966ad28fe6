"""The packed ternary runtime: a trained Transformer with every BitLinear swapped for an int8 x 2-bit layer.

Conversion is two steps, gpt-fast style:

1. ``packed_state(model)``: for every BitLinear, its ternary codes packed by ``kernels.pack_ternary`` (2 bits a
   weight) and its absmean scale beta (float32), keyed by module name;
2. ``swap_bitlinears(model, state)``: every BitLinear replaced by a ``PackedBitLinear`` holding that state.
   ``to_packed(model)`` does both.

``PackedBitLinear.forward(x)`` = the same RMSNorm module -> ``kernels.quant_matmul``, one C++ call doing
``quant.act_quant`` (int8 per token, gamma) -> the exact int32 int8 x ternary product -> ``acc.float() * (gamma *
beta)``; ``forward_reference`` does the same three steps in torch around ``kernels.ternary_matmul``. That is the
order in which ``quant.fake_quant_linear`` computes the training forward (an exact float32 matmul on the integer
codes, then the scales), so the packed model reproduces the fake-quant model bit for bit: identical logits, not
merely close. Embeddings, the final norm, the head, attention and the KV cache are the Transformer's own, untouched.

Ablated checkpoints: ``no-dequant`` is reproduced exactly (acc.float(), no scales: that ablation never multiplies
them back); ``no-subln`` keeps its Identity norm; ``quant-head`` keeps the Transformer's fake-quant head.
``no-ste``/``clamp-ste`` change only gradients; their forward is F.linear on dequantized floats, so the packed
layer matches it to float rounding (not bitwise). ``quant="none"`` checkpoints have nothing to pack: the decode
loader (decode/loader.py) returns the torch model and says why.

Also here: ``DequantLinear`` (the same weights as a plain fp32 F.linear with codes * beta: the "torch fp32 eager"
baseline of the decode benchmark, tools/bench/bench_decode.py) and ``weight_bytes_per_token``. Errors for users are
``DecodeError`` (one line; the class is generate.py's).

What this is not: a loader (decode/loader.py reads a checkpoint and calls ``to_packed``), generation, parity or
teacher forcing (generate.py, which runs on any model, packed or not), a serving engine (one process, CPU kernels,
no batching across requests), or a file format (packing happens at load time, from the training checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref import quant as Q
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import BitLinear, Transformer
from bitnet_ref.runtime import kernels

# ---------------------------------------------------------------------------------------------- runtime layers


@dataclass
class PackedWeight:
    packed: np.ndarray  # (packed_nbytes(n, k, format=format),) uint8, from kernels.pack_ternary
    beta: torch.Tensor  # () float32, the absmean scale exactly as quant.weight_quant computed it
    n: int  # out_features
    k: int  # in_features
    format: str = "2"  # kernels.FORMATS: "2" (2 bits a weight) or "1.6" (five weights a byte); same products


_FAST_OK = None


def fast_act_quant_ok() -> bool:
    """True if the C++ quantizer (kernels.act_quant, inside kernels.quant_matmul) equals quant.act_quant on a set
    of awkward rows (ties, zeros, tiny, huge).

    Checked once per process; if a torch version rounds differently, the packed layer falls back to the torch
    reference path (slower, still exact) instead of drifting from the training forward.
    """
    global _FAST_OK
    if _FAST_OK is None:
        g = torch.Generator().manual_seed(0)
        rows = [
            torch.randn(64, 300, generator=g) * 10.0 ** torch.randint(-8, 5, (64, 1), generator=g),
            torch.randint(-600, 600, (64, 300), generator=g).float() / 4,  # exact halves: rounding ties
            torch.zeros(2, 300),
            torch.full((2, 300), 3e-6),
        ]
        x = torch.cat(rows).float()  # (132, 300)
        q1, g1 = Q.act_quant(x)
        q2, g2 = kernels.act_quant(x.numpy())
        _FAST_OK = bool(np.array_equal(q1.numpy(), q2) and np.array_equal(g1.numpy(), g2))
    return _FAST_OK


class PackedBitLinear(nn.Module):
    """Runtime BitLinear: norm -> int8 act quant -> packed int8 x ternary matmul (int32) -> * (gamma * beta).

    ``forward`` runs everything after the norm as one fused C++ call (``kernels.quant_matmul``); ``forward_reference``
    is the plain two-step version (quant.act_quant and the scaling in torch around ``kernels.ternary_matmul``), kept
    as the oracle and used for non-float32 inputs. The unscaled no-dequant ablation runs the C++ quantizer and the
    int32 kernel as two calls. All paths are bit-identical (tests/test_packed.py).
    """

    def __init__(self, w: PackedWeight, norm: nn.Module, *, scaled: bool = True, threads: int | None = None):
        super().__init__()
        self.w, self.norm, self.scaled, self.threads = w, norm, scaled, threads
        self.in_features, self.out_features = w.k, w.n
        self.beta_f = float(w.beta)  # exact: a float32 value round-trips through a Python float

    def quantize_input(self, x):
        """(q int8 (..., K), gamma float32 (..., 1)) of norm(x), for layers that share one input (the official
        layout's q/k/v and gate/up): the input is quantized once, then each layer runs only its matmul."""
        if not self.scaled:
            return None
        x = self._cpu(self.norm(x))
        if not (x.dtype == torch.float32 and fast_act_quant_ok()):
            return Q.act_quant(x)
        q, gamma = self._guard(kernels.act_quant, x.detach().reshape(-1, self.w.k).numpy())
        lead = x.shape[:-1]
        return torch.from_numpy(q).view(*lead, self.w.k), torch.from_numpy(gamma).view(*lead, 1)

    def forward(self, x, act=None):
        if act is not None:  # the shared input's codes: only this layer's matmul and scales are left
            return self._scaled_product(*act).to(x.dtype)
        x = self._cpu(self.norm(x))  # (..., K)
        if not (x.dtype == torch.float32 and fast_act_quant_ok()):
            return self._rest_reference(x)
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, self.w.k).numpy()  # (M, K) float32
        if self.scaled:
            y = self._guard(
                kernels.quant_matmul,
                x2,
                self.w.packed,
                self.w.n,
                self.w.k,
                self.beta_f,
                threads=self.threads,
                format=self.w.format,
            )  # (M, N) float32
        else:  # no-dequant ablation: the integer product, never scaled back
            q, _ = self._guard(kernels.act_quant, x2)  # (M, K) int8
            y = kernels.ternary_matmul(q, self.w.packed, self.w.n, self.w.k, threads=self.threads, format=self.w.format)
            y = y.astype(np.float32)  # (M, N), exact while |acc| < 2**24
        return torch.from_numpy(y).view(*lead, self.w.n)

    @staticmethod
    def _cpu(x):
        if x.device.type != "cpu":
            raise DecodeError("the packed kernel runs on the CPU; use --device cpu or --backend torch")
        return x

    @staticmethod
    def _guard(fn, *args, **kwargs):
        """Call a kernel that quantizes activations; its non-finite-input ValueError becomes a DecodeError."""
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            if "finite" not in str(e):
                raise
            raise DecodeError(f"non-finite activations reached a packed layer ({e}); the checkpoint diverged") from None

    def forward_reference(self, x):
        return self._rest_reference(self.norm(x))

    def _rest_reference(self, x):
        return self._scaled_product(*Q.act_quant(x)).to(x.dtype)

    def _scaled_product(self, q, gamma):
        """acc * (gamma * beta) for int8 codes q (..., K) and their scale gamma (..., 1): the order in which
        quant.fake_quant_linear computes it; acc is the exact int32 product, exact in float32 below 2**24."""
        lead = q.shape[:-1]
        acc = kernels.ternary_matmul(
            q.reshape(-1, self.w.k).numpy(),
            self.w.packed,
            self.w.n,
            self.w.k,
            threads=self.threads,
            format=self.w.format,
        )  # (M, N) int32, exact
        out = torch.from_numpy(acc).view(*lead, self.w.n).float()  # (..., N)
        return out * (gamma * self.w.beta) if self.scaled else out

    def extra_repr(self):
        return f"in={self.w.k}, out={self.w.n}, packed={self.w.packed.nbytes} bytes, scaled={self.scaled}"


class DequantLinear(nn.Module):
    """The same weights as a plain fp32 layer: norm -> F.linear(x, codes * beta). No activation quantization.

    This is the "torch fp32 eager" speed baseline (quant="none" semantics on the ternary weights); its outputs
    differ from the ternary model's because activations stay in float.
    """

    weight: torch.Tensor  # a registered buffer

    def __init__(self, weight: torch.Tensor, norm: nn.Module):
        super().__init__()
        self.norm = norm
        self.register_buffer("weight", weight)  # (out, in) fp32, codes * beta

    def quantize_input(self, x):
        return None  # no activation quantization here

    def forward(self, x, act=None):
        return F.linear(self.norm(x), self.weight)


def packed_state(model: Transformer, format: str = "2") -> dict[str, PackedWeight]:
    """Step 1: the packed codes and beta of every BitLinear, by module name (CPU numpy buffers), in ``format``."""
    state = {}
    for name, m in model.bitlinears():
        if m.quant != "ternary":
            raise DecodeError(f"{name} is not a ternary BitLinear (quant={m.quant!r}); nothing to pack")
        codes, beta = Q.weight_quant(m.weight.detach().cpu().float())  # (N, K) int8, () float32
        state[name] = PackedWeight(
            kernels.pack_ternary(codes, format=format), beta, m.out_features, m.in_features, format
        )
    return state


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def swap_bitlinears(model: Transformer, state: dict[str, PackedWeight], *, threads: int | None = None) -> Transformer:
    """Step 2: replace every BitLinear named in ``state`` by a PackedBitLinear (in place; returns the model)."""
    for name, m in list(model.bitlinears()):
        replace_submodule(model, name, PackedBitLinear(state[name], m.norm, scaled=m.dequant, threads=threads))
    return model


def to_packed(
    model: Transformer, *, threads: int | None = None, ternary: dict | None = None, format: str = "2"
) -> Transformer:
    """packed_state + swap_bitlinears, in place. Needs the C++ extension. ``format`` is the packed format of
    every layer ("2" or "1.6"): the products, and so the logits, are identical in both.

    ``ternary`` (BitLinear name -> (codes, beta), from a packed import) is packed as given instead of being
    re-quantized from the latent weights, so the runtime multiplies with the stored beta.
    """
    if not kernels.available():
        raise DecodeError(
            f"the packed backend needs the C++ extension ({kernels.import_error()}); build it with "
            "`pip install --no-build-isolation -e .` or use --backend torch"
        )
    if model.cfg.quant != "ternary":
        raise DecodeError(f"quant={model.cfg.quant!r} model: there are no ternary weights to pack")
    if format not in kernels.FORMATS:
        raise DecodeError(f"unknown packed format {format!r}; choose one of {', '.join(kernels.FORMATS)}")
    if ternary is None:
        state = packed_state(model, format)
    else:
        state = {
            name: PackedWeight(
                kernels.pack_ternary(codes, format=format),
                beta.to(torch.float32).reshape(()),
                int(codes.shape[0]),
                int(codes.shape[1]),
                format,
            )
            for name, (codes, beta) in ternary.items()
        }
    return swap_bitlinears(model, state, threads=threads)


def to_dequantized(model: Transformer) -> Transformer:
    """Every BitLinear replaced by DequantLinear (fp32 codes * beta), in place."""
    for name, m in list(model.bitlinears()):
        codes, beta = Q.weight_quant(m.weight.detach())
        replace_submodule(model, name, DequantLinear(codes.to(beta.dtype) * beta, m.norm))
    return model


def weight_bytes_per_token(model: nn.Module) -> dict:
    """Bytes of weights one decoded token reads: linear layers as stored (2-bit packed or fp32), plus the head
    (float, or int8 rows + scales) and one embedding row. Norm weights are counted too; attention's KV cache is
    not (it is not a weight)."""
    from bitnet_ref.runtime.int8_head import Int8Embedding, Int8Head

    lin, skip, other = 0, set(), 0
    for m in model.modules():
        if isinstance(m, Int8Head):  # int8 rows and their scales, all of them
            other += m.rows.nbytes
        elif isinstance(m, Int8Embedding):  # one int8 row and its scale
            other += m.embedding_dim + 4
        elif isinstance(m, PackedBitLinear):
            lin += m.w.packed.nbytes + m.w.beta.element_size()
        elif isinstance(m, (DequantLinear, BitLinear)):
            lin += m.weight.numel() * m.weight.element_size()
            skip.add(id(m.weight))
    for name, p in model.named_parameters():
        if id(p) in skip:
            continue
        rows = p[0] if name == "tok_emb.weight" else p  # one embedding row per token
        other += rows.numel() * rows.element_size()
    return {"linear": lin, "other": other, "total": lin + other}


# ---------------------------------------------------------------------------------------------- loading
