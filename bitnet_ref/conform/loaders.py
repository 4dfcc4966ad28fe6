"""Loaders: how the checker puts a probe weight into a layer that holds codes and a scale, not a latent weight.

Inference layers store what an exporter wrote: ternary codes (packed or not) and a scale, in the layer's own
convention. A loader quantizes the probe weight W the reference way (quant.weight_quant: absmean beta, codes
clamp(round(W / beta), -1, 1)) and writes them in that convention, so the checks see the layer's forward (its
activation quantizer, how it applies the stored scale, its bias, dtypes and shapes). The layer's own weight
quantizer does not exist, and the checks of it say so.

Built in (and picked automatically for transformers' classes):
  hf-bitlinear              transformers.integrations.bitnet.BitLinear: uint8 ``weight`` (out/4, in), four rows
                            a byte as transformers' own ``pack_weights`` packs them, ``weight_scale`` = 1/beta (the
                            layer divides by it). Built with bias=False and the probe's dtype, as a model loads it.
  hf-autobitlinear-offline  transformers.integrations.bitnet.AutoBitLinear(online_quant=False): ``weight`` holds
                            the codes, ``weight_scale`` = beta (the layer multiplies by it). Built in the probe's
                            dtype.
  ternary                   a latent-shaped ``weight`` that holds codes * beta (a checkpoint converted for
                            inference, e.g. microsoft/BitNet's fp16 path).
Your own: ``--load MODULE:FUNCTION`` where FUNCTION(layer, weight) writes the float32 (out, in) probe weight
into the layer however the layer stores it (see docs/conform.md). Not a converter for real checkpoints.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from bitnet_ref.conform.layer import ConformError
from bitnet_ref.quant import weight_quant

HF_MODULE = "transformers.integrations.bitnet"


@dataclass(frozen=True)
class Loader:
    """name: as --load spells it; what: how the probe weight is stored, for the report; load(layer, w);
    build_kwargs(dtype): constructor defaults (the user's --init-kwargs win); needs(layer, k, n): ConformError
    when the built layer does not have what load writes."""

    name: str
    what: str
    load: Callable[[torch.nn.Module, torch.Tensor], None]
    build_kwargs: Callable[[torch.dtype], dict] = field(default=lambda dtype: {})
    needs: Callable[[torch.nn.Module, int, int], None] = field(default=lambda layer, k, n: None)

    def check(self, layer, k, n):
        self.needs(layer, k, n)


def _tensor(layer, name, what):
    t = getattr(layer, name, None)
    if not isinstance(t, torch.Tensor):
        raise ConformError(f"loader {what}: the layer has no tensor attribute {name!r}")
    return t


def _load_hf_packed(layer, w):
    codes, beta = weight_quant(w.float())
    pack = getattr(importlib.import_module(type(layer).__module__), "pack_weights", None)
    if pack is None:
        raise ConformError(f"loader hf-bitlinear: {type(layer).__module__} has no pack_weights; use --load")
    layer.weight.copy_(pack(codes.to(torch.int8).clone()).to(layer.weight.device))
    layer.weight_scale.fill_(float(1 / beta))


def _needs_hf_packed(layer, k, n):
    weight, scale = _tensor(layer, "weight", "hf-bitlinear"), _tensor(layer, "weight_scale", "hf-bitlinear")
    if weight.dtype != torch.uint8 or tuple(weight.shape) != (n // 4, k) or n % 4:
        raise ConformError(
            f"loader hf-bitlinear: expected a uint8 weight of shape (out/4, in) = ({n // 4}, {k}) and out a "
            f"multiple of 4, got {weight.dtype} {tuple(weight.shape)} for out={n}"
        )
    if scale.numel() != 1:
        raise ConformError(f"loader hf-bitlinear: expected one weight_scale, got shape {tuple(scale.shape)}")


def _load_hf_offline(layer, w):
    codes, beta = weight_quant(w.float())
    layer.weight.copy_(codes.to(layer.weight.dtype))
    layer.weight_scale.fill_(float(beta))


def _needs_codes_weight(name):
    def needs(layer, k, n):
        weight = _tensor(layer, "weight", name)
        if not weight.is_floating_point() or tuple(weight.shape) != (n, k):
            raise ConformError(
                f"loader {name}: expected a floating-point weight of shape (out, in) = ({n}, {k}), "
                f"got {weight.dtype} {tuple(weight.shape)}"
            )
        if name == "hf-autobitlinear-offline" and _tensor(layer, "weight_scale", name).numel() != 1:
            raise ConformError(f"loader {name}: expected one weight_scale")

    return needs


def _load_ternary(layer, w):
    codes, beta = weight_quant(w.float())
    layer.weight.copy_((codes.float() * beta).to(layer.weight.dtype))


BUILT_IN = {
    "hf-bitlinear": Loader(
        "hf-bitlinear",
        "packed uint8 codes (transformers' pack_weights) and weight_scale = 1/beta",
        _load_hf_packed,
        lambda dtype: {"bias": False, "dtype": dtype},
        _needs_hf_packed,
    ),
    "hf-autobitlinear-offline": Loader(
        "hf-autobitlinear-offline",
        "the codes in weight and weight_scale = beta",
        _load_hf_offline,
        lambda dtype: {"dtype": dtype},
        _needs_codes_weight("hf-autobitlinear-offline"),
    ),
    "ternary": Loader(
        "ternary",
        "codes * beta in weight (quantized by the loader)",
        _load_ternary,
        needs=_needs_codes_weight("ternary"),
    ),
}


def import_object(target: str, what: str):
    """MODULE:NAME (NAME may be dotted) -> the object; ConformError in one line for anything wrong."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise ConformError(f"expected MODULE:{what.upper()} (e.g. bitnet_ref.model:BitLinear), got {target!r}")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # the user's module: any import-time error is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConformError(f"cannot import {mod_name}: {type(e).__name__}: {first}".rstrip(": ")) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConformError(f"{mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConformError(f"{target} is a {type(obj).__name__}, not a {what} or callable")
    return obj


def resolve(spec) -> Loader | None:
    """A Loader from a built-in name, MODULE:FUNCTION, a Loader or a callable(layer, weight); None stays None."""
    if spec is None or isinstance(spec, Loader):
        return spec
    if callable(spec):
        return Loader(getattr(spec, "__qualname__", repr(spec)), "written by the user's loader", spec)
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    if ":" not in spec:
        raise ConformError(f"unknown loader {spec!r}: use one of {', '.join(BUILT_IN)} or MODULE:FUNCTION")
    fn = import_object(spec, "function")
    try:
        inspect.signature(fn).bind(None, None)
    except (TypeError, ValueError):
        raise ConformError(f"loader {spec} must take (layer, weight)") from None
    return Loader(spec, f"written by {spec}", fn)


def auto_loader(factory, init_kwargs: dict) -> Loader | None:
    """The built-in loader for transformers' code-holding classes, None for everything else."""
    if getattr(factory, "__module__", None) != HF_MODULE:
        return None
    name = getattr(factory, "__qualname__", "")
    if name == "BitLinear":
        return BUILT_IN["hf-bitlinear"]
    if name == "AutoBitLinear" and not init_kwargs.get("online_quant", False):
        return BUILT_IN["hf-autobitlinear-offline"]
    return None
