"""Reading a model from outside bitnet_ref: ``load(path)`` gives the fake-quant Transformer of a bitnet_ref
checkpoint or of a Hugging Face BitNet model.

Accepted: a bitnet_ref ``ckpt.pt``; a directory with ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``, or any ``*.safetensors``, or one ``weights_only`` ``pytorch_model.bin``/``.pt``);
or one such weights file with a ``config.json`` beside it. The weights are latent (bf16/fp16/fp32), or packed
uint8 codes with a ``weight_scale`` in either linear class's convention (``hf.py``). ``tokenizer.json``, when
present, becomes ``Imported.tokenizer``.

Everything is checked before it is used: the config (with ModelConfig's size caps) before any tensor is read, the
names, shapes and dtypes of all tensors before any is loaded, then every value (finite, scales positive, codes
ternary). Each problem is one ``FormatError`` line. What this is not: a writer (``export.py``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch

from bitnet_ref import quant as Q
from bitnet_ref.checkpoint import CheckpointError, load_checkpoint, validate
from bitnet_ref.formats.hf import (
    FLOAT_DTYPES,
    FormatError,
    IdCodec,
    Imported,
    config_from_hf,
    is_linear,
    name_pairs,
    read_json,
    read_tokenizer,
    unpack_rows,
)
from bitnet_ref.model import ModelConfig

_DTYPES = {
    **FLOAT_DTYPES,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F64": torch.float64,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}


def is_hf_source(path) -> bool:
    """True for what ``read`` takes as Hugging Face input: a directory, a .safetensors file, or a file with a
    config.json beside it (anything else is a bitnet_ref checkpoint for ``checkpoint.load_checkpoint``)."""
    p = Path(path)
    return p.is_dir() or p.suffix == ".safetensors" or (p.is_file() and (p.parent / "config.json").is_file())


def load(path):
    """The fake-quant Transformer (eval mode, CPU) of a bitnet_ref checkpoint or a Hugging Face BitNet model."""
    from bitnet_ref.checkpoint import build_model

    if is_hf_source(path):
        return build_model(read(path).checkpoint(), path)
    return build_model(load_checkpoint(path), path)


def _locate(path) -> tuple[Path, Path, list[Path]]:
    """(the path, its model root, its weight files) of a Hugging Face directory or weights file."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or directory")
    if p.is_dir():
        if not (p / "config.json").is_file():
            hint = f"; for a bitnet_ref run directory pass {p / 'ckpt.pt'}" if (p / "ckpt.pt").is_file() else ""
            raise FormatError(f"{p} has no config.json, so it is not a Hugging Face model directory{hint}")
        return p, p, weight_files(p)
    if not (p.parent / "config.json").is_file():
        raise FormatError(f"{p}: a weights file needs the config.json of its model beside it")
    return p, p.parent, [p]


def read(path) -> Imported:
    """Read a Hugging Face BitNet directory or weights file (or a bitnet_ref checkpoint with a config.json beside
    it) into our names, checked; FormatError (one line) for anything unusable."""
    p, root, files = _locate(path)
    with contextlib.ExitStack() as stack:
        src = TensorSource(files, stack)
        if src.ckpt is not None:  # a bitnet_ref checkpoint that happens to sit beside a config.json
            validate(src.ckpt, p)
            return Imported(
                ModelConfig.from_dict(src.ckpt["config"]), src.ckpt["model"], str(p), "bitnet_ref", ckpt=src.ckpt
            )
        cfg, kind = config_from_hf(read_json(root / "config.json", "model config"))
        state, ternary, inexact = _convert(cfg, kind, src)
    tok = root / "tokenizer.json"
    codec = read_tokenizer(tok, cfg.vocab_size) if tok.is_file() else IdCodec()
    form = {"none": "float", "online": "latent"}.get(kind, "packed")
    return Imported(cfg, state, f"{p} (Hugging Face BitNet, {form})", form, ternary, inexact, codec)


def weight_files(d: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            wm = read_json(d / index, "shard index").get("weight_map")
            if not isinstance(wm, dict) or not wm or not all(isinstance(f, str) for f in wm.values()):
                raise FormatError(f"{d / index} has no weight_map of tensor names to shard files")
            names = sorted(set(wm.values()))
            bad = next((f for f in names if Path(f).name != f or not (d / f).is_file()), None)
            if bad is not None:
                raise FormatError(f"{d / index} lists shard {bad!r:.80}, which is not a file in {d}")
            return [d / f for f in names]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin"):
        found = sorted(f for f in d.glob(pattern) if f.is_file())  # regular files only: a FIFO would block
        if found:
            return found
    loose = sorted(f for f in [*d.glob("*.bin"), *d.glob("*.pt")] if f.is_file())
    if len(loose) == 1:
        return loose
    raise FormatError(
        f"{d} has a config.json but no weights (model.safetensors, *.safetensors or pytorch_model.bin"
        + (f"; {len(loose)} .bin/.pt files, which is ambiguous)" if loose else ")")
    )


class TensorSource:
    """Names, shapes and dtypes of the tensors in some weights files, and each tensor on request (safetensors files
    are opened lazily, so nothing is read before every check has passed)."""

    def __init__(self, files: list[Path], stack: contextlib.ExitStack):
        self.meta, self.ckpt = {}, None  # name -> (shape, dtype or dtype string, file, handle or tensor)
        for f in files:
            if f.suffix == ".safetensors":
                self._add_safetensors(f, stack)
            else:
                self._add_pickle(f)

    def _add(self, name, shape, dtype, f, handle):
        if not isinstance(name, str):
            raise FormatError(f"{f} holds a tensor whose name is not a string")
        if name in self.meta:
            raise FormatError(f"tensor {name!r:.100} appears twice (in {self.meta[name][2].name} and {f.name})")
        self.meta[name] = (tuple(shape), dtype, f, handle)

    def _add_safetensors(self, f: Path, stack):
        from safetensors import safe_open

        try:
            h = stack.enter_context(safe_open(str(f), framework="pt"))
            for name in h.keys():
                sl = h.get_slice(name)
                self._add(name, sl.get_shape(), _DTYPES.get(sl.get_dtype(), sl.get_dtype()), f, h)
        except FormatError:
            raise
        except Exception as e:  # SafetensorError and friends: one line of their message
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise FormatError(f"{f} is not a readable safetensors file ({first})") from None

    def _add_pickle(self, f: Path):
        with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            try:
                obj = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception:
                try:  # mmap needs the zip format; older files are read whole
                    obj = torch.load(f, map_location="cpu", weights_only=True)
                except Exception as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    raise FormatError(f"{f} is not a weights_only PyTorch state dict ({first})") from None
        if isinstance(obj, dict) and "format" in obj:
            self.ckpt = obj
            return
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise FormatError(f"{f} is not a state dict of tensors")
        for name, t in obj.items():
            self._add(name, t.shape, t.dtype, f, t)

    def __contains__(self, name):
        return name in self.meta

    def names(self):
        return list(self.meta)

    def shape(self, name):
        return self.meta[name][0]

    def dtype(self, name):
        return self.meta[name][1]

    def get(self, name) -> torch.Tensor:
        _, _, f, h = self.meta[name]
        if isinstance(h, torch.Tensor):
            return h
        try:
            return h.get_tensor(name)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise FormatError(f"{f}: tensor {name!r:.80} cannot be read ({first})") from None


def _check_names(cfg: ModelConfig, kind: str, src: TensorSource) -> list:
    pairs = name_pairs(cfg)
    scales = (
        {hf + "_scale" for ours, hf, _ in pairs if is_linear(ours)} if kind in ("bitlinear", "autobitlinear") else set()
    )
    wanted = [hf for ours, hf, _ in pairs if not (ours == "head.weight" and cfg.tie_embeddings)] + sorted(scales)
    missing = [n for n in wanted if n not in src]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FormatError(f"tensor {missing[0]!r} is missing{more}: the weights do not match config.json")
    known = {hf for _, hf, _ in pairs} | scales
    extra = [n for n in src.names() if n not in known and not n.endswith("rotary_emb.inv_freq")]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise FormatError(
            f"unexpected tensor {extra[0]!r:.100}{more}: not part of a BitNet model with this config.json"
        )
    return pairs


def _check_shapes(cfg: ModelConfig, kind: str, src: TensorSource, pairs) -> None:
    """Dtypes and shapes of every tensor, before any is loaded."""
    floats, coded = tuple(FLOAT_DTYPES.values()), kind in ("bitlinear", "autobitlinear")
    for ours, hf, shape in pairs:
        if hf not in src:
            continue  # a tied lm_head left out
        got, dt = src.shape(hf), src.dtype(hf)
        if ours in ("tok_emb.weight", "head.weight") and len(got) == 2 and got[0] != cfg.vocab_size:
            raise FormatError(
                f"{hf} has {got[0]} rows but config.json says vocab_size {cfg.vocab_size}: the "
                "vocabulary does not match the embedding"
            )
        if is_linear(ours) and coded and (dt == torch.uint8 or kind == "bitlinear"):  # packed codes
            if dt != torch.uint8:
                raise FormatError(f"{hf} has dtype {dt}; linear_class bitlinear stores uint8 packed codes")
            if shape[0] % 4:
                raise FormatError(f"{hf}: {shape[0]} output rows cannot be packed four to a byte")
            want = (shape[0] // 4, shape[1])
        elif dt not in floats:
            raise FormatError(f"{hf} has dtype {dt}, expected float32, bfloat16 or float16")
        else:
            want = shape
        if got != want:
            raise FormatError(f"{hf} has shape {list(got)}, expected {list(want)}")
        scale = hf + "_scale"
        if scale in src and (math.prod(src.shape(scale)) != 1 or src.dtype(scale) not in floats):
            raise FormatError(f"{scale} must be one float, got shape {list(src.shape(scale))} {src.dtype(scale)}")


def _convert(cfg: ModelConfig, kind: str, src: TensorSource):
    """(our state dict, ternary (codes, beta) by BitLinear name or None, names of inexact latents)."""
    pairs = _check_names(cfg, kind, src)
    _check_shapes(cfg, kind, src, pairs)
    state, ternary, inexact = {}, ({} if kind in ("bitlinear", "autobitlinear") else None), []
    for ours, hf, _ in pairs:
        if hf not in src:
            continue
        if ternary is not None and is_linear(ours):
            codes, beta = _ternary(kind, hf, src)
            state[ours], exact = Q.weight_latent(codes, beta)
            ternary[ours[: -len(".weight")]] = (codes, beta)
            if not exact:
                inexact.append(ours[: -len(".weight")])
            continue
        state[ours] = finite_float(src, hf)
    if cfg.tie_embeddings:
        tie_head(state)
    return state, ternary, inexact


def finite_float(src: TensorSource, name: str) -> torch.Tensor:
    """Tensor ``name`` of the source as float32; FormatError if it holds NaN or inf."""
    t = src.get(name).to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise FormatError(f"{name} holds NaN or inf")
    return t


def tie_head(state: dict) -> None:
    """A tied model's head is its embedding: an lm_head the file holds anyway must equal it."""
    if "head.weight" in state and not torch.equal(state["head.weight"], state["tok_emb.weight"]):
        raise FormatError("lm_head.weight differs from model.embed_tokens.weight but tie_word_embeddings is true")
    state["head.weight"] = state["tok_emb.weight"]


def _ternary(kind: str, hf: str, src: TensorSource):
    """(codes int8 (N, K), beta float32 ()) of one linear stored as codes + weight_scale."""
    w = src.get(hf)
    if w.dtype == torch.uint8:
        codes = unpack_rows(w, hf)
    else:
        codes = _float_codes(w, hf)
    return codes, _beta(kind, hf, src)


def _float_codes(w: torch.Tensor, hf: str) -> torch.Tensor:
    codes = w.to(torch.float32)
    if not bool(((codes == -1) | (codes == 0) | (codes == 1)).all()):
        raise FormatError(f"{hf} is an offline (codes + scale) weight but holds values other than -1, 0, 1")
    return codes.to(torch.int8)


def _beta(kind: str, hf: str, src: TensorSource) -> torch.Tensor:
    """beta of a codes + weight_scale linear: weight_scale itself (autobitlinear) or its inverse (bitlinear)."""
    ws = float(src.get(hf + "_scale").reshape(()).to(torch.float64))
    if not (ws > 0 and ws < float("inf")):
        raise FormatError(f"{hf}_scale is {ws}: a scale must be a positive finite number")
    beta = torch.tensor(ws if kind == "autobitlinear" else 1.0 / ws, dtype=torch.float32)  # bitlinear divides by it
    if not (beta >= torch.tensor(Q.EPS, dtype=torch.float32) and bool(torch.isfinite(beta))):  # float32 floor
        raise FormatError(f"{hf}_scale {ws:g} gives beta {float(beta):g}, outside the absmean range [{Q.EPS}, inf)")
    return beta


# ---------------------------------------------------------------------------------------------- no latents


def read_file_model(path, *, head: str = "fp32"):
    """A Hugging Face BitNet directory as a FileModel (formats/file_model.py): the codes go straight to our packed
    rows (``ternary_blocks.hf_rows_to_packed``) and beta from ``weight_scale``, with no latent weight searched or
    held: a 2B-4T-sized directory reads in seconds. A latent (online) directory's codes are ``weight_quant``'s.
    ``head="int8"`` makes the embedding/head int8 rows a chunk at a time, never a float32 matrix."""
    from bitnet_ref.formats.file_model import FileModel, from_checkpoint
    from bitnet_ref.formats.ternary_blocks import hf_rows_to_packed, pack_codes
    from bitnet_ref.runtime.act_modes import LinearSpec
    from bitnet_ref.runtime.int8_head import HEAD_FORMATS
    from bitnet_ref.runtime.packed import PackedWeight

    if head not in HEAD_FORMATS:
        raise ValueError(f"head must be one of {HEAD_FORMATS}, not {head!r}")
    p, root, files = _locate(path)
    with contextlib.ExitStack() as stack:
        src = TensorSource(files, stack)
        if src.ckpt is not None:
            validate(src.ckpt, p)
            return from_checkpoint(src.ckpt, str(p))
        cfg, kind = config_from_hf(read_json(root / "config.json", "model config"))
        if kind == "none":
            raise FormatError(f"{p} is a float model (no quantization_config): it has no ternary weights")
        pairs = _check_names(cfg, kind, src)
        _check_shapes(cfg, kind, src, pairs)
        linears, floats, types, precisions = {}, {}, {}, {}
        for ours, hf, (n, *rest) in pairs:
            if hf not in src:
                continue
            if is_linear(ours):
                name, dt = ours[: -len(".weight")], src.dtype(hf)
                if kind == "online":
                    codes, beta = Q.weight_quant(src.get(hf).to(torch.float32))
                    packed = pack_codes(codes.numpy())
                elif dt == torch.uint8:
                    packed, beta = hf_rows_to_packed(src.get(hf).numpy(), hf), _beta(kind, hf, src)
                else:
                    packed, beta = pack_codes(_float_codes(src.get(hf), hf).numpy()), _beta(kind, hf, src)
                linears[name] = LinearSpec(PackedWeight(packed, beta, n, rest[0]))
                if kind != "online":
                    precisions[name] = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(
                        src.dtype(hf + "_scale"), "f32"
                    )
                types[name] = f"{str(dt).replace('torch.', '')}" + ("" if kind == "online" else " + weight_scale")
            elif ours in ("tok_emb.weight", "head.weight") and head == "int8":
                floats[ours] = _int8_rows(src, hf)
            else:
                t = src.get(hf).to(torch.float32)
                if not bool(torch.isfinite(t).all()):
                    raise FormatError(f"{hf} holds NaN or inf")
                floats[ours] = t
    tok = root / "tokenizer.json"
    codec = read_tokenizer(tok, cfg.vocab_size) if tok.is_file() else IdCodec()
    emb_dtype = str(src.dtype(name_pairs(cfg)[0][1])).replace("torch.", "")
    hp = dict(
        arch="BitNetForCausalLM",
        linear_kind=kind,
        rope_theta=cfg.rope_theta,
        norm_eps=cfg.norm_eps,
        vocab=cfg.vocab_size,
        tied=cfg.tie_embeddings,
        head_type=emb_dtype,
    )
    return FileModel(
        cfg,
        linears,
        floats,
        f"{p} (Hugging Face BitNet, {kind})",
        "hf",
        "transformers",
        tokenizer=codec,
        tensor_types=types,
        scale_types=precisions,
        hparams=hp,
    )


def _int8_rows(src: TensorSource, hf: str, chunk: int = 1024):
    """Int8Rows of a (V, d) float tensor, ``chunk`` rows at a time (safetensors slices; no float32 matrix)."""
    from bitnet_ref.runtime.int8_head import Int8Rows, quantize_rows_into

    V, d = src.shape(hf)
    rows = Int8Rows.empty(V, d)
    _, _, _, h = src.meta[hf]
    for r in range(0, V, chunk):
        e = min(r + chunk, V)
        part = h[r:e] if isinstance(h, torch.Tensor) else h.get_slice(hf)[r:e]
        quantize_rows_into(part.to(torch.float32), rows.q[r:e], rows.scale[r:e])
    return rows


__all__ = ["load", "read", "read_file_model", "is_hf_source", "FormatError", "CheckpointError"]
