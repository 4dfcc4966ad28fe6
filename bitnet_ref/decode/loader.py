"""The decode loader: a checkpoint or a Hugging Face BitNet directory, assembled into a model that decodes.

It sits above the layers it assembles (runtime/: packed layers, int8 head, fused step; formats/: the readers).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitnet_ref.checkpoint import build_model, load_checkpoint
from bitnet_ref.device import DeviceError, resolve_device
from bitnet_ref.formats import hf_read
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime.fused import FusedTransformer
from bitnet_ref.runtime.int8_head import HEAD_FORMATS, to_int8_head
from bitnet_ref.runtime.packed import to_packed

BACKENDS = ("packed", "torch")


@dataclass
class Loaded:
    model: Transformer  # in eval mode, on `device`
    ckpt: dict  # the checkpoint as load_checkpoint returned it (weights included); for a Hugging Face directory,
    # hf_read's equivalent (config, model, step None)
    cfg: ModelConfig
    backend: str  # the backend actually used: "packed" or "torch"
    reason: str | None  # why the backend differs from the one asked for, else None
    tokenizer: object = None  # a Hugging Face directory's text codec (hf.TextCodec, or hf.IdCodec without one)


def load_for_decode(
    path,
    backend: str = "packed",
    device: str = "cpu",
    *,
    threads: int | None = None,
    format: str = "2",
    head: str = "fp32",
    fused: bool = False,
) -> Loaded:
    """Load a checkpoint for decoding. Raises CheckpointError/DecodeError (one line) for anything unusable.

    ``path`` is a bitnet_ref checkpoint or a Hugging Face BitNet directory (``formats.hf_read.read``); a packed one's
    codes and beta go to the packed layers exactly as stored. backend="packed" swaps in PackedBitLinear (CPU
    only, needs the extension); "torch" keeps the fake-quant forward. A quant="none" checkpoint always decodes
    through torch, and ``reason`` says so.

    ``head="int8"`` stores the output head (and a tied embedding) as int8 rows (runtime/int8_head.py: a quarter of
    the bytes a token reads there; logits close to, not equal to, the float head's). ``fused=True`` runs each token
    in one C++ call (runtime/fused.py: faster; close to, not bit-identical with, the exact packed path). Both need
    the packed backend; the defaults keep the packed path bit-exact with the training forward.
    """
    if backend not in BACKENDS:
        raise DecodeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if head not in HEAD_FORMATS:
        raise DecodeError(f"unknown head format {head!r}; choose one of {', '.join(HEAD_FORMATS)}")
    ternary = tokenizer = None
    if hf_read.is_hf_source(path):
        imported = hf_read.read(path)  # FormatError, a CheckpointError, for anything unusable
        ckpt, ternary, tokenizer = imported.checkpoint(), imported.ternary, imported.tokenizer
    else:
        ckpt = load_checkpoint(path)  # weights_only=True; missing/corrupt/foreign/unsafe/NaN -> CheckpointError
    model = build_model(ckpt, path)
    cfg, reason = model.cfg, None
    try:
        dev = resolve_device(device, allow_auto=False)  # cpu, cuda or cuda:N: decoding never guesses
    except DeviceError as e:
        raise DecodeError(str(e)) from None
    if backend == "packed" and cfg.quant != "ternary":
        backend, reason = "torch", f"quant={cfg.quant!r} checkpoint: no ternary weights to pack, decoded by torch"
    if backend == "packed":
        if dev.type != "cpu":
            raise DecodeError(f"the packed backend runs on the CPU, not {dev}; use --device cpu or --backend torch")
        to_packed(model, threads=threads, ternary=ternary, format=format)
        if head == "int8":
            to_int8_head(model, threads=threads)
        if fused:
            model = FusedTransformer(model, threads=threads)
    elif head != "fp32" or fused:
        raise DecodeError(
            f"--head int8 and --fused need the packed backend (this decode runs on {backend}"
            + (f": {reason})" if reason else ")")
        )
    return Loaded(model.to(dev), ckpt, cfg, backend, reason, tokenizer)
