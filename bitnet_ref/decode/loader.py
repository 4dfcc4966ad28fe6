"""The decode loader: a checkpoint, a Hugging Face BitNet directory or a BitNet GGUF, assembled into a model that
decodes.

Files that hold ternary codes and no latents (any BitNet GGUF: formats/gguf_model.py; a Hugging Face directory in
microsoft's packed layout: hf_read.read_file_model) are read as a ``FileModel`` and built straight into packed layers
(runtime/assemble.py): no latent weight is searched or allocated, so a 2B-4T-sized file loads in seconds. It sits
above the layers it assembles (runtime/: packed layers, int8 head, fused step; formats/: the readers).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitnet_ref.checkpoint import CheckpointError, build_model, load_checkpoint
from bitnet_ref.device import DeviceError, resolve_device
from bitnet_ref.formats import hf_read
from bitnet_ref.formats.file_model import FileModel, from_checkpoint
from bitnet_ref.formats.gguf_container import is_gguf
from bitnet_ref.formats.gguf_model import read_bitnet_gguf
from bitnet_ref.formats.hf import config_from_hf, read_json
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.act_modes import LinearSpec
from bitnet_ref.runtime.assemble import ACT_CHOICES
from bitnet_ref.runtime.fused import FusedTransformer
from bitnet_ref.runtime.int8_head import HEAD_FORMATS, to_int8_head
from bitnet_ref.runtime.packed import PackedWeight, to_packed

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
    file_model: FileModel | None = None  # a file read without latents (GGUF, packed HF directory), else None


def holds_codes(path) -> bool:
    """True for what is read as a FileModel: a GGUF file, or a Hugging Face directory whose config says its linears
    are stored as codes + weight_scale (a bitnet_ref checkpoint or a latent directory is read as before)."""
    if is_gguf(path):
        return True
    if not hf_read.is_hf_source(path):
        return False
    from pathlib import Path

    p = Path(path)
    root = p if p.is_dir() else p.parent
    try:
        _, kind = config_from_hf(read_json(root / "config.json", "model config"))
    except CheckpointError:
        return False  # the full reader below says what is wrong with it
    return kind in ("bitlinear", "autobitlinear")


def read_file(path, head: str = "fp32") -> FileModel:
    """The FileModel of any model file: a GGUF, a Hugging Face directory (latent or packed), or a bitnet_ref
    checkpoint (its codes and beta). CheckpointError (FormatError is one), one line, for anything unusable."""
    if is_gguf(path):
        return read_bitnet_gguf(path, head=head)
    if hf_read.is_hf_source(path):
        return hf_read.read_file_model(path, head=head)
    return from_checkpoint(load_checkpoint(path), str(path))


def load_for_decode(
    path,
    backend: str = "packed",
    device: str = "cpu",
    *,
    threads: int | None = None,
    format: str = "2",
    head: str = "fp32",
    fused: bool = False,
    act: str = "token",
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

    A GGUF file or a packed Hugging Face directory (``holds_codes``) is built from its codes (``load_file``);
    ``act`` picks how its linears quantize activations there (runtime/assemble.py: "token", the recipe, by
    default; "file", what the file's own runtime computes).
    """
    if backend not in BACKENDS:
        raise DecodeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if head not in HEAD_FORMATS:
        raise DecodeError(f"unknown head format {head!r}; choose one of {', '.join(HEAD_FORMATS)}")
    if act not in ACT_CHOICES:
        raise DecodeError(f"unknown activation mode {act!r}; choose one of {', '.join(ACT_CHOICES)}")
    if holds_codes(path) or act != "token":
        return load_file(path, backend, device, threads=threads, format=format, head=head, fused=fused, act=act)
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


def load_file(
    path,
    backend: str = "packed",
    device: str = "cpu",
    *,
    threads: int | None = None,
    format: str = "2",
    head: str = "fp32",
    fused: bool = False,
    act: str = "token",
) -> Loaded:
    """``load_for_decode`` for files read as a FileModel: the packed model of their codes (or, backend "torch",
    the plain-torch recipe model of them), never a latent."""
    if device != "cpu":
        raise DecodeError(f"a file's codes decode on the CPU here, not {device}; use --device cpu")
    if backend == "packed" and not kernels.available():
        raise DecodeError(f"the packed backend needs the C++ extension ({kernels.import_error()})")
    fm = read_file(path, head=head if backend == "packed" else "fp32")
    if format != "2":
        fm.linears = {n: _repacked(s, format) for n, s in fm.linears.items()}
    if backend == "torch":
        if head != "fp32" or fused or act != "token":
            raise DecodeError("--head int8, --fused and --act need the packed backend")
        try:
            model = fm.reference()
        except ValueError as e:
            raise DecodeError(str(e)) from None
    else:
        model = fm.model(act=act, threads=threads)
        if fused:
            odd = [n for n, s in fm.linears.items() if s.block_scales is not None] if act == "token" else [act]
            if odd:
                raise DecodeError(
                    f"the fused path computes the recipe with one scale per tensor ({odd[0]}); drop --fused"
                )
            model = FusedTransformer(model, threads=threads)
    return Loaded(model, fm.checkpoint(), fm.cfg, backend, None, fm.tokenizer, fm)


def _repacked(spec: LinearSpec, format: str) -> LinearSpec:
    w = spec.weight
    codes = kernels.unpack_ternary(w.packed, w.n, w.k)
    packed = kernels.pack_ternary(codes, format=format)
    return LinearSpec(PackedWeight(packed, w.beta, w.n, w.k, format), spec.block_scales, spec.act, spec.input_dtype)
