"""How runtimes quantize a ternary linear's activations, and the exact linear layer for each way.

The BitNet recipe quantizes a linear's input to int8 per token. Runtimes differ, and a faithful runtime can only
be checked against a reference that does what it does, so this layer computes any of them exactly:

- ``token``: absmax int8 per token, the recipe (HF transformers, bitnet.cpp's I2_S and TL kernels, bitnet_ref);
  with one weight scale this is ``PackedBitLinear``'s path, bit for bit the training forward;
- ``block``: absmax int8 per 256-element block of each token, llama.cpp's Q8_K on TQ1_0/TQ2_0 weights, with its
  arithmetic (ggml-quants.c ``quantize_row_q8_K_ref``: ``iscale = -127 / max`` of the block's largest-magnitude
  value, ``q = min(127, round_half_even(iscale * x))``, ``d = 1 / iscale``; each block's integer dot product is
  scaled by ``d_x * d_w`` and the blocks are summed in float32);
- ``tensor``: one absmax scale for the whole input of the matmul (all its tokens): what a runtime that quantizes
  "per tensor" computes; no published runtime does this for BitNet, it is here to name that fault;
- ``none``: no activation quantization, the input rounded to the weight's storage type first (llama.cpp on F16,
  BF16 or F32 weights: ggml converts the activations to the weight's ``vec_dot_type``).

Weights are our packed codes with a per-tensor scale (``PackedWeight.beta``) and, for TQ files whose blocks carry
different ``d``, a per-256-block scale (``ModeLinear.block_scales``). Integer products are the exact kernel's
(``kernels.ternary_matmul``, per 256-column slice where blocks are needed); only the float glue differs from a
runtime's, in its summation order. ``FloatHead`` is a float output head whose input is rounded the same way.

What this is not: a model (``runtime/assemble.py`` builds one from a file's linears) or a file reader (formats/).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref import quant as Q
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.packed import PackedBitLinear, PackedWeight

ACT_MODES = ("token", "block", "tensor", "none")
BLOCK = 256  # llama.cpp's QK_K: the Q8_K activation block and the TQ weight block
INPUT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LinearSpec:
    """One ternary linear as a file holds it, and how the file's own runtime multiplies it."""

    weight: PackedWeight  # codes (our 2-bit packed rows) and the per-tensor scale beta
    block_scales: np.ndarray | None = None  # (N, K / 256) float32 weight scales per block, when they differ
    act: str = "token"  # the activation quantization of the file's runtime (ACT_MODES)
    input_dtype: str = "f32"  # "none": what the input is rounded to before the float product

    def effective_scale(self) -> np.ndarray:
        """(N, K / 256) or (1, 1) float32: the scale of each weight block (beta times the block scale)."""
        b = np.float32(float(self.weight.beta))
        return np.array([[b]], dtype=np.float32) if self.block_scales is None else self.block_scales * b


def block_act_quant(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's Q8_K quantization of float32 x (M, K): (q int8 (M, K), d float32 (M, K / block))."""
    m, k = x.shape
    if k % block:
        raise ValueError(f"block activation quantization needs a width that is a multiple of {block}, got {k}")
    xb = x.detach().float().reshape(m, k // block, block)
    idx = xb.abs().argmax(dim=-1, keepdim=True)  # the first element of largest magnitude, as ggml's strict '>'
    mx = xb.gather(-1, idx)  # (M, nb, 1) signed
    zero = mx == 0
    iscale = torch.where(zero, torch.ones_like(mx), torch.tensor(-127.0) / torch.where(zero, torch.ones_like(mx), mx))
    q = (iscale * xb).round().clamp(max=127)  # |iscale * x| <= 127 (+ a rounding step): never below -128
    q = torch.where(zero, torch.zeros_like(q), q).to(torch.int8).reshape(m, k)
    d = torch.where(zero, torch.zeros_like(mx), 1.0 / iscale).reshape(m, k // block)
    return q, d


def tensor_act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One absmax int8 scale for all of x (M, K): (q int8 (M, K), gamma float32 (M, 1), every row the same)."""
    xf = x.detach().float()
    q, gamma = Q.act_quant(xf.reshape(1, -1))  # the recipe's arithmetic, over every element at once
    return q.reshape(xf.shape), gamma.expand(xf.shape[0], 1)


class ModeLinear(PackedBitLinear):
    """A packed ternary linear computed with any activation mode and per-block weight scales (see the module
    docstring). With ``act="token"`` and one positive scale it is ``PackedBitLinear`` itself, exact."""

    def __init__(self, spec: LinearSpec, norm: nn.Module, *, act: str | None = None, threads: int | None = None):
        super().__init__(spec.weight, norm, threads=threads)
        self.act = spec.act if act is None else act
        if self.act not in ACT_MODES:
            raise ValueError(f"unknown activation mode {self.act!r}; choose one of {', '.join(ACT_MODES)}")
        self.block_scales = spec.block_scales
        self.input_dtype = INPUT_DTYPES[spec.input_dtype]
        self._recipe = self.act == "token" and self.block_scales is None and self.beta_f > 0
        self._slices: list[np.ndarray] | None = None

    def quantize_input(self, x):
        return super().quantize_input(x) if self._recipe else None

    def forward(self, x, act=None):
        if self._recipe:
            return super().forward(x, act)
        y = self._cpu(self.norm(x))
        lead = y.shape[:-1]
        x2 = y.detach().float().reshape(-1, self.w.k)  # (M, K)
        return self.product(x2).view(*lead, self.w.n).to(y.dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N) float32 for normalised inputs x (M, K) float32, in this layer's mode."""
        if self.act == "none":
            xr = x.to(self.input_dtype).float()
            w = torch.from_numpy(kernels.unpack_ternary(self.w.packed, self.w.n, self.w.k)).float()  # (N, K)
            if self.block_scales is not None:
                w = w * torch.from_numpy(np.repeat(self.block_scales, BLOCK, axis=1))
            return F.linear(xr, w) * self.w.beta
        if self.act == "block":
            q, sx = block_act_quant(x)  # (M, K), (M, K / 256)
        elif self.act == "tensor":
            q, sx = tensor_act_quant(x)
        else:
            q, sx = Q.act_quant(x)
        if self.block_scales is None and self.act != "block":  # one scale each side: the recipe's order
            acc = kernels.ternary_matmul(q.numpy(), self.w.packed, self.w.n, self.w.k, threads=self.threads)
            return torch.from_numpy(acc).float() * (sx * self.w.beta)
        return self._blockwise(q, sx) * self.w.beta

    def _blockwise(self, q: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
        """sum over 256-blocks b of float(int dot_b) * (sx_b * sw_b), in block order (ggml's vec_dot order)."""
        nb = self.w.k // BLOCK
        if self.w.k % BLOCK:
            raise ValueError(f"per-block scales need a width that is a multiple of {BLOCK}, got {self.w.k}")
        if self._slices is None:  # our rows, 256 columns at a time: block b is bytes 64 b .. 64 b + 63 of a row
            rows = self.w.packed.reshape(self.w.n, self.w.k // 4)
            self._slices = [np.ascontiguousarray(rows[:, 64 * b : 64 * b + 64]).reshape(-1) for b in range(nb)]
        qn = q.numpy()
        sw = None if self.block_scales is None else torch.from_numpy(self.block_scales)  # (N, nb)
        out = torch.zeros(q.shape[0], self.w.n)
        for b in range(nb):
            acc = kernels.ternary_matmul(
                np.ascontiguousarray(qn[:, BLOCK * b : BLOCK * b + BLOCK]),
                self._slices[b],
                self.w.n,
                BLOCK,
                threads=self.threads,
            )
            sxb = sx[:, b : b + 1] if sx.shape[1] > 1 else sx  # (M, 1)
            scale = sxb if sw is None else sxb * sw[:, b]  # (M, 1) or (M, N)
            out += torch.from_numpy(acc).float() * scale
        return out

    def extra_repr(self):
        return super().extra_repr() + f", act={self.act}" + (", block scales" if self.block_scales is not None else "")


class FloatHead(nn.Linear):
    """A float output head (V, d) whose input is first rounded to ``input_dtype`` (ggml's F16/BF16 head). An
    ``nn.Linear`` (holding the given tensor, not a copy), so everything that reads a float head reads this one."""

    def __init__(self, weight: torch.Tensor, input_dtype: str = "f32"):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a (V, d) matrix first
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)  # (V, d) float32
        self.register_parameter("bias", None)
        self.input_dtype = INPUT_DTYPES[input_dtype]

    def forward(self, x):
        return F.linear(x.to(self.input_dtype).float(), self.weight)
