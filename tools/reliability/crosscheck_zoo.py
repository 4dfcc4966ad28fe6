"""The crosscheck fault zoo: is each converter fault and each runtime fault named on the right side, and are the
real runtimes on good files never accused?

    python tools/reliability/crosscheck_zoo.py [--checkpoint CKPT | --steps 120] [--only converter|runtime|good]
                                               [--threads 2] [--json FILE] [--keep DIR]

A source model (a checkpoint llama.cpp's bitnet graph can run: SwiGLU, tied head, widths 256/512; trained here
for ``--steps`` unless given) is exported as a good GGUF (bitnet_ref's exporter), then:

- **converter faults**, files made from the good one with one bug each, the way converters get them wrong: one
  layer's scale inverted (divided instead of multiplied), every scale times the share of nonzero codes
  (re-quantized from dequantized weights), every scale off by a constant, a sub-norm missing, a sub-norm left at
  unit gain, one layer's codes transposed, one layer's codes sign-flipped, q/k rows permuted for interleaved RoPE,
  a wrong RoPE theta, a wrong norm eps, wrong block scales. Each is checked as ``crosscheck FILE --source CKPT``
  and must be named as *converter*, on the right tensor;
- **runtime faults**, adapters (the functions below, run as ``--runtime tools/reliability/crosscheck_zoo.py:NAME``)
  that compute the good file with one bug each: activations quantized per tensor instead of per token, an incremental
  path whose KV cache sits one position off, a prefill that writes its second half over the first (microsoft/BitNet
  #617), a thread race, kernels with empty bodies (#547); each must be named *runtime*, in the right place.
  Runtimes that crash, hang or return the wrong shape must be a one-line error with exit status 2;
- **good files with real runtimes**: bitnet_ref's exact and fused paths, llama.cpp (TQ2_0 and TQ1_0 files, when
  llama-cpp-python is installed), transformers (the Hugging Face export, when installed): must say *model*.

It prints the confusion table (case, side, expected, verdict, where, right?) with each runtime case's margin: the
worst logit difference (median or largest over positions, relative to the largest logit) over what float rounding
allows on this model (faults above 1, good runs below). Exit 0 when every case is right, else 1.
What this is not: proof that crosscheck names faults unlike these.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(ROOT))


HERE = Path(__file__).resolve()

# ---------------------------------------------------------------------------------------------- runtime faults
# Each takes what a crosscheck runtime takes (crosscheck/runtimes.py) and computes the file with one bug.


def _model(path: str, threads: int, act: str = "token"):
    from bitnet_ref.decode.loader import read_file

    torch.set_num_threads(threads)
    return read_file(path).model(act=act, threads=threads)


def _run(model, ids, incremental: bool, start: int = 0) -> np.ndarray:
    idx = torch.tensor([ids])
    with torch.no_grad():
        if not incremental:
            return model(idx)[0][0].numpy()
        cache = model.new_cache(1, len(ids) + start)
        cache.pos = start
        return torch.cat([model(idx[:, t : t + 1], cache=cache)[0][0] for t in range(len(ids))]).numpy()


def act_per_tensor(model_path, ids, *, incremental=False, threads=1):
    """Activations quantized with one scale for the whole input of each matmul, not per token."""
    return _run(_model(model_path, threads, act="tensor"), ids, incremental)


def cache_offset(model_path, ids, *, incremental=False, threads=1):
    """The incremental path writes and reads its KV cache (and RoPE) one position off."""
    return _run(_model(model_path, threads), ids, incremental, start=1 if incremental else 0)


def prefill_overwrites(model_path, ids, *, incremental=False, threads=1):
    """The prompt in two batches, the second written 4 positions early over the first (microsoft/BitNet #617)."""
    model = _model(model_path, threads)
    if incremental:
        return _run(model, ids, True)
    h = len(ids) // 2
    idx, cache = torch.tensor([ids]), model.new_cache(1, len(ids))
    with torch.no_grad():
        first = model(idx[:, :h], cache=cache)[0][0]
        cache.pos = h - 4
        second = model(idx[:, h:], cache=cache)[0][0]
    return torch.cat([first, second]).numpy()


def thread_race(model_path, ids, *, incremental=False, threads=1):
    """With more than one thread, one worker's share of a layer's output is sometimes lost (a race)."""
    model = _model(model_path, threads)
    if threads > 1:
        rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
        lin = model.blocks[0].ffn.down_proj

        def lose(module, inputs, out):  # one worker's columns of one random token, lost
            cols = out.shape[-1] // threads
            j, t = int(rng.integers(0, threads)) * cols, int(rng.integers(0, out.shape[-2]))
            out = out.clone()
            out[..., t, j : j + cols] = 0
            return out

        lin.register_forward_hook(lose)
    return _run(model, ids, incremental)


def empty_kernels(model_path, ids, *, incremental=False, threads=1):
    """Every ternary product is zero: kernels compiled with empty bodies (microsoft/BitNet #547)."""
    model = _model(model_path, threads)
    for _, m in model.named_modules():
        if hasattr(m, "product"):
            m.forward = lambda x, act=None, m=m: torch.zeros(*x.shape[:-1], m.w.n)
    return _run(model, ids, incremental)


def crashes(model_path, ids, *, incremental=False, threads=1):
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def hangs(model_path, ids, *, incremental=False, threads=1):
    time.sleep(3600)


def wrong_shape(model_path, ids, *, incremental=False, threads=1):
    return np.zeros((len(ids), 7), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- converter faults


def _scale(fm, name, f):
    from bitnet_ref.runtime.act_modes import LinearSpec
    from bitnet_ref.runtime.packed import PackedWeight

    s = fm.linears[name]
    w = s.weight
    beta = torch.tensor(np.float32(f(float(w.beta), w)), dtype=torch.float32)
    fm.linears[name] = LinearSpec(
        PackedWeight(w.packed, beta, w.n, w.k, w.format), s.block_scales, s.act, s.input_dtype
    )


def _codes(fm, name, f):
    from bitnet_ref.formats import ternary_blocks as TB
    from bitnet_ref.runtime.act_modes import LinearSpec
    from bitnet_ref.runtime.packed import PackedWeight

    s = fm.linears[name]
    w = s.weight
    codes = f(TB.unpack_codes(w.packed, w.n, w.k))
    fm.linears[name] = LinearSpec(
        PackedWeight(TB.pack_codes(codes), w.beta, w.n, w.k), s.block_scales, s.act, s.input_dtype
    )


def _nonzero_share(w) -> float:
    from bitnet_ref.formats import ternary_blocks as TB

    return float((TB.unpack_codes(w.packed, w.n, w.k) != 0).mean())


def _rope_permute(codes, heads):
    n, k = codes.shape
    return codes.reshape(heads, 2, n // heads // 2, k).swapaxes(1, 2).reshape(n, k)


def converter_cases(cfg) -> list:
    """(name, what the converter did, mutate(fm) -> write kwargs, expected tensor, expected words in the relation)."""
    L = cfg.n_layers - 1

    def every(fm, f):
        for name in list(fm.linears):
            _scale(fm, name, f)

    def blocks(fm):
        rng = np.random.default_rng(0)
        s = fm.linears["blocks.0.ffn.gate_proj"]
        s.block_scales = rng.uniform(0.5, 1.5, (s.weight.n, s.weight.k // 256)).astype(np.float32)

    return [
        (
            "scale-inverted",
            "one layer's scale divided instead of multiplied",
            lambda fm: _scale(fm, f"blocks.{L}.ffn.down_proj", lambda b, w: 1.0 / b),
            f"blk.{L}.ffn_down",
            "1/beta",
        ),
        (
            "scale-x-nonzero",
            "re-quantized from dequantized weights: scale = beta x share of nonzero codes",
            lambda fm: every(fm, lambda b, w: b * _nonzero_share(w)),
            "every linear",
            "share of nonzero",
        ),
        (
            "scale-constant",
            "every scale off by a constant factor 1.5",
            lambda fm: every(fm, lambda b, w: b * 1.5),
            "every linear",
            "same factor",
        ),
        (
            "sub-norm-missing",
            "attn_sub_norm of layer 0 not written",
            lambda fm: {"skip": ("blk.0.attn_sub_norm.weight",)},
            "blk.0.attn_sub_norm",
            "missing",
        ),
        (
            "sub-norm-unit",
            "ffn_sub_norm of the last layer written as ones",
            lambda fm: fm.floats.__setitem__(f"blocks.{L}.ffn.sub_norm.weight", torch.ones(cfg.ffn_hidden)),
            f"blk.{L}.ffn_sub_norm",
            "ones",
        ),
        (
            "codes-transposed",
            "layer 0 attn_q written transposed (square: the shape cannot show it)",
            lambda fm: _codes(fm, "blocks.0.attn.q_proj", lambda c: np.ascontiguousarray(c.T)),
            "blk.0.attn_q",
            "transposed",
        ),
        (
            "codes-sign-flipped",
            "layer 1 ffn_up written negated",
            lambda fm: _codes(fm, f"blocks.{L}.ffn.up_proj", lambda c: -c),
            f"blk.{L}.ffn_up",
            "sign-flipped",
        ),
        (
            "rope-permuted",
            "q rows permuted for interleaved RoPE (LLaMA's converter permute)",
            lambda fm: _codes(fm, "blocks.0.attn.q_proj", lambda c: _rope_permute(c, cfg.n_heads)),
            "blk.0.attn_q",
            "RoPE",
        ),
        (
            "rope-theta",
            "rope_theta written as 500000 (LLaMA 3's) where the model uses 10000",
            lambda fm: {"rope_theta": 500000.0},
            "rope_theta",
            "500000",
        ),
        (
            "norm-eps",
            "norm eps written as 1e-6 where the model uses 1e-5",
            lambda fm: {"norm_eps": 1e-6},
            "norm_eps",
            "1e-06",
        ),
        (
            "block-scales",
            "layer 0 ffn_gate's TQ2_0 blocks given scales of their own",
            blocks,
            "blk.0.ffn_gate",
            "own scales",
        ),
    ]


def write_case(good, mutate, out: Path) -> None:
    from bitnet_ref.formats.gguf_container import F32
    from bitnet_ref.formats.gguf_write import byte_vocab_metadata, write_bitnet_gguf

    fm = copy.copy(good)
    fm.linears, fm.floats = dict(good.linears), dict(good.floats)
    fm.linears = {k: copy.copy(v) for k, v in fm.linears.items()}
    extra = mutate(fm) or {}
    meta = []
    if "rope_theta" in extra:
        meta.append(("bitnet.rope.freq_base", F32, extra["rope_theta"]))
    if "norm_eps" in extra:
        meta.append(("bitnet.attention.layer_norm_rms_epsilon", F32, extra["norm_eps"]))
    write_bitnet_gguf(
        out,
        fm.cfg,
        fm.linears,
        fm.floats,
        vocab=byte_vocab_metadata(),
        emb_type="F32",
        metadata=meta,
        skip=extra.get("skip", ()),
        force=True,
    )


# ---------------------------------------------------------------------------------------------- running


def crosscheck(args: list[str]) -> tuple[int, dict | None, str, float]:
    """(exit status, JSON report or None, stderr's last line, seconds) of one crosscheck command, run in this
    process (its runtimes still run in children of their own)."""
    import contextlib
    import io

    from bitnet_ref.crosscheck.command import main as crosscheck_main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = crosscheck_main([*args, "--json"])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    last = (err.getvalue().strip().splitlines() or [""])[-1]
    try:
        rep = json.loads(out.getvalue()) if out.getvalue().strip() else None
    except ValueError:
        rep = None
    return code, rep, last, time.perf_counter() - t0


def _margin(rep: dict | None) -> str:
    """The worst comparison of a report, over what float rounding allows it (median or largest, whichever is worse):
    far above 1 for a fault, far below for a faithful runtime."""
    if not rep or not rep.get("runtimes"):
        return ""
    comps = [r[k] for r in rep["runtimes"] for k in ("prefill", "incremental") if r.get(k)]
    comps += [r["threads"][k] for r in rep["runtimes"] if r.get("threads") for k in ("vs_one", "repeat")]
    worst = max((max(c["median"] / c["tol"][0], c["rel"] / c["tol"][1]) for c in comps), default=None)
    return "" if worst is None else f"{worst:.3g}x tol"


def make_source(args, work: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from bitnet_ref.train.loop import TrainConfig, train

    data = work / "data.txt"
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    data.write_bytes(b"".join((lib / n).read_bytes() for n in ("os.py", "argparse.py", "textwrap.py")))
    cfg = TrainConfig(
        d_model=256,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=512,
        context=64,
        steps=args.steps,
        ffn_act="swiglu",
        tie_embeddings=True,
        data=str(data),
        out=str(work / "run"),
        device="cpu",
        threads=1,
        eval_at="end",
    )
    train(cfg, log=lambda *a, **k: None)
    return work / "run" / "ckpt.pt"


def run_zoo(args) -> list[dict]:
    from bitnet_ref.checkpoint import load_checkpoint
    from bitnet_ref.crosscheck.runtimes import available
    from bitnet_ref.formats import gguf_file as GF
    from bitnet_ref.formats.export import export_hf
    from bitnet_ref.formats.file_model import from_checkpoint
    from bitnet_ref.formats.gguf_write import byte_vocab_metadata, write_bitnet_gguf

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="crosscheck_zoo_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = make_source(args, work)
    ckpt = load_checkpoint(ckpt_path)
    good = work / "good.gguf"
    GF.export_gguf(ckpt, good, emb_type="f32", force=True)
    src = from_checkpoint(ckpt)
    rows, common = [], ["--length", str(args.length), "--threads", str(args.threads)]

    def record(name, side, expect, code, rep, err, secs, right, where=""):
        rows.append(
            dict(
                case=name,
                side=side,
                expect=expect,
                verdict=(rep or {}).get("verdict", f"exit {code}"),
                where=where or (rep or {}).get("verdict_text", err)[:110],
                right=right,
                margin=_margin(rep),
                seconds=round(secs, 1),
                runtimes=(rep or {}).get("runtimes"),
            )
        )

    if args.only in (None, "converter"):
        for name, _what, mutate, tensor, words in converter_cases(src.cfg):
            path = work / f"{name}.gguf"
            write_case(src, mutate, path)
            code, rep, err, secs = crosscheck([str(path), "--source", str(ckpt_path)] + common)
            hits = [t for t in (rep or {}).get("tensors", []) if t["fault"]]
            named = any(t["where"] == tensor and words in t["relation"] for t in hits)
            where = next((f"{t['where']}: {t['relation']}" for t in hits), err)
            record(
                name,
                "converter",
                "converter",
                code,
                rep,
                err,
                secs,
                code == 1 and rep["verdict"] == "converter" and named,
                where[:110],
            )
    if args.only in (None, "runtime"):
        faults = [
            ("act-per-tensor", "act_per_tensor", "prefill"),
            ("cache-offset", "cache_offset", "incremental"),
            ("prefill-overwrites", "prefill_overwrites", "prefill"),
            ("thread-race", "thread_race", "threads"),
            ("empty-kernels", "empty_kernels", "kernel"),
        ]
        for name, fn, where in faults:
            code, rep, err, secs = crosscheck([str(good), "--runtime", f"{HERE}:{fn}"] + common)
            ok = code == 1 and rep is not None and rep["verdict"] == "runtime" and where in rep["where"]
            if name == "act-per-tensor" and ok:  # one token per matmul when incremental: only the prefill differs
                ok = rep["runtimes"][0]["matches"] == "tensor"
            record(name, "runtime", f"runtime ({where})", code, rep, err, secs, ok)
        for name, fn in (("crashes", "crashes"), ("hangs", "hangs"), ("wrong-shape", "wrong_shape")):
            code, rep, err, secs = crosscheck([str(good), "--runtime", f"{HERE}:{fn}", "--timeout", "10"] + common)
            record(
                name,
                "runtime",
                "error (exit 2)",
                code,
                rep,
                err,
                secs,
                code == 2 and err.startswith("error:") and "Traceback" not in err,
            )
    if args.only in (None, "good"):
        goods = [("bitnet_ref", good), ("bitnet_ref-fused", good)]
        if available("llama.cpp") is None:
            tq1 = work / "good_tq1_0.gguf"
            write_bitnet_gguf(
                tq1,
                src.cfg,
                src.linears,
                src.floats,
                linear_type="TQ1_0",
                emb_type="F16",
                vocab=byte_vocab_metadata(),
                force=True,
            )
            goods += [("llama.cpp", good), ("llama.cpp", tq1)]
        if available("transformers") is None:
            hf = work / "good_hf"
            if not hf.exists():
                export_hf(ckpt, hf, form="packed")
            goods.append(("transformers", hf))
        for runtime, path in goods:
            code, rep, err, secs = crosscheck([str(path), "--source", str(ckpt_path), "--runtime", runtime] + common)
            record(
                f"{runtime} on {Path(path).name}",
                "good",
                "model",
                code,
                rep,
                err,
                secs,
                code == 0 and rep is not None and rep["verdict"] == "model",
            )
    return rows


def table(rows) -> str:
    head = f"{'case':28s} {'side':9s} {'expected':22s} {'verdict':9s} {'right':5s} {'margin':12s} {'s':>6s}"
    head += "  where / relation"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['case']:28s} {r['side']:9s} {r['expect']:22s} {r['verdict']:9s} {'yes' if r['right'] else 'NO':5s} "
            f"{r['margin']:12s} {r['seconds']:6.1f}  {r['where']}"
        )
    right = sum(r["right"] for r in rows)
    out.append(f"{right}/{len(rows)} right")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="the source model (default: train one for --steps)")
    ap.add_argument("--steps", type=int, default=120, help="training steps of the source model (default 120)")
    ap.add_argument("--only", choices=("converter", "runtime", "good"), help="run one side of the zoo")
    ap.add_argument("--length", type=int, default=32, help="positions compared (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="N of the 1-vs-N-threads check (default 2)")
    ap.add_argument("--keep", help="a directory for the files (default: a temporary one)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = run_zoo(args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["right"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
