"""The output head (and a tied embedding) as int8 rows for decoding: one float32 scale per row.

The head of a BitNet model stays full precision in training, and at the shapes of bitnet-b1.58-2B-4T it is
40% of the model's bytes (128256 x 2560): read as float32 it would cost more per token than all 30 ternary
layers. At decode time its rows are stored as int8 with one absmax scale per row (``quantize_rows``), the
normalised hidden state is quantized to int8 per token exactly as a BitLinear input (``kernels.act_quant``),
and ``kernels.int8_matmul`` multiplies the two exactly in int32; the logits are ``acc * (gamma * row_scale)``.
A quarter of the float32 bytes; the logits differ from the float32 head's by the rounding of the two int8
quantizations (tools/bench/bench_decode.py reports top-1 agreement and the largest difference).

- ``Int8Rows``: the rows (V, d) int8 and their scales (V,) float32, as torch tensors (CPU, contiguous).
- ``Int8Head``: drop-in for the model's ``head`` (``nn.Linear(d, V)``); ``forward_reference`` is the same in
  plain torch (float64 products of the integer codes, exact), the oracle of the C++ path.
- ``Int8Embedding``: drop-in for ``tok_emb``: row ``i`` is ``q[i].float() * scale[i]``. A tied model's head and
  embedding share one ``Int8Rows``.
- ``to_int8_head(model)``: swaps both in, in place (the embedding only when tied: an untied embedding reads one
  row per token, and stays float32 so the ternary body sees exactly the training model's inputs).

What this is not: a quantization of the ternary body (packed.py) or a training-time format (the trainer's head
stays float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from bitnet_ref import quant as Q
from bitnet_ref.runtime import kernels

if TYPE_CHECKING:
    from bitnet_ref.model import Transformer

HEAD_FORMATS = ("fp32", "int8")  # how a decoded model stores its output head (and a tied embedding)
ROW_QMAX = 127.0  # symmetric int8 rows: codes in [-127, 127]
_ROW_EPS = 1e-12  # an all-zero row gets scale eps / 127 and codes 0


@dataclass
class Int8Rows:
    q: torch.Tensor  # (V, d) int8, codes in [-127, 127]
    scale: torch.Tensor  # (V,) float32: row i is approximately q[i] * scale[i]

    @classmethod
    def empty(cls, V: int, d: int) -> Int8Rows:
        """Uninitialised rows (torch allocations: 64-byte aligned)."""
        return cls(torch.empty(V, d, dtype=torch.int8), torch.empty(V, dtype=torch.float32))

    @property
    def nbytes(self) -> int:
        return self.q.numel() + 4 * self.scale.numel()


def quantize_rows_into(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Absmax int8 quantization of float rows w (R, d) into q (R, d) int8 and scale (R,) float32."""
    w = w.detach().float()
    s = w.abs().amax(dim=1).clamp_min(_ROW_EPS) / ROW_QMAX  # (R,)
    q.copy_((w / s[:, None]).round().clamp_(-ROW_QMAX, ROW_QMAX).to(torch.int8))
    scale.copy_(s)


def quantize_rows(w, chunk: int = 1024, *, done=None) -> Int8Rows:
    """Int8Rows of a float (V, d) matrix, ``chunk`` rows at a time (no full-size float temporaries).

    ``w``: a torch tensor or a numpy array of any float dtype, e.g. the F16 embedding of a GGUF file as its memory
    map: each chunk alone is converted to float32 (exactly; the rows are quantized independently, so the result
    does not depend on ``chunk``). ``done(r0, r1)``, if given, is called once rows r0:r1 are quantized (the GGUF
    reader releases their file pages there)."""
    V, d = w.shape
    rows = Int8Rows.empty(V, d)
    for r in range(0, V, chunk):
        part = w[r : r + chunk]
        if isinstance(part, np.ndarray):
            part = torch.from_numpy(np.array(part, dtype=np.float32))  # (chunk, d): a copy of this chunk only
        quantize_rows_into(part, rows.q[r : r + chunk], rows.scale[r : r + chunk])
        if done is not None:
            done(r, min(r + chunk, V))
    return rows


class Int8Head(nn.Module):
    """Logits = int8(x) . q^T (exact int32) * (gamma * scale): the head of a decoding model, as int8 rows."""

    def __init__(self, rows: Int8Rows, threads: int | None = None):
        super().__init__()
        self.rows, self.threads = rows, threads
        self.out_features, self.in_features = rows.q.shape
        self._q, self._scale = rows.q.numpy(), rows.scale  # numpy view for the kernel (shares memory)

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.detach().float().reshape(-1, self.in_features).contiguous().numpy()  # (M, d)
        try:
            q, gamma = kernels.act_quant(x2)  # (M, d) int8, (M, 1) float32
        except ValueError as e:
            from bitnet_ref.generate import DecodeError

            raise DecodeError(f"non-finite activations reached the head ({e}); the checkpoint diverged") from None
        acc = kernels.int8_matmul(q, self._q, threads=self.threads)  # (M, V) int32, exact
        logits = torch.from_numpy(acc).float() * (torch.from_numpy(gamma) * self._scale)  # (M, V)
        return logits.view(*lead, self.out_features)

    def forward_reference(self, x):
        """The same in plain torch: torch's act_quant, a float64 product of the codes (exact below 2**53)."""
        q, gamma = Q.act_quant(x.detach().float())  # (..., d) int8, (..., 1)
        acc = (q.double() @ self.rows.q.double().T).to(torch.int32)  # (..., V)
        return acc.float() * (gamma * self.rows.scale)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, int8 rows + float32 scales ({self.rows.nbytes} bytes)"


class Int8Embedding(nn.Module):
    """Token embedding from int8 rows: row i = q[i].float() * scale[i]."""

    def __init__(self, rows: Int8Rows):
        super().__init__()
        self.rows = rows
        self.num_embeddings, self.embedding_dim = rows.q.shape

    @property
    def weight(self) -> torch.Tensor:
        """The int8 codes (for callers that ask the embedding for its device)."""
        return self.rows.q

    def forward(self, idx):
        return self.rows.q[idx].float() * self.rows.scale[idx].unsqueeze(-1)  # (..., d)


def to_int8_head(model: Transformer, *, threads: int | None = None) -> Transformer:
    """The model's float head as an Int8Head (and its embedding as an Int8Embedding when tied), in place."""
    if getattr(model, "quant_head", False):
        from bitnet_ref.generate import DecodeError

        raise DecodeError("the quant-head ablation has a ternary head already; there is no float head to quantize")
    tied = model.cfg.tie_embeddings
    rows = quantize_rows(model.head.weight)
    model.head = Int8Head(rows, threads)
    if tied:
        model.tok_emb = Int8Embedding(rows)
    return model
