"""Which modules of a user's model are ternary layers, and how to read its logits, embedding and head.

A model from elsewhere has no ``bitlinears()``: its ternary layers may be bitnet_ref's BitLinear, transformers'
AutoBitLinear, or a class written last week. ``find_ternary`` finds them two ways:

- by behaviour (the default): every module with a 2-D ``weight`` is run once on one-hot inputs. Per-token
  absmax activation quantization maps a one-hot row to itself exactly (127/1 x 1 rounds to 127, back to 1), so
  the output is one column of the weight the layer really multiplies by (times a norm's gain, where the layer
  has one). A ternary layer's column holds at most one magnitude ({-a, 0, +a}); a full-precision linear's holds
  as many as it has rows. The probe runs without gradients, in eval mode, with the RNG state put back;
- by name: ``layers=`` a list of module names, a glob pattern over names (``"*proj"``), a class (or tuple
  of classes), or a predicate ``(name, module) -> bool``.

``logits_of`` turns whatever the model returns (a tensor, a tuple whose first item is the logits, an object
with ``.logits``) into logits. What this is not: a conformance check of the layer's arithmetic (that is
``bitnet_ref.conform``); a layer found here only quantizes its weight to three levels.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

import torch
import torch.nn as nn

PROBE_COLUMNS = 16  # one-hot inputs per candidate: enough columns to tell one magnitude from many
MIN_OUT = 8  # a layer with fewer outputs cannot show "one magnitude" convincingly
LEVEL_TOL = 1e-3  # nonzero |outputs| of one column within this relative spread count as one magnitude
TERNARY_SHARE = 0.9  # share of probed (non-dead) columns that must show one magnitude


class WatchError(ValueError):
    """The watch cannot be set up on this model or these arguments; the message is one line."""


def _weight(module: nn.Module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() == 2 and w.is_floating_point() else None


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding a 2-D floating ``weight`` that take an input vector (embeddings take ids: left out)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if n and _weight(m) is not None and not isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    ]


class _Quiet:
    """Eval mode for one module tree and the RNG state, both put back exactly on exit."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.module.eval()
        return self

    def __exit__(self, *exc):
        for m, t in self.modes:
            m.training = t
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        return False


def quiet(module: nn.Module) -> _Quiet:
    """``with quiet(model):`` eval mode and no trace on the RNG for what runs inside (modes restored per module)."""
    return _Quiet(module)


def levels_per_column(module: nn.Module) -> list[int] | None:
    """Distinct nonzero magnitudes in each probed column of the weight ``module`` really applies; None if it
    cannot be run on a (1, k, in_features) input."""
    w = _weight(module)
    n_out, n_in = w.shape
    cols = torch.linspace(0, n_in - 1, min(PROBE_COLUMNS, n_in)).round().long().unique()
    x = torch.zeros(1, len(cols) + 1, n_in, dtype=w.dtype, device=w.device)  # the last row stays 0: the bias
    x[0, torch.arange(len(cols)), cols] = 1
    try:
        with torch.no_grad(), quiet(module):
            y = module(x)
    except Exception:  # any layer the probe cannot drive is simply not found by behaviour
        return None
    if not isinstance(y, torch.Tensor) or y.shape[:-1] != x.shape[:-1] or y.shape[-1] != n_out:
        return None
    y = y[0].double()
    y = (y[:-1] - y[-1:]).abs()  # (k, out): one column of the effective weight per row
    out = []
    for row in y:
        top = row.max().item()
        if not top > 0:
            continue  # a dead column says nothing
        mags = torch.sort(row[row > LEVEL_TOL * top]).values
        jumps = (mags.diff() > LEVEL_TOL * top).sum().item()
        out.append(1 + int(jumps))
    return out


def is_ternary(module: nn.Module) -> bool:
    """Its weight, seen through its forward on one-hot inputs, has one magnitude per column (three levels)."""
    w = _weight(module)
    if w is None or w.shape[0] < MIN_OUT:
        return False
    levels = levels_per_column(module)
    if not levels:
        return False
    return sum(v == 1 for v in levels) >= TERNARY_SHARE * len(levels)


def _selector(layers) -> Callable[[str, nn.Module], bool]:
    if isinstance(layers, str):
        return lambda n, m: fnmatch.fnmatchcase(n, layers)
    if isinstance(layers, type) or (isinstance(layers, tuple) and all(isinstance(c, type) for c in layers)):
        return lambda n, m: isinstance(m, layers)
    if callable(layers):
        return lambda n, m: bool(layers(n, m))
    names = set(layers)
    return lambda n, m: n in names


def _describe(layers) -> str:
    if isinstance(layers, (str, type, tuple)) or callable(layers):
        return repr(getattr(layers, "__name__", layers))
    return f"{len(list(layers))} names"


def find_ternary(model: nn.Module, layers=None) -> list[tuple[str, nn.Module]]:
    """(name, module) of the ternary layers of ``model``: named by ``layers``, else found by behaviour.
    WatchError, naming what was looked at and how to name the layers, when there are none."""
    if layers is not None:
        if not isinstance(layers, (str, type, tuple)) and not callable(layers):
            layers = list(layers)
            known = dict(model.named_modules())
            missing = [n for n in layers if n not in known]
            if missing:
                raise WatchError(
                    f"layers: {missing[0]!r} is not a module of {type(model).__name__} "
                    f"(its modules include {', '.join(list(known)[1:6])}, ...)"
                )
        pick = _selector(layers)
        found = [(n, m) for n, m in model.named_modules() if n and pick(n, m)]
        ok = {n for n, m in candidates(model)}
        bad = [n for n, m in found if n not in ok and not callable(getattr(m, "ternary_state", None))]
        if bad:
            raise WatchError(
                f"layers: {bad[0]!r} ({type(dict(found)[bad[0]]).__name__}) is no linear layer: it has no 2-D "
                "weight that multiplies an input"
            )
        if not found:
            raise WatchError(f"layers={_describe(layers)} matches no module of {type(model).__name__}")
        return found
    cands = candidates(model)
    found = [(n, m) for n, m in cands if is_ternary(m)]
    if not found:
        seen = ", ".join(n for n, _ in cands[:4]) + (", ..." if len(cands) > 4 else "")
        raise WatchError(
            f"no ternary layers found in {type(model).__name__}: none of its {len(cands)} modules with a 2-D "
            f"weight ({seen or 'none'}) multiplies by a weight of three levels; if its layers quantize in a "
            "way this probe misses, name them: watch(model, ..., layers=['model.layers.0.mlp.up_proj', ...]), "
            "layers='*proj', layers=MyBitLinear or layers=lambda name, module: ..."
        )
    return found


def logits_of(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The (B, T, V) logits of ``model(idx)``, whatever container they come back in."""
    out = model(idx)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise WatchError(
        f"{type(model).__name__}(token ids) returned {type(out).__name__}, not logits (a tensor, a tuple "
        "starting with them, or an object with .logits); pass logits=lambda model, ids: ..."
    )


def embedding_of(model: nn.Module) -> nn.Module | None:
    """The token embedding: ``get_input_embeddings()`` (transformers), ``tok_emb`` (bitnet_ref), else the one
    nn.Embedding."""
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Module):
            return emb
    emb = getattr(model, "tok_emb", None)
    if isinstance(emb, nn.Module):
        return emb
    embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return embs[0] if len(embs) == 1 else None


def head_of(model: nn.Module, ternary: list) -> nn.Module | None:
    """The output head: ``get_output_embeddings()`` (transformers), ``head`` (bitnet_ref), else the last linear
    layer with as many outputs as the embedding has rows; None if none (or it is one of the ternary layers)."""
    get = getattr(model, "get_output_embeddings", None)
    head = None
    if callable(get):
        try:
            head = get()
        except (NotImplementedError, AttributeError):
            head = None
    head = head if isinstance(head, nn.Module) else getattr(model, "head", None)
    emb = getattr(embedding_of(model), "weight", None)
    if not isinstance(head, nn.Module) and isinstance(emb, torch.Tensor):
        rows = [m for _, m in candidates(model) if _weight(m).shape[0] == emb.shape[0]]
        head = rows[-1] if rows else None
    if not isinstance(head, nn.Module) or _weight(head) is None or any(head is m for _, m in ternary):
        return None
    return head


def vocab_size_of(model: nn.Module, ternary: list) -> int | None:
    """V: the ``vocab_size`` of the model's ``config`` (transformers) or ``cfg`` (bitnet_ref), else the head's
    rows, else the embedding's."""
    for cfg in (getattr(model, "config", None), getattr(model, "cfg", None)):
        v = getattr(cfg, "vocab_size", None)
        if isinstance(v, int) and v > 1:
            return v
    head, emb = head_of(model, ternary), embedding_of(model)
    if head is not None:
        return int(head.weight.shape[0])
    w = getattr(emb, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None
