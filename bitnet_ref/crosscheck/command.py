"""``python -m bitnet_ref.crosscheck`` (``bitnet-crosscheck``): is it my model, my converter or my runtime?

    python -m bitnet_ref.crosscheck FILE [--source SRC] [--runtime NAME ...] [--text T | --ids "1 2 3"] [--json]

FILE is the model file under suspicion (a GGUF of llama.cpp or bitnet.cpp, a Hugging Face BitNet directory, a
bitnet_ref checkpoint); SRC what it was made from (a bitnet_ref checkpoint, a Hugging Face directory, another
file). Three questions, in this order:

1. **converter**: does FILE encode SRC? Tensor by tensor, without running anything (tensors.py).
2. **runtime**: does each runtime compute what FILE encodes? Teacher-forced logits through the runtime (in a child
   process with a time limit) against the exact reference of FILE with the runtime's activation quantization:
   prefill vs incremental, 1 vs N threads (agreement.py). Runtimes: llama.cpp, transformers, bitnet_ref,
   bitnet_ref-fused, or ``module:function`` (runtimes.py). Default: llama.cpp for a GGUF, transformers for a
   Hugging Face directory, where installed.
3. **model**: everything agrees, so what FILE decodes is what the model computes: the model itself (run the doctor
   on its training run, the decode probe on the file).

The sequence is the prompt (``--text`` through FILE's vocabulary, or ``--ids``; by default a line of English, or
seeded ids for a file without vocabulary) continued greedily by the reference to ``--length`` positions.
Exit status: 0 model (everything agrees), 1 converter or runtime (named), 2 unusable input or a runtime that
could not be run (crashed, hung, wrong shape: one line each). Nothing is written.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial

import numpy as np
import torch

from bitnet_ref.checkpoint import CheckpointError
from bitnet_ref.cli import OneLineParser, run_quietly, whole_at_least
from bitnet_ref.crosscheck.agreement import MODE_TEXT, check_runtime, describe
from bitnet_ref.crosscheck.runtimes import BUILTIN, available
from bitnet_ref.crosscheck.tensors import compare
from bitnet_ref.decode.loader import read_file
from bitnet_ref.formats.file_model import FileModel
from bitnet_ref.formats.gguf_container import is_gguf
from bitnet_ref.formats.gguf_model import read_bitnet_gguf
from bitnet_ref.generate import DecodeError, generate
from bitnet_ref.runtime import kernels

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home"


class CrosscheckError(ValueError):
    """Unusable input to crosscheck; one line."""


def open_file(path, i2s_layout: str = "x86") -> FileModel:
    """The suspect file, read so that its converter faults can be named (missing norms read as unit gains)."""
    if is_gguf(path):
        return read_bitnet_gguf(path, i2s_layout=i2s_layout, missing_norms="unit")
    return read_file(path)


def sequence(fm: FileModel, args) -> tuple[list[int], str]:
    """(token ids, how they were made): the prompt, then the reference's greedy continuation."""
    V, ctx = fm.cfg.vocab_size, fm.cfg.context
    if args.ids is not None:
        try:
            prompt = [int(t) for t in args.ids.split()]
        except ValueError:
            raise CrosscheckError("--ids takes space-separated token ids") from None
        how = f"--ids ({len(prompt)} ids)"
    else:
        codec = fm.tokenizer
        text = args.text if args.text is not None else DEFAULT_TEXT
        try:
            if codec is None:  # a bitnet_ref checkpoint: bytes when it was trained on bytes
                prompt = list(text.encode("utf-8")) if V == 256 else [int(t) for t in text.split()]
            else:
                prompt = codec.encode(text)
            how = f"{text[:40]!r} through {getattr(codec, 'source', 'bytes')}"
        except ValueError:
            if args.text is not None:
                raise CrosscheckError("the file has no vocabulary to encode --text with; pass --ids") from None
            prompt = [int(t) for t in np.random.default_rng(0).integers(0, V, 12)]
            how = "12 seeded ids (the file has no vocabulary)"
    if not prompt or any(not 0 <= t < V for t in prompt):
        raise CrosscheckError(f"the prompt needs at least one token id, each in [0, {V})")
    length = min(args.length, ctx)
    if len(prompt) >= length:
        return prompt[:length], how
    model = fm.model(threads=1)
    cont = generate(model, [prompt], length - len(prompt)).tokens[0]
    return prompt + cont, how + f" + {len(cont)} greedy tokens of the reference"


def default_runtimes(path) -> list[str]:
    names = ["llama.cpp"] if is_gguf(path) else ["transformers"]
    return [n for n in names if available(n) is None]


def run(args) -> dict:
    t0 = time.perf_counter()
    if not kernels.available():
        raise CrosscheckError(f"crosscheck needs the C++ extension ({kernels.import_error()})")
    torch.set_num_threads(1)
    fm = open_file(args.file, args.i2s_layout)
    out = {"file": fm.source, "runtime_of_file": fm.runtime, "config": _cfg(fm), "notes": list(fm.notes)}
    findings = []
    if args.source is not None:
        src = read_file(args.source)
        out["source"] = src.source
        findings = compare(fm, src)
    out["tensors"] = [{"where": f.where, "relation": f.relation, "fault": f.fault} for f in findings]
    names = args.runtime or ([] if args.source is not None else default_runtimes(args.file))
    if not names and args.source is None:
        raise CrosscheckError(
            "nothing to compare: give --source (what the file was made from) and/or --runtime "
            f"({', '.join(BUILTIN)} or module:function; llama-cpp-python / transformers are not installed here)"
        )
    ids, how = sequence(fm, args) if names else ([], "none (no runtime to run)")
    out["sequence"] = {"ids": ids, "made": how}
    reports = []
    for name in names:
        if name not in BUILTIN and ":" not in name:
            raise CrosscheckError(f"runtime {name!r}: give one of {', '.join(BUILTIN)} or module:function")
        why = available(name) if name in BUILTIN else None
        if why is not None:
            raise CrosscheckError(f"runtime {name}: {why}")
        rep = check_runtime(name, fm, str(args.file), ids, threads=args.threads, timeout=args.timeout, expects=args.act)
        reports.append(rep)
    out["runtimes"] = [r.as_dict() for r in reports]
    out["descriptions"] = [describe(r) for r in reports]
    out.update(_verdict(findings, reports, args.source is not None))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _cfg(fm: FileModel) -> dict:
    c = fm.cfg
    return {
        k: getattr(c, k)
        for k in (
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden",
            "vocab_size",
            "ffn_act",
            "tie_embeddings",
            "rope_theta",
            "norm_eps",
        )
    }


def _verdict(findings, reports, had_source: bool) -> dict:
    faults = [f for f in findings if f.fault]
    broken = [r for r in reports if r.error is None and not r.ok]
    failed = [r for r in reports if r.error is not None]
    if faults:
        v = "converter"
        text = f"the file does not encode the source: {faults[0].line()}" + (
            f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        )
    elif broken:
        v = "runtime"
        text = f"the runtime does not compute what the file encodes: {describe(broken[0])}"
    elif failed:
        v = "error"
        text = failed[0].error
    elif not reports:
        v = "model"
        text = "the file encodes its source (no runtime was run: --runtime checks one)"
    else:
        v = "model"
        ran = ", ".join(r.runtime for r in reports)
        text = (
            f"{'the file encodes its source and ' if had_source else ''}{ran} "
            f"compute{'s' if len(reports) == 1 else ''} what the file encodes: the output is the model's own. Run the "
            "doctor on its training run and the decode probe on the file"
        )
    return {"verdict": v, "verdict_text": text, "where": sorted({w for r in broken for w in r.where})}


def render(r: dict) -> str:
    c = r["config"]
    rows = [
        f"file      {r['file']}",
        f"          {c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']}/{c['n_kv_heads']} heads, FFN "
        f"{c['ffn_hidden']} {c['ffn_act']}, vocab {c['vocab_size']}, rope_theta {c['rope_theta']:g}, eps "
        f"{c['norm_eps']:g}; written for {r['runtime_of_file']}",
    ]
    rows += [f"note      {n}" for n in r["notes"]]
    if "source" in r:
        faults = [t for t in r["tensors"] if t["fault"]]
        rows.append(f"source    {r['source']}")
        rows.append(f"tensors   {len(faults)} converter fault(s)")
        rows += [f"  - {t['where']}: {t['relation']}" for t in faults[:12]]
        notes = [t for t in r["tensors"] if not t["fault"]]
        if notes:
            rows.append(f"          notes: {len(notes)} tensor(s) equal up to their stored type's rounding")
    s = r["sequence"]
    rows.append(f"sequence  {len(s['ids'])} token ids: {s['made']}")
    for rep, text in zip(r["runtimes"], r["descriptions"]):
        rows.append(
            f"runtime   {rep['runtime']} (reference: activations {MODE_TEXT.get(rep['expects'], rep['expects'])})"
        )
        if rep["error"]:
            rows.append(f"          error: {rep['error']}")
            continue
        for label in ("prefill", "incremental"):
            a = rep[label]
            if a is not None:
                fd = "" if a["first_divergent"] is None else f", first divergent position {a['first_divergent']}"
                rows.append(
                    f"          {label:11s} top-1 {a['top1']:.3f}, logit difference median {a['median']:.3%}, largest "
                    f"{a['max_abs']:.3g} ({a['rel']:.2%}); float rounding allows {a['tol'][0]:.3%} / "
                    f"{a['tol'][1]:.2%}{fd}"
                )
        if rep["threads"]:
            t = rep["threads"]
            rows.append(
                f"          {t['n']} threads   vs 1 thread {t['vs_one']['rel']:.2%}, run twice {t['repeat']['rel']:.2%}"
            )
        rows += [f"          skipped: {k}" for k in rep["skipped"]]
        if not rep["ok"]:
            rows.append(f"          -> {text}")
    rows.append(f"verdict   {r['verdict'].upper()}: {r['verdict_text']}")
    rows.append(f"          ({r['seconds']:.1f} s)")
    return "\n".join(rows)


def build_parser(prog: str | None = None) -> OneLineParser:
    p = OneLineParser(
        prog=prog,
        description="Is it my model, my converter or my runtime? Compare a BitNet file with what it was made from "
        "(tensor by tensor) and with what runtimes compute from it (logits, against the exact reference).",
    )
    p.add_argument(
        "file",
        help="the model file: a GGUF (llama.cpp TQ1_0/TQ2_0, bitnet.cpp I2_S, F16...), a "
        "Hugging Face BitNet directory, or a bitnet_ref checkpoint",
    )
    p.add_argument(
        "--source",
        help="what FILE was made from: a bitnet_ref checkpoint, a Hugging Face directory or "
        "another file (enables the tensor-by-tensor converter check)",
    )
    p.add_argument(
        "--runtime",
        action="append",
        help=f"a runtime to check ({', '.join(BUILTIN)}, or "
        "module:function / file.py:function taking (model_path, token_ids, *, incremental, threads) and "
        "returning logits (T, V)); repeatable. Default without --source: llama.cpp for a GGUF, "
        "transformers for a directory, where installed",
    )
    p.add_argument(
        "--act",
        choices=("token", "block", "tensor", "none", "file"),
        default=None,
        help="the activation quantization the runtime is expected to compute (default: llama.cpp 'file', "
        "others 'token', the recipe)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="the prompt, through the file's vocabulary")
    src.add_argument("--ids", help="the prompt as space-separated token ids")
    p.add_argument("--length", type=whole_at_least(2), default=48, help="positions compared (default 48)")
    p.add_argument("--threads", type=whole_at_least(1), default=2, help="the N of the 1-vs-N-threads check (default 2)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a runtime may take per call (default 300)")
    p.add_argument(
        "--i2s-layout",
        choices=("x86", "arm"),
        default="x86",
        help="I2_S block layout of the file: x86 (default, the converter's) or arm (an ARM build's)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def main(argv=None, prog: str | None = "python -m bitnet_ref.crosscheck") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        report = run(args)
    except (CheckpointError, DecodeError, CrosscheckError) as e:
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else render(report))
    if report["verdict"] == "error":  # a runtime that could not be run: one line, whatever the format above
        print(f"error: {report['verdict_text']}", file=sys.stderr)
    return {"model": 0, "converter": 1, "runtime": 1}.get(report["verdict"], 2)


def cli(prog: str | None = None) -> int:
    """The console-script entry (bitnet-crosscheck)."""
    return run_quietly(partial(main, prog=prog or "bitnet-crosscheck"))
