"""Export a bitnet_ref checkpoint as a Hugging Face BitNet model directory that transformers loads offline, or as a
GGUF file for llama.cpp.

    python -m bitnet_ref.export runs/x/ckpt.pt --format hf --out my-bitnet [--form latent|packed] [--force]
    python -m bitnet_ref.export runs/x/ckpt.pt --format gguf --out model.gguf [--emb-type f16|f32] [--approximate]

The GGUF (llama.cpp's ``bitnet`` architecture, ternary linears as TQ2_0 with beta exact) is written by
``gguf_file.py``, which says what llama.cpp's graph can compute and so what is refused; it needs the optional
``gguf`` package. The rest of this docstring is about the Hugging Face directory.

then ``AutoModelForCausalLM.from_pretrained("my-bitnet")`` and ``AutoTokenizer.from_pretrained("my-bitnet")``.
The directory holds config.json, model.safetensors and, for byte-level models, tokenizer.json +
tokenizer_config.json (see ``hf.py`` for the forms and names); a ``--tokenizer`` run's own tokenizer.json
(beside its checkpoint, checked against the recorded sha256) is copied instead. ``--form latent`` (default) keeps
the fp32 latent weights (transformers' online mode: training can go on there); ``--form packed`` writes the ternary
codes and beta exactly as ``quant.weight_quant`` gives them, packed 2 bits a weight (offline mode, about 16x smaller).

Refused, one line and exit 2: checkpoints whose forward transformers cannot compute (ablations other than
const-wd; a per-linear-norm model whose q/k/v or gate/up gains differ), ``--form packed`` of a quant="none"
model or of a width that is not a multiple of 4, and an existing ``--out`` without ``--force`` (``--force``
replaces only an earlier model directory). The directory is written beside its target and renamed into place,
so a crash leaves the old directory or the new one, never a half-written one.

What this is not: an importer (``hf_read.py``; ``gguf_model.read_bitnet_gguf`` reads any BitNet GGUF).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from bitnet_ref import quant as Q
from bitnet_ref.checkpoint import CheckpointError, load_checkpoint
from bitnet_ref.cli import OneLineParser, run_quietly
from bitnet_ref.files import atomic_dir
from bitnet_ref.formats import gguf_file as GF
from bitnet_ref.formats.hf import (
    FormatError,
    byte_tokenizer,
    hf_config,
    is_linear,
    name_pairs,
    official_state,
    pack_rows,
    tokenizer_config,
)
from bitnet_ref.model import ModelConfig

FORMS = ("latent", "packed")
HARMLESS_ABLATIONS = {"const-wd"}  # changes the weight-decay schedule only, not the forward


def hf_tensors(cfg: ModelConfig, state: dict, form: str) -> dict[str, torch.Tensor]:
    """HF-named tensors of an official-layout state dict: fp32 latents, or packed codes + weight_scale = beta."""
    out = {}
    for ours, hf, _ in name_pairs(cfg):
        if ours == "head.weight" and cfg.tie_embeddings:
            continue  # tied: lm_head is embed_tokens (transformers' own save leaves it out too)
        t = state[ours].detach().to(torch.float32)
        if is_linear(ours) and form == "packed":
            codes, beta = Q.weight_quant(t)  # what our forward multiplies with: (N, K) int8, () float32
            out[hf] = pack_rows(codes)
            out[hf + "_scale"] = beta.reshape(1).clone()  # autobitlinear offline: y = linear(x, codes) * beta
        else:
            out[hf] = t.clone().contiguous()
    return out


def refuse_unrepresentable(cfg: ModelConfig, form: str) -> None:
    ablations = [a for a in cfg.ablate if a not in HARMLESS_ABLATIONS]
    if ablations:
        raise FormatError(
            f"the checkpoint was trained with ablation {', '.join(ablations)}, whose forward is not "
            "BitNet's; transformers would compute something else"
        )
    if form == "packed" and cfg.quant != "ternary":
        raise FormatError(
            f"a quant={cfg.quant!r} checkpoint has no ternary weights to pack; use --form latent (a float BitNet model)"
        )


def export_hf(ckpt: dict, out, *, form: str = "latent", force: bool = False, tokenizer_json: str | None = None) -> dict:
    """Write ``ckpt`` (as load_checkpoint returns it) to the directory ``out``; returns a summary dict.
    ``tokenizer_json``: the text of the run's tokenizer.json, for a ``--tokenizer`` run (checked against the
    sha256 its checkpoint records)."""
    if form not in FORMS:
        raise FormatError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    out = Path(out)
    check_target(out, force)
    cfg = ModelConfig.from_dict(ckpt["config"])
    refuse_unrepresentable(cfg, form)
    notes = (
        []
        if cfg.layout == "official"
        else ["per-linear-norm layout: q/k/v and gate/up gains are equal, written as the shared block norms"]
    )
    cfg, state = official_state(cfg, ckpt["model"])
    tensors = hf_tensors(cfg, state, form)
    if cfg.quant != "ternary":
        notes.append("quant='none': no quantization_config, so transformers runs the linears in float, as we do")
    step = ckpt.get("step")
    files = {
        "config.json": _json_writer(hf_config(cfg, form)),
        "model.safetensors": lambda p: _save_safetensors(
            tensors, p, {"bitnet_ref_form": form, "bitnet_ref_step": str(step)}
        ),
    }
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    tok = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else None
    if tok is not None:
        if tokenizer_json is None:
            notes.append("no tokenizer: the run's tokenizer.json was not found beside the checkpoint")
        elif hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest() != tok.get("sha256"):
            raise FormatError(
                "the tokenizer.json beside the checkpoint is not the one it was trained with "
                f"(sha256 recorded {str(tok.get('sha256'))[:16]})"
            )
        else:
            files["tokenizer.json"] = lambda p: p.write_text(tokenizer_json, encoding="utf-8")
            files["tokenizer_config.json"] = _json_writer(tokenizer_config(cfg.context))
    elif cfg.vocab_size == 256 and data.get("kind", "stdlib") in ("stdlib", "text"):
        files["tokenizer.json"] = lambda p: p.write_text(byte_tokenizer().to_str(), encoding="utf-8")
        files["tokenizer_config.json"] = _json_writer(tokenizer_config(cfg.context))
    else:
        notes.append("no tokenizer: the checkpoint's tokens are ids from token files, not bytes")
    atomic_dir(out, files, before_replace=lambda: check_target(out, force))  # checked again right before
    return {
        "out": str(out),
        "form": form,
        "files": sorted(files),
        "tensors": len(tensors),
        "bytes": sum((out / f).stat().st_size for f in files),
        "step": step,
        "notes": notes,
    }


def _json_writer(obj):
    return lambda p: p.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _save_safetensors(tensors, path, meta):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", **meta})  # transformers wants format=pt


def check_target(out: Path, force: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise FormatError(f"{out} exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file()):
        raise FormatError(
            f"{out} exists and is not a model directory (no config.json); not replacing it, even with --force"
        )


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m bitnet_ref.export",
        description="Export a bitnet_ref checkpoint as a "
        "Hugging Face BitNet model directory (transformers' BitNetForCausalLM, loaded offline) or as "
        "a GGUF file for llama.cpp's bitnet architecture.",
    )
    p.add_argument("checkpoint", help="a ckpt.pt written by python -m bitnet_ref.train")
    p.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="hf: a Hugging Face model directory (default); gguf: one .gguf file for llama.cpp (needs the "
        "gguf package; the model must be SwiGLU with a tied head)",
    )
    p.add_argument("--out", required=True, help="the model directory (hf) or file (gguf) to write; see --force")
    p.add_argument(
        "--form",
        choices=FORMS,
        default=None,
        help="hf only. latent: fp32 latent weights, transformers' online quantization, trainable there "
        "(default); packed: 2-bit ternary codes + beta, offline quantization, about 16x smaller",
    )
    p.add_argument(
        "--emb-type",
        choices=GF.EMB_TYPES,
        default=None,
        help="gguf only: the token embedding's type, which llama.cpp also uses as the output head: f16 "
        "(default, as llama.cpp's converter writes it) or f32 (exact)",
    )
    p.add_argument(
        "--approximate",
        action="store_true",
        help="gguf only: write linears whose input width is not a multiple of 256 (which TQ2_0 cannot "
        "hold) as F16 codes; llama.cpp then multiplies them with fp16 activations, not int8",
    )
    p.add_argument(
        "--ids-only",
        action="store_true",
        help="gguf only: export a model trained with a subword tokenizer without its vocabulary "
        "(llama.cpp is then fed token ids); without it such a model is refused",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier export of that format")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format == "gguf" and args.form is not None:
        parser.error("--form applies to --format hf only (a GGUF holds the packed ternary codes)")
    if args.format == "hf" and (args.emb_type is not None or args.approximate or args.ids_only):
        parser.error("--emb-type, --approximate and --ids-only apply to --format gguf only")
    try:
        if args.format == "gguf":
            GF.gguf_module()  # before reading a large checkpoint: is the writer there at all?
            summary = GF.export_gguf(
                load_checkpoint(args.checkpoint),
                args.out,
                emb_type=args.emb_type or "f16",
                approximate=args.approximate,
                force=args.force,
                ids_only=args.ids_only,
            )
        else:
            beside = Path(args.checkpoint).parent / "tokenizer.json"
            tokenizer_json = beside.read_text(encoding="utf-8") if beside.is_file() else None
            summary = export_hf(
                load_checkpoint(args.checkpoint),
                args.out,
                form=args.form or "latent",
                force=args.force,
                tokenizer_json=tokenizer_json,
            )
    except CheckpointError as e:  # FormatError is one too
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    elif args.format == "gguf":
        print(
            f"wrote {summary['out']}: GGUF for llama.cpp (arch bitnet), step {summary['step']}, "
            f"{summary['tq2_0']} TQ2_0 + {summary['f16_linears']} F16 linears, token_embd "
            f"{summary['emb_type'].upper()}, vocabulary {summary['vocab']}, {summary['bytes'] / 1e6:.2f} MB"
        )
        for n in summary["notes"]:
            print(f"note: {n}")
    else:
        print(
            f"wrote {summary['out']}: Hugging Face BitNet, {summary['form']} form, step {summary['step']}, "
            f"{summary['tensors']} tensors, {summary['bytes'] / 1e6:.2f} MB ({', '.join(summary['files'])})"
        )
        for n in summary["notes"]:
            print(f"note: {n}")
    return 0


def cli() -> int:
    """The ``bitnet-export`` console script."""
    return run_quietly(main)


if __name__ == "__main__":
    sys.exit(cli())
