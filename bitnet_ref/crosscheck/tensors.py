"""File vs source, tensor by tensor, without running anything: does the file encode the model it was made from?

Both sides are ``FileModel``s (a bitnet_ref checkpoint, a Hugging Face directory, a GGUF). For every linear the
codes are compared (equal; sign-flipped; transposed; rows permuted for interleaved RoPE, which LLaMA converters do to
q and k but this architecture's NEOX RoPE does not want; I2_S blocks in the other build's layout; a share of codes
different) and then its effective scale, the one each weight is multiplied by (equal up to the rounding of the
file's scale type; the inverse, "divided instead of multiplied"; beta times the share of nonzero codes, the absmean
of codes times beta: re-quantized from dequantized weights; off by another factor; one factor for every linear
is named once). Then the norms (equal; missing; left at 1), the embedding and head (equal up to the stored type's
rounding; tied or not), the hyperparameters (RoPE theta, norm eps, heads, widths, FFN activation) and the
vocabulary. A relation is named with the file's tensor name, e.g. "blk.3.ffn_down: scale = 1/beta (divided
instead of multiplied)". Every number judged here is in thresholds.py.

What this is not: a check of what a runtime computes (agreement.py) or of the model's quality (the doctor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bitnet_ref.formats import ternary_blocks as TB
from bitnet_ref.formats.file_model import FileModel
from bitnet_ref.formats.gguf_file import NORMS, PROJ
from bitnet_ref.thresholds import CODE_TIE_SHARE, SCALE_RTOL

HPARAMS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "ffn_act", "tie_embeddings")
FLOAT_HPARAMS = ("rope_theta", "norm_eps")
TYPE_RTOL = {"f32": 1e-6, "f16": 2.0**-11, "bf16": 2.0**-8}  # half an ulp of each stored type, relative


@dataclass
class Finding:
    where: str  # the file's name for it: "blk.3.ffn_down", "rope_theta", "vocabulary"
    relation: str  # what was found, one phrase
    fault: bool = True  # False: a note (an expected rounding, something not comparable)

    def line(self) -> str:
        return f"{self.where}: {self.relation}"


def gguf_name(ours: str) -> str:
    """Our module/tensor name as the GGUF calls it (what users see in their converter's log)."""
    if ours in ("tok_emb.weight", "tok_emb"):
        return "token_embd"
    if ours in ("norm.weight", "norm"):
        return "output_norm"
    if ours in ("head.weight", "head"):
        return "output"
    parts = ours.removesuffix(".weight").split(".")
    rest = ".".join(parts[2:])
    name = PROJ.get(rest) or NORMS.get(rest) or rest
    return f"blk.{parts[1]}.{name}"


def codes_of(fm: FileModel, name: str) -> np.ndarray:
    w = fm.linears[name].weight
    return TB.unpack_codes(w.packed, w.n, w.k, name)


def _rope_permuted(codes: np.ndarray, n_head: int) -> np.ndarray:
    """LLaMA converters' ``permute`` of q/k rows (half-split pairs to interleaved pairs)."""
    n, k = codes.shape
    return codes.reshape(n_head, 2, n // n_head // 2, k).swapaxes(1, 2).reshape(n, k)


def _other_i2s_layout(codes: np.ndarray) -> np.ndarray:
    """What the codes read as when I2_S written by an ARM build is read with the x86 layout."""
    n, k = codes.shape
    raw = TB.i2_s_join(codes, 1.0, "arm")
    packed, _ = TB.i2_s_split(raw, n, k, "x86")
    return TB.unpack_codes(packed, n, k)


def compare_codes(name: str, got: np.ndarray, want: np.ndarray, heads: int) -> Finding | None:
    """The relation between a file's codes and the source's; None when equal."""
    where = gguf_name(name)
    if got.shape != want.shape:
        if got.shape == want.shape[::-1]:
            return Finding(where, f"shape {list(got.shape)}: the source's {list(want.shape)} transposed")
        return Finding(where, f"shape {list(got.shape)} where the source has {list(want.shape)}")
    if np.array_equal(got, want):
        return None
    if np.array_equal(got, -want):
        return Finding(where, "codes sign-flipped (every weight negated)")
    if got.shape[0] == got.shape[1] and np.array_equal(got, want.T):
        return Finding(where, "codes transposed (the matrix is square, so its shape did not show it)")
    if heads and name.endswith(("q_proj", "k_proj")) and got.shape[0] % (2 * heads) == 0:
        if np.array_equal(got, _rope_permuted(want, heads)):
            return Finding(
                where,
                "rows permuted for interleaved (NORM) RoPE, LLaMA's converter permute; this architecture's RoPE "
                "is NEOX (half-split) and wants the source's row order",
            )
    if want.size % 128 == 0 and np.array_equal(got, _other_i2s_layout(want)):
        return Finding(where, "codes shuffled within 64-weight blocks: I2_S written by an ARM build, read as x86")
    share = float((got != want).mean())
    if share <= CODE_TIE_SHARE:
        return Finding(
            where,
            f"{share:.3%} of codes differ, all by one step: re-quantized from dequantized floats (ties rounded "
            "the other way)"
            if bool((np.abs(got.astype(np.int16) - want) <= 1).all())
            else f"{share:.3%} of codes differ",
        )
    return Finding(where, f"{share:.1%} of codes differ: not the source's ternary weights")


def compare_scale(name: str, fm: FileModel, src: FileModel, codes: np.ndarray, stored: str) -> tuple:
    """(kind, Finding) for one linear's effective scale: kind None when equal, else "blocks", "inverse",
    "nonzero" or a factor (float) for the aggregation in ``compare``."""
    where, got, want = gguf_name(name), fm.linears[name].effective_scale(), src.linears[name].effective_scale()
    if got.shape != want.shape:
        lo, hi = float(got.min()), float(got.max())
        return "blocks", Finding(
            where, f"blocks carry their own scales ({lo:.4g} to {hi:.4g}) where the source has one"
        )
    g, w = got.astype(np.float64), want.astype(np.float64)
    rtol = TYPE_RTOL.get(stored, 1e-6)
    if np.allclose(g, w, rtol=rtol, atol=0):
        return None, None
    if np.allclose(g * w, 1.0, rtol=4 * rtol + SCALE_RTOL, atol=0):
        text = f"scale = 1/beta (divided instead of multiplied): {g.flat[0]:.6g} where beta is {w.flat[0]:.6g}"
        return "inverse", Finding(where, text)
    nonzero = float((codes != 0).mean())
    if np.allclose(g / w, nonzero, rtol=4 * rtol + SCALE_RTOL, atol=0):
        return "nonzero", Finding(where, f"scale = beta x {nonzero:.3f}, {NONZERO_TEXT}")
    ratio = float(np.median(g / w))
    return round(ratio, 5), Finding(
        where, f"scale off by a factor {ratio:.6g} ({g.flat[0]:.6g} where beta is {w.flat[0]:.6g})"
    )


NONZERO_TEXT = (
    "the share of nonzero codes: the absmean of codes x beta (the file was re-quantized from dequantized weights, "
    "and beta shrank)"
)
EVERY = {
    "inverse": "scale = 1/beta (divided instead of multiplied)",
    "nonzero": "scale = beta x " + NONZERO_TEXT,
    "blocks": "blocks carry their own scales where the source has one",
}


def _scale_type(fm: FileModel, name: str) -> str:
    """The precision the file's scale went through (an fp16 TQ block d, a bf16 weight_scale): its rounding is no
    fault."""
    return fm.scale_types.get(name, "f32")


def compare_floats(where: str, got: torch.Tensor, want: torch.Tensor, stored: str) -> Finding | None:
    if tuple(got.shape) != tuple(want.shape):
        return Finding(where, f"shape {list(got.shape)} where the source has {list(want.shape)}")
    g, w = got.double(), want.double()
    if torch.equal(g, w):
        return None
    rtol = TYPE_RTOL.get(stored, 1e-6)
    err = float(((g - w).abs() / w.abs().clamp_min(1e-30)).max())
    if bool(torch.all(g == 1.0)) and not bool(torch.all(w == 1.0)):
        return Finding(where, "all ones where the source's gains differ: the norm was not written (left at unit gain)")
    if err <= rtol or bool(torch.allclose(g, w, rtol=rtol, atol=float(w.abs().max()) * rtol)):
        return Finding(where, f"equal up to {stored} rounding", fault=False)
    return Finding(where, f"differs from the source (largest relative difference {err:.3g})")


def compare_hparams(fm: FileModel, src: FileModel) -> list[Finding]:
    out = []
    for k in HPARAMS:
        a, b = getattr(fm.cfg, k), getattr(src.cfg, k)
        if a != b:
            what = {"ffn_act": "FFN activation", "tie_embeddings": "tied head"}.get(k, k)
            out.append(Finding(k, f"{what} {a} in the file, {b} in the source"))
    for k in FLOAT_HPARAMS:
        a, b = float(getattr(fm.cfg, k)), float(getattr(src.cfg, k))
        if not np.isclose(a, b, rtol=1e-6, atol=0):  # float32 storage of a float64 value
            out.append(Finding(k, f"{a:g} in the file, {b:g} in the source"))
    return out


VOCAB_PROBE = "def f(x):\n    return x  # The quick brown fox, \u00e9\u00fc\u4e2d"


def compare_vocab(fm: FileModel, src: FileModel) -> list[Finding]:
    """Does the file's vocabulary turn text into the source's token ids?"""
    a, b = fm.tokenizer, src.tokenizer
    if src.kind == "bitnet_ref" and b is None:  # a checkpoint's tokens: bytes if trained on bytes, else ids
        if src.cfg.vocab_size != 256:
            return []
        if getattr(a, "source", "").startswith("token ids"):
            return [Finding("vocabulary", "the file has none: feed token ids", fault=False)]
        try:
            same = a is not None and a.encode(VOCAB_PROBE) == list(VOCAB_PROBE.encode("utf-8"))
        except ValueError:
            same = False
        return (
            []
            if same
            else [Finding("vocabulary", "the source's tokens are bytes; the file's vocabulary maps text otherwise")]
        )
    if a is None or b is None:
        return []
    try:
        ta, tb = a.encode(VOCAB_PROBE), b.encode(VOCAB_PROBE)
    except ValueError:  # one side has ids only: nothing to compare
        return []
    if ta == tb or ta[1:] == tb or ta == tb[1:]:  # one side adds its BOS id before a prompt
        return []
    at = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return [
        Finding("vocabulary", f"the file tokenizes text differently from the source (from token {at} of a probe line)")
    ]


def compare(fm: FileModel, src: FileModel) -> list[Finding]:
    """Every difference between the file and the source, faults and notes (see the module docstring)."""
    findings = compare_hparams(fm, src)
    if any(f.where in ("d_model", "n_layers", "ffn_hidden", "n_heads", "n_kv_heads") for f in findings):
        return findings  # the tensors cannot be lined up
    kinds: dict = {}
    for name in src.linears:
        got, want = codes_of(fm, name), codes_of(src, name)
        heads = fm.cfg.n_heads if name.endswith("q_proj") else fm.cfg.n_kv_heads
        f = compare_codes(name, got, want, heads)
        if f is not None:
            findings.append(f)
            continue
        kind, f = compare_scale(name, fm, src, want, _scale_type(fm, name))
        if f is not None:
            kinds.setdefault(kind, []).append(f)
    for kind, fs in kinds.items():  # one relation on every linear is one converter bug: named once
        if len(fs) == len(src.linears) and len(src.linears) > 1:
            text = EVERY.get(kind) if isinstance(kind, str) else f"scale off by the same factor {kind:.6g}"
            findings.append(Finding("every linear", text))
        else:
            findings += fs
    for key, t in src.floats.items():
        if key == "head.weight" and src.cfg.tie_embeddings:
            continue
        got = fm.floats.get(key)
        where = gguf_name(key)
        if got is None:
            findings.append(Finding(where, "missing from the file"))
            continue
        stored = fm.head_dtype if key in ("tok_emb.weight", "head.weight") else "f32"
        if key in fm.hparams.get("missing", ()):
            findings.append(Finding(where, "missing from the file (a runtime refuses it or runs it at unit gain)"))
            continue
        f = compare_floats(where, got, t, stored)
        if f is not None:
            findings.append(f)
    return findings + compare_vocab(fm, src)
