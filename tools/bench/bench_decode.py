"""End-to-end decode speed: packed int8 x 2-bit vs torch fp32 eager vs the fake-quant torch forward.

For each model (a checkpoint given with --checkpoint, or randomly initialised "default" and "wide" presets --
speed does not depend on what the weights learned), the same weights decode the same prompt three ways, in one
run, batch 1, through the KV cache:

- packed:    every BitLinear is a PackedBitLinear (bitnet_ref/runtime/packed.py): the C++ ternary kernel, torch
             glue (the exact path: bit for bit the training forward);
- fused:     the same packed model, each token one C++ call (bitnet_ref/runtime/fused.py; official layout only);
- fp32:      every BitLinear is a DequantLinear: F.linear with the fp32 weight codes * beta (the quant="none"
             cost of the same model, no fake-quant overhead);
- fakequant: the training-time model (act quant + weight quant recomputed at every call).

Reported per backend: decode tokens/s (median of --repeats runs, prefill excluded), weight bytes read per token
(packed 2-bit linears vs fp32; head, norms and one embedding row included) and the bandwidth that implies. For
the packed path it also shows where the time of one token goes (RMSNorm, Python glue, the C++ calls -- fused
activation quant + kernel + scaling --, everything outside the linear layers), measured with hooks in a
separate run so the headline numbers carry no hook overhead.

Targets (issue 5): packed not slower than fp32 at the default size; at least 3x faster at d_model 2048.
Issue 16: the default model decoded >= 3x faster than torch fp32 eager (the fused row).

--preset bitnet-b1.58-2b-4t / bitnet-b1.58-large measures models at real shapes (the "real shapes" section
below): random weights built packed, int8 head, fused decode at 1 and 2 threads, peak memory from a fresh
process, the DRAM roofline, and the head formats' agreement and cost. Issue 16's targets there: tokens/s >= 1.0x
llama.cpp TQ2_0 at 1 and 2 threads (its column comes from --vs-llama-cpp), >= 85% of the roofline, peak memory
<= 1.1x llama.cpp's.

--llama-bench reports what llama.cpp's llama-bench reports (pp128, pp512, tg128), our batched decoding at B = 1, 4, 8,
and the fractions of the multiply ceiling (pp) and of the read bandwidth (tg), ours, llama.cpp's and bitnet.cpp's side
by side (tools/bench/llama_bench.py).

What this is not: a kernel benchmark (tools/bench/bench_kernels.py) or a quality test (tools/decode_probe.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import generate as G
from bitnet_ref import machine
from bitnet_ref.checkpoint import CheckpointError, load_checkpoint
from bitnet_ref.model import PRESETS, ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.fused import FusedTransformer
from tools.bench.memory import read_bandwidth, resident_mb

BACKENDS = ("packed", "fused", "fp32", "fakequant")
SMALL_PRESETS = ("tiny", "default", "wide")  # built as training models (fp32 latents), all four backends


def random_model(preset: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset(preset)).eval()


def variants(base: Transformer, threads: int) -> dict:
    """{backend: model}, all built from ``base`` (the fake-quant model itself is the last). "fused" is the packed
    model run by the whole-token C++ step (bitnet_ref/runtime/fused.py), where its layout allows."""
    out = {"packed": P.to_packed(copy.deepcopy(base), threads=threads)}
    try:
        out["fused"] = FusedTransformer(P.to_packed(copy.deepcopy(base), threads=threads), threads=threads)
    except P.DecodeError:
        pass  # per-linear-norm layout or an ablation: the exact packed path only
    out["fp32"] = P.to_dequantized(copy.deepcopy(base))
    out["fakequant"] = base
    return out


def breakdown(model, prompt, new_tokens: int) -> dict:
    """Microseconds per decoded token spent in: RMSNorm inside the linears, act quant + glue, the kernel, the
    rest (attention, RoPE, embedding, head, sampling, Python). Measured with hooks: absolute values include
    their overhead; the shares are what matters."""
    acc = {"norm": 0.0, "linear": 0.0, "kernel": 0.0}
    starts = {}
    handles = []

    def pre(key):
        return lambda mod, inp: starts.__setitem__((key, id(mod)), time.perf_counter())

    def post(key):
        def hook(mod, inp, out):
            acc[key] += time.perf_counter() - starts.pop((key, id(mod)))

        return hook

    for m in model.modules():
        if isinstance(m, P.PackedBitLinear):
            handles += [
                m.register_forward_pre_hook(pre("linear")),
                m.register_forward_hook(post("linear")),
                m.norm.register_forward_pre_hook(pre("norm")),
                m.norm.register_forward_hook(post("norm")),
            ]
    real = {name: getattr(kernels, name) for name in ("ternary_matmul", "quant_matmul", "act_quant")}

    def timed(fn):
        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc["kernel"] += time.perf_counter() - t0

        return call

    for name, fn in real.items():
        setattr(kernels, name, timed(fn))
    try:
        G.generate(model, [prompt], 2)
        for k in acc:
            acc[k] = 0.0
        cache = model.new_cache(1, len(prompt) + new_tokens)
        with torch.no_grad():
            model(torch.tensor([prompt]), cache=cache)
            for k in acc:
                acc[k] = 0.0
            nxt = torch.tensor([[prompt[-1]]])
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                logits, _ = model(nxt, cache=cache)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
            total = time.perf_counter() - t0
    finally:
        for name, fn in real.items():
            setattr(kernels, name, fn)
        for h in handles:
            h.remove()
    us = lambda s: s / new_tokens * 1e6
    parts = {
        "rmsnorm": us(acc["norm"]),
        "glue": us(acc["linear"] - acc["norm"] - acc["kernel"]),
        "kernel": us(acc["kernel"]),  # the C++ calls: fused act quant + matmul + scaling
        "outside_linears": us(total - acc["linear"]),
    }
    return {"us_per_token": us(total), "parts_us": parts, "parts_share": {k: v / us(total) for k, v in parts.items()}}


def bench_model(label, base: Transformer, *, new_tokens, repeats, threads, prompt_len=8, profile=True) -> dict:
    cfg = base.cfg
    prompt = [(7 * i + 3) % cfg.vocab_size for i in range(prompt_len)]
    new_tokens = min(new_tokens, cfg.context - prompt_len)
    row = {
        "model": label,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "ffn_hidden": cfg.ffn_hidden,
        "params": cfg.num_params(),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "backends": {},
    }
    models = variants(base, threads)
    # the fake-quant forward re-quantizes every weight at every call (by far the slowest row): fewer tokens
    tokens = {name: new_tokens if name != "fakequant" else max(4, new_tokens // 8) for name in models}
    rates = {name: [] for name in models}
    for model in models.values():
        G.generate(model, [prompt], 2)  # warm-up
    for _ in range(repeats):  # interleaved, so load changes on a shared machine hit every backend alike
        for name, model in models.items():
            rates[name].append(G.generate(model, [prompt], tokens[name]).tok_per_s)
    for name, model in models.items():
        wb = P.weight_bytes_per_token(model)  # fakequant reads the fp32 latent weights
        med = statistics.median(rates[name])
        row["backends"][name] = {
            "tok_s": med,
            "tok_s_all": rates[name],
            "new_tokens": tokens[name],
            "weight_bytes_per_token": wb["total"],
            "weight_gb_s": wb["total"] * med / 1e9,
        }
    if profile:
        row["packed_breakdown"] = breakdown(models["packed"], prompt, new_tokens)
    del models
    b = row["backends"]
    row["packed_over_fp32"] = b["packed"]["tok_s"] / b["fp32"]["tok_s"]
    if "fused" in b:
        row["fused_over_fp32"] = b["fused"]["tok_s"] / b["fp32"]["tok_s"]
    row["packed_over_fakequant"] = b["packed"]["tok_s"] / b["fakequant"]["tok_s"]
    return row


def breakdown_line(bd: dict, path: str, unit: str) -> str:
    """One line of where a token's time goes (a ``breakdown()``), in us, or in ms for the real shapes' slower tokens."""
    scale, digits = (1e3, ".1f") if unit == "ms" else (1.0, ".0f")
    parts = ", ".join(
        f"{k} {v / scale:{digits}} {unit} ({bd['parts_share'][k]:.0%})" for k, v in bd["parts_us"].items()
    )
    return f"  {path}, where one token's {bd['us_per_token'] / scale:{digits}} {unit} go (with hooks): {parts}"


def format_table(rows, meta) -> str:
    w = max([28] + [len(r["model"]) for r in rows])
    out = [
        f"decode tokens/s, batch 1, {meta['threads']} thread(s), kernel {meta['kernel']}",
        f"{'model':<{w}} {'backend':<11}{'tok/s':>9}{'weight MB/token':>17}{'GB/s':>8}{'vs fp32':>9}",
    ]
    for r in rows:
        for name, b in r["backends"].items():
            ratio = b["tok_s"] / r["backends"]["fp32"]["tok_s"]
            out.append(
                f"{r['model']:<{w}} {name:<11}{b['tok_s']:>9.1f}{b['weight_bytes_per_token'] / 1e6:>17.3f}"
                f"{b['weight_gb_s']:>8.2f}{ratio:>8.2f}x"
            )
        if "packed_breakdown" in r:
            out.append(breakdown_line(r["packed_breakdown"], "packed", "us"))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- real shapes
# Models at the shapes of public checkpoints (--preset bitnet-b1.58-2b-4t, bitnet-b1.58-large): random ternary
# weights built packed directly (bitnet_ref/runtime/random_packed.py), int8 head, each in a fresh subprocess so its peak
# resident memory is its own. Per thread count: tokens/s of the fused path (and of the exact torch-glue packed
# path at one thread, to show what the fusion buys), the weight bytes a token reads and the GB/s that implies
# against the measured DRAM read bandwidth; then the head formats side by side (int8 ours, fp32 and bf16
# torch): time per token and agreement of the int8 and bf16 logits with the fp32 head's.

REAL_PROMPT_LEN = 8
EXACT_TOKENS = 16  # the exact path at these sizes: a few tokens a repeat suffice for a rate


def real_shape_child(spec: dict) -> dict:
    """Runs in a fresh process: build, decode, measure (see the section comment). Returns a JSON-able dict."""
    from bitnet_ref.runtime.random_packed import head_seed, iter_random_rows, random_packed_model

    out = {"preset": spec["preset"], "rss_import_mb": resident_mb()}
    cfg = ModelConfig.preset(spec["preset"])
    t0 = time.perf_counter()
    model = random_packed_model(cfg, seed=spec["seed"], head="int8")
    fused = FusedTransformer(model)
    out["build_s"] = time.perf_counter() - t0
    wb = P.weight_bytes_per_token(model)
    out.update(
        weight_bytes_per_token=wb["total"], linear_bytes=wb["linear"], head_bytes=wb["other"], params=cfg.num_params()
    )
    prompt = [(7 * i + 3) % cfg.vocab_size for i in range(REAL_PROMPT_LEN)]
    G.generate(fused, [prompt], spec["tokens"])  # warm-up, and the full-length KV cache once
    out["rss_peak_mb"], out["rss_decode_mb"] = resident_mb("VmHWM"), resident_mb("VmRSS")  # before the probes' buffers
    out["threads"] = {}
    torch.set_num_threads(1)  # torch runs only a few tiny ops per token here; its idle OpenMP threads spin and
    # take a core from the kernel's worker (docs/kernels.md, the fused step)
    exact = []
    for th in spec["threads"]:
        kernels.set_threads(th)
        bw = [dram_bandwidth([th], tries=1)[th]]  # the shared machine's bandwidth now, beside the decode
        rates = []
        for _ in range(spec["repeats"]):  # at one thread the exact path's repeats interleave with the fused ones
            rates.append(G.generate(fused, [prompt], spec["tokens"]).tok_per_s)
            if th == 1:
                exact.append(G.generate(model, [prompt], EXACT_TOKENS).tok_per_s)
        bw.append(dram_bandwidth([th], tries=1)[th])
        out["threads"][str(th)] = {"tok_s": statistics.median(rates), "tok_s_all": rates, "dram_gb_s": max(bw)}
    kernels.set_threads(1)
    out["exact_tok_s_1"] = statistics.median(exact) if exact else float("nan")
    out["exact_breakdown"] = breakdown(model, prompt, EXACT_TOKENS)  # where the torch-glue path's token goes
    out["fused_split"] = fused_split(model, fused, len(prompt) + spec["tokens"])
    if spec["head_check"]:
        out["head"] = head_check(
            model, cfg, spec["seed"], prompt, spec["tokens"], head_seed(cfg, spec["seed"]), iter_random_rows
        )
    return out


def fused_split(model, fused, positions: int, steps: int = 5) -> dict:
    """Milliseconds of one fused step (1 thread, at position `positions`) beside its kernels called alone on the
    same shapes: the ternary products (activation quantization included) and the int8 head. The difference is
    everything else the step does (norms, RoPE, attention, cache, glue)."""
    import numpy as np

    cache = fused.new_cache(1, positions + steps)
    cache.pos[:] = positions  # attention over `positions` cached (zero) keys: the cost of a late token
    tok = np.array([3], np.int64)
    fused.decoder.step(tok, positions, cache.k, cache.v)
    lins = [m for m in model.modules() if isinstance(m, P.PackedBitLinear)]
    xs = {k: np.random.default_rng(0).standard_normal((1, k)).astype(np.float32) for k in {m.w.k for m in lins}}
    q = kernels.act_quant(xs[model.cfg.d_model])[0]
    step, lin, head = [], [], []
    for i in range(steps):  # interleaved, so a change of load on a shared machine hits all three alike
        t = time.perf_counter()
        fused.decoder.step(tok, positions + i, cache.k, cache.v)
        step.append(time.perf_counter() - t)
        t = time.perf_counter()
        for m in lins:
            kernels.quant_matmul(xs[m.w.k], m.w.packed, m.w.n, m.w.k, m.beta_f, format=m.w.format)
        lin.append(time.perf_counter() - t)
        t = time.perf_counter()
        kernels.int8_matmul(q, model.head.rows.q.numpy())
        head.append(time.perf_counter() - t)
    ms = lambda v: statistics.median(v) * 1e3
    return {"step_ms": ms(step), "ternary_ms": ms(lin), "head_ms": ms(head), "rest_ms": ms(step) - ms(lin) - ms(head)}


def head_check(model, cfg, seed, prompt, tokens, rows_seed, iter_rows) -> dict:
    from bitnet_ref.runtime.int8_head import quantize_rows_into

    """The int8 head against the float32 head it was quantized from (and bf16 rows of it) on the hidden states of
    prompt + a greedy continuation: top-1 agreement and the largest logit difference; and each format's time for
    one token's head (int8: our kernel on the whole head; fp32/bf16: torch F.linear, timed on slices)."""
    gen = G.generate(FusedTransformer(model), [prompt], tokens)
    seq = torch.tensor([prompt + gen.tokens[0]])
    hidden = {}
    h = model.head.register_forward_hook(lambda m, inp, o: hidden.__setitem__("x", inp[0].detach()))
    with torch.no_grad():
        logits8 = model(seq)[0][0]  # (T, V): the exact path's int8-head logits
    h.remove()
    x = hidden["x"][0].float()  # (T, d)
    f32, b16, rows8 = [], [], []
    t_f32 = t_b16 = 0.0
    for _, w in iter_rows(rows_seed, cfg.vocab_size, cfg.d_model):
        f32.append(x @ w.T)
        q, sc = torch.empty(w.shape, dtype=torch.int8), torch.empty(len(w))
        quantize_rows_into(w, q, sc)
        rows8.append(x @ (q.float() * sc[:, None]).T)  # int8 rows, float activations: the rows' share of the error
        wb = w.bfloat16()
        b16.append((x.bfloat16() @ wb.T).float())
        x1, x1b = x[:1], x[:1].bfloat16()
        t = time.perf_counter()
        torch.nn.functional.linear(x1, w)
        t_f32 += time.perf_counter() - t  # one row of activations: the decode-time product
        t = time.perf_counter()
        torch.nn.functional.linear(x1b, wb)
        t_b16 += time.perf_counter() - t
    f32, b16, rows8 = torch.cat(f32, 1), torch.cat(b16, 1), torch.cat(rows8, 1)  # (T, V)
    q = torch.from_numpy(kernels.act_quant(x[:1].contiguous().numpy())[0])
    t = time.perf_counter()
    for _ in range(3):
        kernels.int8_matmul(q.numpy(), model.head.rows.q.numpy())
    t_i8 = (time.perf_counter() - t) / 3

    def agree(a):
        return {
            "top1_agreement": float((a.argmax(-1) == f32.argmax(-1)).float().mean()),
            "max_abs_logit_diff": float((a - f32).abs().max()),
            "max_abs_fp32_logit": float(f32.abs().max()),
        }

    return {
        "positions": int(x.shape[0]),
        "int8": agree(logits8),
        "bf16": agree(b16),
        "int8_rows_only": agree(rows8),
        "ms_per_token": {"int8": t_i8 * 1e3, "fp32": t_f32 * 1e3, "bf16": t_b16 * 1e3},
        "bytes": {
            "int8": model.head.rows.nbytes,
            "fp32": 4 * x.shape[1] * cfg.vocab_size,
            "bf16": 2 * x.shape[1] * cfg.vocab_size,
        },
        "note": "fp32/bf16 times: chunked rows (cold)",
    }


def bench_real_shape(preset: str, *, threads, tokens, repeats, seed=0, head_check=True) -> dict:
    """real_shape_child in a fresh subprocess (its peak RSS is the model's alone); its result dict."""
    import subprocess

    spec = {
        "preset": preset,
        "threads": list(threads),
        "tokens": tokens,
        "repeats": repeats,
        "seed": seed,
        "head_check": head_check,
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--real-shape-child", json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {preset} benchmark process failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dram_bandwidth(threads, tries: int = 3) -> dict:
    """Streaming read bandwidth (GB/s) per thread count, best of `tries` probes of a 256 MiB buffer (far past the
    last-level cache)."""
    return {t: read_bandwidth(t, 1 << 28, tries=tries) for t in threads}


def format_real_table(rows, bw_before, bw_after, meta) -> str:
    out = [
        f"real shapes, random ternary weights built packed, int8 head; greedy, {REAL_PROMPT_LEN}-token prompt, "
        f"batch 1; kernel {meta['kernel']}",
        "DRAM read bandwidth (GB/s, best of 3, parent process): before "
        + ", ".join(f"{t} thr {v:.1f}" for t, v in bw_before.items())
        + "; after "
        + ", ".join(f"{t} thr {v:.1f}" for t, v in bw_after.items()),
        f"{'model':<20}{'thr':>4}{'tok/s':>8}{'best':>7}{'MB/token':>10}{'GB/s':>7}{'DRAM GB/s':>11}{'roofline':>10}"
        f"{'peak RSS MB':>13}{'import MB':>11}{'exact tok/s':>13}",
    ]
    for r in rows:
        mb = r["weight_bytes_per_token"] / 1e6
        for t, m in r["threads"].items():
            gbs = m["tok_s"] * r["weight_bytes_per_token"] / 1e9
            exact = f"{r['exact_tok_s_1']:.2f}" if t == "1" else ""
            out.append(
                f"{r['preset']:<20}{t:>4}{m['tok_s']:>8.2f}{max(m['tok_s_all']):>7.2f}{mb:>10.0f}{gbs:>7.2f}"
                f"{m['dram_gb_s']:>11.1f}{gbs / m['dram_gb_s']:>9.0%} {r['rss_peak_mb']:>12.0f}"
                f"{r['rss_import_mb']:>11.0f}{exact:>13}"
            )
        if "head" in r:
            hd = r["head"]
            out.append(
                f"  head ({hd['positions']} positions): int8 top-1 agreement with fp32 "
                f"{hd['int8']['top1_agreement']:.1%}, max |logit diff| {hd['int8']['max_abs_logit_diff']:.4f} "
                f"(max |logit| {hd['int8']['max_abs_fp32_logit']:.2f}); bf16 {hd['bf16']['top1_agreement']:.1%},"
                f" {hd['bf16']['max_abs_logit_diff']:.4f}; int8 rows with float activations "
                f"{hd['int8_rows_only']['top1_agreement']:.1%}, "
                f"{hd['int8_rows_only']['max_abs_logit_diff']:.4f}"
            )
            ms, by = hd["ms_per_token"], hd["bytes"]
            out.append(
                "  head per token: "
                + ", ".join(f"{k} {ms[k]:.1f} ms ({by[k] / 1e6:.0f} MB)" for k in ms)
                + " [one thread]"
            )
        if "fused_split" in r:
            f = r["fused_split"]
            out.append(
                f"  one fused step, 1 thread: {f['step_ms']:.1f} ms; its kernels alone: ternary "
                f"{f['ternary_ms']:.1f} ms + head {f['head_ms']:.1f} ms; the rest {f['rest_ms']:.1f} ms"
            )
        if "exact_breakdown" in r:
            out.append(breakdown_line(r["exact_breakdown"], "exact path", "ms"))
        out.append(f"  build {r['build_s']:.1f} s, {r['params'] / 1e9:.2f} B parameters")
    out.append(
        "tok/s: median of the repeats, best: the fastest repeat; GB/s and roofline from the median: weight "
        "bytes read per token x tok/s over DRAM GB/s (the better of two probes just before and after that "
        "decode, same process; the KV cache is not counted: ~11 MB at the 2B shape's last position); "
        "exact: the torch-glue packed path, same model, 1 thread, repeats interleaved with the fused ones"
    )
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--vs-llama-cpp" in argv:  # ours and llama.cpp on the same GGUF: its own options (--vs-llama-cpp --help)
        from tools.bench import bench_llama_cpp

        return bench_llama_cpp.main(argv)
    if (
        "--llama-bench" in argv
    ):  # pp, tg, batches beside llama.cpp and bitnet.cpp: its own options (--llama-bench --help)
        from tools.bench import llama_bench

        return llama_bench.main(argv)
    p = argparse.ArgumentParser(
        description="End-to-end decode tokens/s: packed (exact and fused) vs torch fp32 vs "
        "fake-quant; and models at real shapes (--preset)."
    )
    p.add_argument(
        "--vs-llama-cpp",
        action="store_true",
        help="instead: ours and llama.cpp on the same GGUF (2B-4T and large shapes, 1 and 2 threads, "
        "tok/s, peak memory, GB/s); tools/bench/bench_llama_cpp.py, see --vs-llama-cpp --help",
    )
    p.add_argument(
        "--llama-bench",
        action="store_true",
        help="instead: pp128, pp512, tg128 as llama-bench names them, ours and llama.cpp on the same GGUF (ours "
        "alone without llama-cpp-python; bitnet.cpp with --bitnet-cpp), our batched decoding at B = 1, 4, 8, "
        "fractions of the multiply ceiling and the read bandwidth; tools/bench/llama_bench.py, see --llama-bench "
        "--help",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PATH",
        help="a ckpt.pt to benchmark (repeatable); without it, random default and wide presets",
    )
    p.add_argument(
        "--presets",
        default=None,
        help="random-init small presets to run, all four backends (default: default,wide; none when --preset is given)",
    )
    p.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help="a real-shape preset (bitnet-b1.58-2b-4t, bitnet-b1.58-large; repeatable): random ternary "
        "weights built packed directly, int8 head, fused decode at each --threads-list count, in a "
        "fresh process for its peak memory, with the DRAM roofline and the head formats",
    )
    p.add_argument("--threads-list", default="1,2", help="thread counts for --preset (default 1,2)")
    p.add_argument("--no-head-check", action="store_true", help="--preset: skip the head format comparison")
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per repeat (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per backend; the median is reported (default 5)")
    p.add_argument("--threads", type=int, default=1, help="kernel and torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="few tokens and repeats: a smoke run, not a measurement")
    p.add_argument("--no-profile", action="store_true", help="skip the packed time breakdown")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--real-shape-child", metavar="SPEC", help=argparse.SUPPRESS)  # internal: one --preset run
    a = p.parse_args(argv)
    if not kernels.available():
        print(
            f"error: the C++ extension is not available ({kernels.import_error()}); build it with "
            "`pip install --no-build-isolation -e .`",
            file=sys.stderr,
        )
        return 2
    if a.real_shape_child:
        print(json.dumps(real_shape_child(json.loads(a.real_shape_child))))
        return 0
    if a.quick:
        a.tokens, a.repeats = min(a.tokens, 16), min(a.repeats, 2)
    for name in a.preset:
        if name not in PRESETS or name in SMALL_PRESETS:
            print(
                f"error: --preset {name!r} is not a real-shape preset; choose from "
                f"{', '.join(n for n in PRESETS if n not in SMALL_PRESETS)}",
                file=sys.stderr,
            )
            return 2
    from tools.bench.bench_llama_cpp import thread_counts  # not at the top: a child's "import MB" stays its own

    try:
        thread_list = thread_counts(a.threads_list, "--threads-list")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    presets = a.presets if a.presets is not None else ("" if a.preset else "default,wide")
    torch.set_num_threads(a.threads)
    kernels.set_threads(a.threads)
    models = []
    for path in a.checkpoint:
        models.append((path, lambda path=path: P.build_model(load_checkpoint(path), path)))
    if not a.checkpoint:
        for name in filter(None, presets.split(",")):
            if name not in SMALL_PRESETS:
                print(f"error: unknown preset {name!r}", file=sys.stderr)
                return 2
            models.append((f"{name} (random init)", lambda name=name: random_model(name)))
    rows = []
    for label, make in models:
        try:
            base = make()
        except (CheckpointError, P.DecodeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows.append(
            bench_model(
                label, base, new_tokens=a.tokens, repeats=a.repeats, threads=a.threads, profile=not a.no_profile
            )
        )
        del base
    meta = {
        "threads": a.threads,
        "kernel": kernels.backend(),
        "quick": a.quick,
        **machine.describe(),
    }
    real = {}
    if a.preset:
        bw_before = dram_bandwidth(thread_list)
        real_rows = [
            bench_real_shape(
                name, threads=thread_list, tokens=a.tokens, repeats=a.repeats, head_check=not a.no_head_check
            )
            for name in a.preset
        ]
        real = {"rows": real_rows, "dram_gb_s_before": bw_before, "dram_gb_s_after": dram_bandwidth(thread_list)}
    if a.json:
        print(json.dumps({"meta": meta, "rows": rows, "real_shapes": real}))
        return 0
    print(f"machine: {machine.summary(meta)}")
    if rows:
        print(format_table(rows, meta))
    if real:
        print(format_real_table(real["rows"], real["dram_gb_s_before"], real["dram_gb_s_after"], meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
