"""The packed ternary runtime: a trained Transformer with every BitLinear swapped for an int8 x 2-bit layer.

Conversion is two steps, gpt-fast style:

1. ``packed_state(model)``: for every BitLinear, its ternary codes packed by ``kernels.pack_ternary`` (2 bits a
   weight) and its absmean scale beta (float32), keyed by module name;
2. ``swap_bitlinears(model, state)``: every BitLinear replaced by a ``PackedBitLinear`` holding that state.
   ``to_packed(model)`` does both.

``PackedBitLinear.forward(x)`` = the same RMSNorm module -> ``kernels.quant_matmul``, one C++ call doing
``quant.act_quant`` (int8 per token, gamma) -> the exact int32 int8 x ternary product -> ``acc.float() * (gamma *
beta)``; ``forward_reference`` does the same three steps in torch around ``kernels.ternary_matmul``. That is the
order in which
``quant.fake_quant_linear`` computes the training forward (an exact float32 matmul on the integer codes, then
the scales), so the packed model reproduces the fake-quant model bit for bit: identical logits, not merely close.
Embeddings, the final norm, the head, attention and the KV cache are the Transformer's own, untouched.

Ablated checkpoints: ``no-dequant`` is reproduced exactly (acc.float(), no scales: that ablation never multiplies
them back); ``no-subln`` keeps its Identity norm; ``quant-head`` keeps the Transformer's fake-quant head.
``no-ste``/``clamp-ste`` change only gradients; their forward is F.linear on dequantized floats, so the packed
layer matches it to float rounding (not bitwise). ``quant="none"`` checkpoints have nothing to pack:
``load_for_decode`` returns the torch model and says why.

Also here: ``DequantLinear`` (the same weights as a plain fp32 F.linear with codes * beta: the "torch fp32 eager"
baseline of tools/bench_decode.py), ``load_for_decode``, ``generate`` (KV cache; greedy, or temperature + top-k
under a seeded torch.Generator) beside ``generate_reference`` (full recompute, the oracle), ``teacher_forced``
and ``parity``. What this is not: a serving engine (one process, CPU kernels, no batching across requests),
or a file format (packing happens at load time, from the training checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from . import quant as Q
from .checkpoint import load_checkpoint
from .model import BitLinear, ModelConfig, Transformer

BACKENDS = ("packed", "torch")


class DecodeError(ValueError):
    """A user-facing problem loading or decoding a model; the message is one line."""


# ---------------------------------------------------------------------------------------------- runtime layers


@dataclass
class PackedWeight:
    packed: np.ndarray  # (packed_nbytes(n, k),) uint8, from kernels.pack_ternary
    beta: torch.Tensor  # () float32, the absmean scale exactly as quant.weight_quant computed it
    n: int  # out_features
    k: int  # in_features


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
        rows = [torch.randn(64, 300, generator=g) * 10.0 ** torch.randint(-8, 5, (64, 1), generator=g),
                torch.randint(-600, 600, (64, 300), generator=g).float() / 4,  # exact halves: rounding ties
                torch.zeros(2, 300), torch.full((2, 300), 3e-6)]
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
        self.fast = True

    def forward(self, x):
        x = self.norm(x)  # (..., K)
        if x.device.type != "cpu":
            raise DecodeError("the packed kernel runs on the CPU; use --device cpu or --backend torch")
        if not (self.fast and x.dtype == torch.float32 and fast_act_quant_ok()):
            return self._rest_reference(x)
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, self.w.k).numpy()  # (M, K) float32
        try:
            if self.scaled:
                y = kernels.quant_matmul(x2, self.w.packed, self.w.n, self.w.k, self.beta_f,
                                         threads=self.threads)  # (M, N) float32
            else:  # no-dequant ablation: the integer product, never scaled back
                q, _ = kernels.act_quant(x2)  # (M, K) int8
                y = kernels.ternary_matmul(q, self.w.packed, self.w.n, self.w.k, threads=self.threads)
                y = y.astype(np.float32)  # (M, N), exact while |acc| < 2**24
        except ValueError as e:
            if "finite" not in str(e):
                raise
            raise DecodeError(f"non-finite activations reached a packed layer ({e}); the checkpoint diverged") from None
        return torch.from_numpy(y).view(*lead, self.w.n)

    def forward_reference(self, x):
        return self._rest_reference(self.norm(x))

    def _rest_reference(self, x):
        q, gamma = Q.act_quant(x)  # (..., K) int8, (..., 1) float32
        lead = q.shape[:-1]
        acc = kernels.ternary_matmul(q.reshape(-1, self.w.k).numpy(), self.w.packed, self.w.n, self.w.k,
                                     threads=self.threads)  # (M, N) int32, exact
        acc = torch.from_numpy(acc).view(*lead, self.w.n).float()  # (..., N), exact while |acc| < 2**24
        y = acc * (gamma * self.w.beta) if self.scaled else acc  # same order as quant.fake_quant_linear
        return y.to(x.dtype)

    def extra_repr(self):
        return f"in={self.w.k}, out={self.w.n}, packed={self.w.packed.nbytes} bytes, scaled={self.scaled}"


class DequantLinear(nn.Module):
    """The same weights as a plain fp32 layer: norm -> F.linear(x, codes * beta). No activation quantization.

    This is the "torch fp32 eager" speed baseline (quant="none" semantics on the ternary weights); its outputs
    differ from the ternary model's because activations stay in float.
    """

    def __init__(self, weight: torch.Tensor, norm: nn.Module):
        super().__init__()
        self.norm = norm
        self.register_buffer("weight", weight)  # (out, in) fp32, codes * beta

    def forward(self, x):
        return F.linear(self.norm(x), self.weight)


def packed_state(model: Transformer) -> dict[str, PackedWeight]:
    """Step 1: the packed codes and beta of every BitLinear, by module name (CPU numpy buffers)."""
    state = {}
    for name, m in model.bitlinears():
        if m.quant != "ternary":
            raise DecodeError(f"{name} is not a ternary BitLinear (quant={m.quant!r}); nothing to pack")
        codes, beta = Q.weight_quant(m.weight.detach().cpu().float())  # (N, K) int8, () float32
        state[name] = PackedWeight(kernels.pack_ternary(codes), beta, m.out_features, m.in_features)
    return state


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def swap_bitlinears(model: Transformer, state: dict[str, PackedWeight], *, threads: int | None = None) -> Transformer:
    """Step 2: replace every BitLinear named in ``state`` by a PackedBitLinear (in place; returns the model)."""
    for name, m in list(model.bitlinears()):
        _replace(model, name, PackedBitLinear(state[name], m.norm, scaled=m.dequant, threads=threads))
    return model


def to_packed(model: Transformer, *, threads: int | None = None) -> Transformer:
    """packed_state + swap_bitlinears, in place. Needs the C++ extension."""
    if not kernels.available():
        raise DecodeError(f"the packed backend needs the C++ extension ({kernels.import_error()}); build it with "
                          "`pip install --no-build-isolation -e .` or use --backend torch")
    if model.cfg.quant != "ternary":
        raise DecodeError(f"quant={model.cfg.quant!r} model: there are no ternary weights to pack")
    return swap_bitlinears(model, packed_state(model), threads=threads)


def to_dequantized(model: Transformer) -> Transformer:
    """Every BitLinear replaced by DequantLinear (fp32 codes * beta), in place."""
    for name, m in list(model.bitlinears()):
        codes, beta = Q.weight_quant(m.weight.detach())
        _replace(model, name, DequantLinear(codes.to(beta.dtype) * beta, m.norm))
    return model


def weight_bytes_per_token(model: nn.Module) -> dict:
    """Bytes of weights one decoded token reads: linear layers as stored (2-bit packed or fp32), plus the head
    and one embedding row. Norm weights are counted too; attention's KV cache is not (it is not a weight)."""
    lin, skip = 0, set()
    for m in model.modules():
        if isinstance(m, PackedBitLinear):
            lin += m.w.packed.nbytes + m.w.beta.element_size()
        elif isinstance(m, (DequantLinear, BitLinear)):
            lin += m.weight.numel() * m.weight.element_size()
            skip.add(id(m.weight))
    other = 0
    for name, p in model.named_parameters():
        if id(p) in skip:
            continue
        rows = p[0] if name == "tok_emb.weight" else p  # one embedding row per token
        other += rows.numel() * rows.element_size()
    return {"linear": lin, "other": other, "total": lin + other}


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    model: Transformer  # in eval mode, on `device`
    ckpt: dict  # the checkpoint as load_checkpoint returned it (weights included)
    cfg: ModelConfig
    backend: str  # the backend actually used: "packed" or "torch"
    reason: str | None  # why the backend differs from the one asked for, else None


def build_model(ckpt: dict, path="checkpoint") -> Transformer:
    """The fake-quant Transformer of a loaded checkpoint, weights in, eval mode, on the CPU."""
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
        model = Transformer(cfg)
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DecodeError(f"{path}: cannot build the model from its stored config and weights ({first})") from None
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise DecodeError(f"{path} holds NaN or inf in {name!r}; it cannot be decoded")
    return model.eval()


def load_for_decode(path, backend: str = "packed", device: str = "cpu", *, threads: int | None = None) -> Loaded:
    """Load a checkpoint for decoding. Raises CheckpointError/DecodeError (one line) for anything unusable.

    backend="packed" swaps in PackedBitLinear (CPU only, needs the extension); "torch" keeps the fake-quant
    forward. A quant="none" checkpoint always decodes through torch, and ``reason`` says so.
    """
    if backend not in BACKENDS:
        raise DecodeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ckpt = load_checkpoint(path)  # weights_only=True; missing/corrupt/foreign/unsafe/NaN -> CheckpointError
    model = build_model(ckpt, path)
    cfg, reason = model.cfg, None
    dev = _device(device)
    if backend == "packed" and cfg.quant != "ternary":
        backend, reason = "torch", f"quant={cfg.quant!r} checkpoint: no ternary weights to pack, decoded by torch"
    if backend == "packed":
        if dev.type != "cpu":
            raise DecodeError(f"the packed backend runs on the CPU, not {dev}; use --device cpu or --backend torch")
        to_packed(model, threads=threads)
    return Loaded(model.to(dev), ckpt, cfg, backend, reason)


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DecodeError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DecodeError(f"device {name} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise DecodeError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return dev


# ---------------------------------------------------------------------------------------------- generation


@dataclass
class Generation:
    tokens: list  # per prompt, the new tokens only
    entropy: list  # per prompt, entropy (nats) of the model's next-token distribution at each new token
    top1: list  # per prompt, the top-1 probability there
    prefill_s: float  # seconds spent on the prompts
    decode_s: float  # seconds spent generating after the prompts

    @property
    def n_new(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tok_per_s(self) -> float:
        """New tokens per second of decode (prefill excluded); nan when nothing was decoded after the prompt."""
        rows = len(self.tokens)
        steps = self.n_new - rows  # the first token of each row comes out of the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else math.nan


def _pick(logits, temperature: float, top_k: int | None, gen: torch.Generator | None):
    """Next token (B, 1) from logits (B, V): argmax, or a sample at `temperature` from the top-k."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs.cpu(), 1, generator=gen).to(logits.device)


def _stats(logits):
    """Entropy (nats) and top-1 probability of softmax(logits) per row: two (B,) tensors."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, V)
    p = logp.exp()
    return -(p * logp).sum(-1), p.max(-1).values


@torch.no_grad()
def generate(model: Transformer, prompts, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0) -> Generation:
    """Continue each prompt by ``max_new_tokens`` through the model's KV cache (one token per forward after
    the prompt). temperature <= 0 is greedy; otherwise sampling at ``temperature`` from the ``top_k`` most
    likely tokens (all when None) with a torch.Generator seeded by ``seed``. Prompts of one length share a batch.
    """
    if max_new_tokens < 1:
        raise DecodeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise DecodeError(f"top_k must be >= 1, got {top_k}")
    ctx = model.cfg.context
    device = model.tok_emb.weight.device
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    out_t, out_e, out_p = [None] * len(prompts), [None] * len(prompts), [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise DecodeError("every prompt needs at least one token")
        if len(p) + max_new_tokens > ctx:
            raise DecodeError(f"prompt ({len(p)} tokens) + {max_new_tokens} new tokens exceed the model's "
                              f"context of {ctx}; shorten the prompt or lower --max-new-tokens")
        groups.setdefault(len(p), []).append(i)
    prefill_s = decode_s = 0.0
    for length, rows in groups.items():
        idx = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)  # (B, P)
        cache = model.new_cache(len(rows), length + max_new_tokens)
        t0 = time.perf_counter()
        logits, _ = model(idx, cache=cache)  # (B, P, V)
        last = logits[:, -1]  # (B, V)
        toks, ents, tops = [], [], []
        t1 = time.perf_counter()
        for step in range(max_new_tokens):
            nxt = _pick(last, temperature, top_k, gen)  # (B, 1)
            e, p1 = _stats(last)
            toks.append(nxt), ents.append(e), tops.append(p1)
            if step + 1 < max_new_tokens:
                logits, _ = model(nxt, cache=cache)  # (B, 1, V)
                last = logits[:, -1]
        t2 = time.perf_counter()
        prefill_s, decode_s = prefill_s + (t1 - t0), decode_s + (t2 - t1)
        toks, ents, tops = torch.cat(toks, 1), torch.stack(ents, 1), torch.stack(tops, 1)  # (B, new) each
        for r, i in enumerate(rows):
            out_t[i], out_e[i], out_p[i] = toks[r].tolist(), ents[r].tolist(), tops[r].tolist()
    return Generation(out_t, out_e, out_p, prefill_s, decode_s)


@torch.no_grad()
def generate_reference(model: Transformer, prompts, max_new_tokens: int) -> list:
    """Greedy continuation recomputing the whole sequence for every token (no cache): the oracle for generate."""
    out = []
    device = model.tok_emb.weight.device
    for p in prompts:
        seq = list(p)
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([seq], dtype=torch.long, device=device))  # (1, T, V)
            seq.append(int(logits[0, -1].argmax()))
        out.append(seq[len(p):])
    return out


@torch.no_grad()
def teacher_forced(model: Transformer, sequences) -> torch.Tensor:
    """Logits of every position of equal-length ``sequences`` in one full forward: (B, T, V) on the CPU."""
    idx = torch.tensor([list(s) for s in sequences], dtype=torch.long, device=model.tok_emb.weight.device)
    return model(idx)[0].cpu()


@torch.no_grad()
def val_loss(model: Transformer, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over validation windows (B, T+1) of token ids."""
    idx = windows.to(model.tok_emb.weight.device)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    return float(loss)


def parity(runtime: Transformer, reference: Transformer, prompts, max_new_tokens: int, *,
           return_generations: bool = False):
    """Does the runtime model compute what the reference (fake-quant) model computes?

    Both decode ``prompts`` greedily through their KV caches; tokens must be identical. Then both run one full
    forward over each prompt + the runtime's tokens and every logit is compared: max_abs_logit_diff, and
    max_rel_logit_diff = max_abs / max |reference logit| (relative to the logit scale; per-element ratios
    blow up near zero). ``ok`` needs identical tokens and max_rel <= PARITY_REL_TOL.
    With return_generations=True, returns (report, runtime Generation, reference Generation).
    """
    a = generate(runtime, prompts, max_new_tokens)
    b = generate(reference, prompts, max_new_tokens)
    same = [x == y for x, y in zip(a.tokens, b.tokens)]
    first = next((i for i, s in enumerate(same) if not s), None)
    max_abs = max_ref = 0.0
    by_len: dict[int, list[list[int]]] = {}
    for p, t in zip(prompts, a.tokens):
        by_len.setdefault(len(p) + len(t), []).append(list(p) + t)
    for seqs in by_len.values():
        la, lb = teacher_forced(runtime, seqs), teacher_forced(reference, seqs)  # (B, T, V) each
        max_abs = max(max_abs, float((la - lb).abs().max()))
        max_ref = max(max_ref, float(lb.abs().max()))
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    out = {
        "tokens_identical": all(same),
        "samples_identical": sum(same),
        "samples": len(same),
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": rel,
        "rel_tol": PARITY_REL_TOL,
        "bitwise": max_abs == 0.0,
    }
    out["ok"] = out["tokens_identical"] and rel <= PARITY_REL_TOL
    if first is not None:
        k = next(j for j, (x, y) in enumerate(zip(a.tokens[first], b.tokens[first])) if x != y)
        out["first_mismatch"] = {"sample": first, "position": k}
    return (out, a, b) if return_generations else out


PARITY_REL_TOL = 1e-4  # the packed path is exact; anything above float noise is a bug
