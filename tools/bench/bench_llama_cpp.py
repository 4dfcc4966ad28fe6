"""Decode side by side with llama.cpp, on the same GGUF file, in one run (``python tools/bench/bench_decode.py
--vs-llama-cpp``).

For each shape (bitnet-b1.58-2B-4T: d 2560, 30 layers, 20/5 heads, FFN 6912, vocab 128256; bitnet_b1_58-large:
d 1536, 24 layers, FFN 4096, vocab 32002), random ternary codes are written straight into a packed state (no
fp32 latents) and exported once with ``gguf_file.write_gguf`` (TQ2_0 linears, F16 token embedding, as llama.cpp's
own converter writes them). Both shapes use SwiGLU and a tied head, the only FFN and head llama.cpp's bitnet graph
has (2B-4T itself uses ReLU^2: the same matmuls, so the same cost). Then, for 1 and 2 threads, each side decodes
that file in a fresh subprocess: an 8-token prompt (token ids), 64 greedy tokens, batch 1, the median of
--repeats runs after a warm-up. Reported per side: decode tokens/s (prefill excluded), peak resident memory
(VmHWM of the child: loading included, file pages mapped by either side included), the weight bytes one token
reads and the GB/s that implies, against the read bandwidth the repo's probe (bitnet_ref._bench) measures at
that thread count.

- ours: ``ours()`` below, the one place to point at a faster path: ``gguf_file.read_gguf`` -> ``packed_model``
  (PackedBitLinear layers) -> by default the tied head as int8 rows and the fused whole-token C++ step
  (``--ours fused``; ``--ours exact``: the bit-exact packed path with the fp32 tied head) -> ``generate.generate``;
- llama.cpp: llama-cpp-python's ``Llama`` (default F16 KV cache), ``eval`` one token at a time, argmax in numpy.

``--llama-bench`` measures instead what llama.cpp's own ``llama-bench`` reports, per side and thread count, each
side in a fresh process on the same file: pp128 and pp512 (a prompt of that many tokens through an empty cache in
one call, the last position's logits only: tokens/s of the prompt), tg128 (128 tokens one at a time from an empty
cache), and batched decoding, ours only (llama-cpp-python has no multi-sequence API to time it with): B = 1, 4, 8
sequences (an 8-token prompt each, then 32 steps of B tokens; aggregate tokens/s). Beside them: pp as a fraction of
the multiply ceiling (the ternary multiply-adds of a token, times tokens/s, over the core's measured vpdpbusd /
vpmaddubsw rate times the threads) and tg as a fraction of the read bandwidth (the weight bytes a token reads,
times tokens/s, over the probe). Without llama-cpp-python it runs our side alone.

Needs the C++ extension, the gguf package and llama-cpp-python (``pip install -e ".[llama]"`` with
CMAKE_ARGS="-DGGML_NATIVE=ON"). What this is not: a quality comparison (tests/test_llama_cpp.py checks agreement
on a trained model; random weights decode noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import generate as G
from bitnet_ref import machine
from bitnet_ref.formats import gguf_file as GF
from bitnet_ref.model import ModelConfig
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.packed import PackedWeight
from tools.bench.memory import read_bandwidth, resident_mb

PRESETS = ("bitnet-b1.58-2b-4t", "bitnet-b1.58-large")
SIDES = ("ours", "llama.cpp")


# ---------------------------------------------------------------------------------------------- the model


def bench_config(preset: str) -> ModelConfig:
    """The preset's shape as llama.cpp's bitnet graph can run it: SwiGLU, tied head (see the module docstring)."""
    return ModelConfig.preset(preset, ffn_act="swiglu", tie_embeddings=True)


def random_packed(cfg: ModelConfig, seed: int = 0) -> tuple[dict, dict]:
    """(packed state, float tensors) of random ternary weights, built packed: each byte is drawn from the 81 bytes
    whose four 2-bit fields are valid codes, i.e. four independent uniform weights. A minimal stand-in for the
    packed random presets of the decode work (issue 16, part B)."""
    rng = np.random.default_rng(seed)
    valid = np.array([b for b in range(256) if all((b >> s) & 3 < 3 for s in (0, 2, 4, 6))], dtype=np.uint8)
    d, kv, h = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden
    shapes = {
        "q_proj": (d, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, d),
        "gate_proj": (h, d),
        "up_proj": (h, d),
        "down_proj": (d, h),
    }
    packed = {}
    for name, _ in GF.linear_names(cfg):
        n, k = shapes[name.rsplit(".", 1)[1]]
        codes = valid[rng.integers(0, len(valid), n * k // 4, dtype=np.uint8)]  # k is a multiple of 128: no padding
        packed[name] = PackedWeight(codes, torch.tensor(rng.uniform(0.5, 1.5) / np.sqrt(k), dtype=torch.float32), n, k)
    floats = {"tok_emb.weight": torch.from_numpy(rng.standard_normal((cfg.vocab_size, d), dtype=np.float32))}
    for ours, _ in GF.float_names(cfg)[1:]:
        floats[ours] = torch.ones(h if ours.endswith("ffn.sub_norm.weight") else d)
    return packed, floats


# ---------------------------------------------------------------------------------------------- the two sides


OURS_PATHS = ("fused", "exact")


def ours(path, threads: int, prompt: list[int], new_tokens: int, repeats: int, how: str = "fused") -> dict:
    """Our decode of the GGUF: the public API (read_gguf -> packed_model -> generate). The one place to point at a
    faster decode path. how="fused" (the default): the tied head as int8 rows, made chunk by chunk from the file
    (read_gguf(head="int8"); no float32 embedding ever exists), and each token one C++ call
    (fused.FusedTransformer), torch on one thread beside it; how="exact": the bit-exact packed path with the fp32
    tied head."""
    from bitnet_ref.runtime.fused import FusedTransformer

    torch.set_num_threads(1 if how == "fused" else threads)
    kernels.set_threads(threads)
    # fused: the embedding is read straight into int8 rows (no float32 copy of it ever exists)
    cfg, packed, floats = GF.read_gguf(path, head="int8" if how == "fused" else "fp32")
    model = GF.packed_model(cfg, packed, floats, threads=threads)
    del packed, floats
    d, V = cfg.d_model, cfg.vocab_size
    linears = sum(m.w.packed.nbytes + 4 for _, m in model.named_modules() if hasattr(m, "w"))
    norms = sum(p.numel() * 4 for n, p in model.named_parameters() if "norm" in n)
    if how == "fused":
        head = model.head.rows.nbytes  # int8 rows + a float32 scale per row, read whole per token
        model = FusedTransformer(model, threads=threads)
    else:
        head = V * d * model.head.weight.element_size()  # the tied embedding, read whole per token as the head
    G.generate(model, [prompt], 4)  # warm-up
    rates, tokens = [], None
    for _ in range(repeats):
        gen = G.generate(model, [prompt], new_tokens)
        rates.append(gen.tok_per_s)
        tokens = gen.tokens[0]
    return {
        "tok_s_all": rates,
        "tokens": tokens,
        "weight_bytes": linears + head + norms + d * 4,
        "path": how,
        **memory(),
    }


def llama_cpp_side(path, threads: int, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """llama.cpp's decode of the same file through llama-cpp-python: eval one token at a time, greedy."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=len(prompt) + new_tokens + 8,
        n_batch=len(prompt),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    V = llm.n_vocab()

    def greedy(n):
        llm.reset()
        llm.eval(prompt)
        out = []
        t0 = time.perf_counter()
        for i in range(n):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(V,))
            out.append(int(np.argmax(logits)))
            if i == 0:
                t0 = time.perf_counter()  # the first token comes out of the prefill
            elif i == n - 1:
                break
            llm.eval([out[-1]])
        return out, (n - 1) / (time.perf_counter() - t0)

    greedy(4)  # warm-up
    rates, tokens = [], None
    for _ in range(repeats):
        tokens, rate = greedy(new_tokens)
        rates.append(rate)
    weights = sum(int(t.n_bytes) for t in GF.gguf_module().GGUFReader(str(path)).tensors)
    return {
        "tok_s_all": rates,
        "tokens": tokens,
        "weight_bytes": weights,
        "system_info": llama_cpp.llama_print_system_info().decode(),
        **memory(),
    }


LLAMA_BENCH_PP = (128, 512)
LLAMA_BENCH_TG = 128
BATCHES = (1, 4, 8)
BATCH_PROMPT, BATCH_STEPS = 8, 32


def median_rate(fn, repeats: int, cpu: bool) -> dict:
    """fn(clock) times one run with `clock` and returns tokens/s. After a warm-up, `repeats` runs timed by wall
    time and, if `cpu` (one-thread runs), as many by this process's CPU time (on a shared machine the CPU-time rate
    of a one-thread run says what the code does when it gets the core); the median of each."""
    fn(time.perf_counter)
    out = {"wall": statistics.median(fn(time.perf_counter) for _ in range(repeats))}
    if cpu:
        out["cpu"] = statistics.median(fn(time.process_time) for _ in range(repeats))
    return out


def ours_llama_bench(path, threads: int, repeats: int) -> dict:
    """pp128, pp512, tg128 and batched decoding (see the module docstring) of our fused path on the GGUF file."""
    from bitnet_ref.runtime.fused import FusedTransformer

    torch.set_num_threads(1)
    kernels.set_threads(threads)
    cfg, packed, floats = GF.read_gguf(path, head="int8")
    packed_model = GF.packed_model(cfg, packed, floats, threads=threads)
    del packed, floats
    weight_bytes = P.weight_bytes_per_token(packed_model)["total"]  # the int8 head whole, one embedding row
    model = FusedTransformer(packed_model, threads=threads)
    tokens = [(7 * i + 3) % cfg.vocab_size for i in range(max(LLAMA_BENCH_PP + (LLAMA_BENCH_TG,)))]

    def pp(n, clock):
        cache = model.new_cache(1, n)
        idx = torch.tensor([tokens[:n]])
        t0 = clock()
        model(idx, cache=cache, last_only=True)
        return n / (clock() - t0)

    def tg(n, clock):
        cache = model.new_cache(1, n)
        t0 = clock()
        for i in range(n):
            model(torch.tensor([[tokens[i]]]), cache=cache)
        return n / (clock() - t0)

    def batched(b, clock):
        cache = model.new_cache(b, BATCH_PROMPT + BATCH_STEPS)
        model(torch.tensor([tokens[i : i + BATCH_PROMPT] for i in range(b)]), cache=cache, last_only=True)
        step = torch.tensor([[tokens[i]] for i in range(b)])
        t0 = clock()
        for _ in range(BATCH_STEPS):
            model(step, cache=cache)
        return b * BATCH_STEPS / (clock() - t0)

    cpu = threads == 1
    out = {f"pp{n}": median_rate(lambda c, n=n: pp(n, c), repeats, cpu) for n in LLAMA_BENCH_PP}
    out[f"tg{LLAMA_BENCH_TG}"] = median_rate(lambda c: tg(LLAMA_BENCH_TG, c), repeats, cpu)
    out["batched"] = {str(b): median_rate(lambda c, b=b: batched(b, c), repeats, cpu) for b in BATCHES}
    return {**out, "weight_bytes": weight_bytes, **memory()}


def llama_cpp_llama_bench(path, threads: int, repeats: int) -> dict:
    """pp128, pp512 and tg128 of llama.cpp on the same file, through llama-cpp-python (eval: the prompt in one
    batch of up to 512 tokens, logits of the last position only; tg one token per eval)."""
    import llama_cpp

    n_max = max(LLAMA_BENCH_PP)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_max + 8,
        n_batch=n_max,
        n_ubatch=n_max,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    tokens = [(7 * i + 3) % llm.n_vocab() for i in range(max(n_max, LLAMA_BENCH_TG))]

    def pp(n, clock):
        llm.reset()
        t0 = clock()
        llm.eval(tokens[:n])
        return n / (clock() - t0)

    def tg(n, clock):
        llm.reset()
        t0 = clock()
        for i in range(n):
            llm.eval([tokens[i]])
        return n / (clock() - t0)

    cpu = threads == 1
    out = {f"pp{n}": median_rate(lambda c, n=n: pp(n, c), repeats, cpu) for n in LLAMA_BENCH_PP}
    out[f"tg{LLAMA_BENCH_TG}"] = median_rate(lambda c: tg(LLAMA_BENCH_TG, c), repeats, cpu)
    weights = sum(
        int(t.n_bytes) for t in GF.gguf_module().GGUFReader(str(path)).tensors
    )  # the F16 embedding is the head
    return {**out, "weight_bytes": weights, "system_info": llama_cpp.llama_print_system_info().decode(), **memory()}


def memory() -> dict:
    """Peak (VmHWM) and current (VmRSS) resident memory of this process, in MB; called with the model loaded."""
    return {"peak_rss_mb": resident_mb("VmHWM"), "rss_mb": resident_mb("VmRSS")}


def child(args) -> int:
    if args.llama_bench:
        side = ours_llama_bench if args.child == "ours" else llama_cpp_llama_bench
        print(json.dumps(side(args.gguf, args.threads, args.repeats)))
        return 0
    prompt = json.loads(args.prompt)
    if args.child == "ours":
        r = ours(args.gguf, args.threads, prompt, args.tokens, args.repeats, args.ours)
    else:
        r = llama_cpp_side(args.gguf, args.threads, prompt, args.tokens, args.repeats)
    print(json.dumps(r))
    return 0


# ---------------------------------------------------------------------------------------------- the run


def run_child(side, path, threads, prompt, tokens, repeats, how="fused", llama_bench=False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--gguf",
        str(path),
        "--threads",
        str(threads),
        "--tokens",
        str(tokens),
        "--repeats",
        str(repeats),
        "--prompt",
        json.dumps(prompt),
        "--ours",
        how,
    ] + (["--llama-bench"] if llama_bench else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"error: the {side} child failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if not llama_bench:
        r["tok_s"] = statistics.median(r["tok_s_all"])
    return r


def bandwidth(threads: int) -> float:
    """Streaming read bandwidth (GB/s) at ``threads``: the best of 3 probes of a 512 MiB buffer, 5 passes each."""
    return read_bandwidth(threads, 512 << 20, reps=5)


def thread_counts(text: str, flag: str) -> list[int]:
    """The thread counts of a flag written like ``1,2``; ValueError, with a one-line message, otherwise."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"{flag} must be positive integers separated by commas, got {text!r}")
    return counts


def format_table(rows, meta) -> str:
    out = [
        f"decode, batch 1, {meta['prompt_len']}-token prompt + {meta['tokens']} greedy tokens, median of "
        f"{meta['repeats']}; our kernel {meta['kernel']}, our path "
        f"{meta.get('ours', 'exact')}",
        f"machine: {machine.summary(meta)}",
        f"llama.cpp: llama-cpp-python {meta['llama_cpp']}, {meta['llama_system_info']}",
        f"{'shape':<20}{'thr':>4} {'side':<10}{'tok/s':>8}{'ours/llama':>11}{'peak RSS MB':>13}"
        f"{'weight MB/tok':>15}{'GB/s':>7}{'DRAM GB/s':>11}{'of DRAM':>9}",
    ]
    for r in rows:
        for side in SIDES:
            s = r[side]
            ratio = f"{r['ours']['tok_s'] / r['llama.cpp']['tok_s']:.2f}x" if side == "ours" else ""
            gbs = s["weight_bytes"] * s["tok_s"] / 1e9
            out.append(
                f"{r['shape']:<20}{r['threads']:>4} {side:<10}{s['tok_s']:>8.2f}{ratio:>11}"
                f"{s['peak_rss_mb']:>13.0f}{s['weight_bytes'] / 1e6:>15.1f}{gbs:>7.2f}{r['dram_gb_s']:>11.1f}"
                f"{gbs / r['dram_gb_s']:>9.0%}"
            )
        same = sum(a == b for a, b in zip(r["ours"]["tokens"], r["llama.cpp"]["tokens"]))
        out.append(
            f"{'':<24}same greedy tokens at {same}/{len(r['ours']['tokens'])} positions (random weights: "
            "near-ties everywhere, so agreement is not the point here)"
        )
    return "\n".join(out)


def ternary_macs(cfg: ModelConfig) -> int:
    """Ternary multiply-adds of one token (the head's are not counted: a prompt needs it for its last position only)."""
    d, kv, h = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden
    return cfg.n_layers * (d * (d + 2 * kv + d) + 3 * d * h)


def format_llama_bench(rows, meta) -> str:
    cols = [f"pp{n}" for n in LLAMA_BENCH_PP] + [f"tg{LLAMA_BENCH_TG}"]
    out = [
        f"llama-bench style: tokens/s, median of {meta['repeats']}; machine: {machine.summary(meta)}; "
        f"our kernel {meta['kernel']}, our path fused; multiply ceiling {meta['mac_peak']:.1f} G MAC/s per core "
        f"({meta['mac_instruction']}); llama.cpp: {meta['llama_cpp']}; load average {meta['load']}",
        f"{'shape':<20}{'thr':>4} {'side':<10}{'clock':<6}"
        + "".join(f"{c:>8}" for c in cols)
        + "".join(f"{'B=' + str(b):>8}" for b in BATCHES)
        + f"{'B8/B1':>7}{'pp128 of ceiling':>18}{'pp512 of ceiling':>18}{'tg of DRAM':>12}",
    ]
    for r in rows:
        ceiling = meta["mac_peak"] * 1e9 * r["threads"]
        for clock in ("wall", "cpu") if r["threads"] == 1 else ("wall",):
            for side in (s for s in SIDES if s in r):
                s = r[side]
                cells = "".join(f"{s[c][clock]:>8.1f}" for c in cols)
                b = {n: v[clock] for n, v in s["batched"].items()} if "batched" in s else None
                cells += "".join(f"{b[str(n)]:>8.1f}" for n in BATCHES) if b else "".join(f"{'-':>8}" for _ in BATCHES)
                cells += f"{b['8'] / b['1']:>6.2f}x" if b else f"{'-':>7}"
                fr = [s[f"pp{n}"][clock] * r["macs"] / ceiling for n in LLAMA_BENCH_PP]
                tg = s[f"tg{LLAMA_BENCH_TG}"][clock] * s["weight_bytes"] / 1e9 / r["dram_gb_s"]
                out.append(
                    f"{r['shape']:<20}{r['threads']:>4} {side:<10}{clock:<6}{cells}{fr[0]:>18.0%}{fr[1]:>18.0%}"
                    f"{tg:>12.0%}"
                )
            if "llama.cpp" in r:
                ratios = ", ".join(f"{c} {r['ours'][c][clock] / r['llama.cpp'][c][clock]:.2f}x" for c in cols)
                out.append(f"{'':<24}ours / llama.cpp ({clock}): {ratios}")
    out.append(
        "pp: a prompt of that many tokens in one call, last logits only; tg128: 128 tokens one at a time from an "
        "empty cache; B=b: b sequences, 8-token prompts, then 32 steps of b tokens (aggregate tokens/s; ours "
        "only); clock: wall time, or (one thread) the process's CPU time; of ceiling: ternary multiply-adds per "
        "token x tokens/s over the ceiling x threads; of DRAM: the side's own weight bytes per token (ours: packed "
        "layers + int8 head; llama.cpp: every tensor of the file, its F16 embedding read as the head) x tokens/s "
        "over the read-bandwidth probe at that thread count (best of 3, before the run)"
    )
    return "\n".join(out)


def run_llama_bench(args, threads, work, have_llama) -> int:
    """--llama-bench: the table above, both sides (ours alone without llama-cpp-python)."""
    from bitnet_ref import _bench

    backend = kernels.backend()
    peak = max(_bench.mac_peak(backend, 4_000_000) for _ in range(7)) / 1e9 if backend != "scalar" else 0.0
    rows = []
    bw = {t: bandwidth(t) for t in threads}
    for preset in filter(None, args.presets.split(",")):
        cfg = bench_config(preset)
        path = work / f"{preset}-random-tq2_0.gguf"
        if not path.exists():
            packed, floats = random_packed(cfg)
            GF.write_gguf(path, cfg, packed, floats, emb_type="f16", name=f"{preset} shape, random weights")
            del packed, floats
        for t in threads:
            row = {"shape": preset, "threads": t, "dram_gb_s": bw[t], "macs": ternary_macs(cfg)}
            for side in SIDES if have_llama else ("ours",):
                row[side] = run_child(side, path, t, [], 0, args.repeats, llama_bench=True)
                print(f"{preset}, {t} thread(s), {side}: {json.dumps(row[side])}", file=sys.stderr, flush=True)
            rows.append(row)
    meta = {
        **machine.describe(),
        "kernel": backend,
        "mac_peak": peak,
        "mac_instruction": {"avx512vnni": "vpdpbusd zmm", "avx2": "vpmaddubsw ymm"}.get(backend, backend),
        "llama_cpp": (
            f"llama-cpp-python {__import__('llama_cpp').__version__}" if have_llama else "not installed (ours only)"
        ),
        "repeats": args.repeats,
        "bandwidth_after": {t: bandwidth(t) for t in threads},
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    print(json.dumps({"meta": meta, "rows": rows}) if args.json else format_llama_bench(rows, meta))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/bench/bench_decode.py --vs-llama-cpp",
        description="Decode tokens/s, peak memory and weight GB/s, ours and llama.cpp's, on the same GGUF, in one run.",
    )
    p.add_argument("--vs-llama-cpp", action="store_true", help=argparse.SUPPRESS)  # how bench_decode.py calls us
    p.add_argument("--presets", default=",".join(PRESETS), help=f"shapes to run (default: {','.join(PRESETS)})")
    p.add_argument("--threads", default="1,2", help="thread counts (default: 1,2)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens after the prompt (default 64)")
    p.add_argument("--prompt-len", type=int, default=8, help="prompt tokens (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per child; the median is reported (default 3)")
    p.add_argument("--keep", metavar="DIR", help="write the GGUF files here and keep them (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--ours",
        choices=OURS_PATHS,
        default="fused",
        help="our decode path: fused (int8 tied head, one C++ call a token; the default) or exact (the "
        "bit-exact packed path, fp32 tied head)",
    )
    p.add_argument(
        "--llama-bench",
        action="store_true",
        help="instead of the decode comparison: pp128, pp512, tg128 per side and our batched decoding at B = 1, 4, "
        "8, with the fractions of the multiply ceiling and of the read bandwidth (see the module docstring)",
    )
    p.add_argument("--child", choices=("ours", "llama.cpp"), help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--prompt", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        a.threads = int(a.threads)
        return child(a)
    try:
        threads = thread_counts(a.threads, "--threads")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is None and not a.llama_bench:
        print(
            'error: llama-cpp-python is not installed; CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e ".[llama]"',
            file=sys.stderr,
        )
        return 2
    if not kernels.available():
        print(f"error: the C++ extension is not available ({kernels.import_error()})", file=sys.stderr)
        return 2
    try:
        GF.gguf_module()
    except GF.FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_llama_cpp_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.llama_bench:
        try:
            return run_llama_bench(a, threads, work, llama_cpp is not None)
        finally:
            if not a.keep:
                shutil.rmtree(work, ignore_errors=True)
    rows = []
    try:
        bw = {t: bandwidth(t) for t in threads}
        for preset in filter(None, a.presets.split(",")):
            cfg = bench_config(preset)
            path = work / f"{preset}-random-tq2_0.gguf"
            if not path.exists():
                packed, floats = random_packed(cfg)
                GF.write_gguf(path, cfg, packed, floats, emb_type="f16", name=f"{preset} shape, random weights")
                del packed, floats
            prompt = [(7 * i + 3) % cfg.vocab_size for i in range(a.prompt_len)]
            for t in threads:
                row = {"shape": preset, "threads": t, "dram_gb_s": bw[t]}
                for side in SIDES:
                    row[side] = run_child(side, path, t, prompt, a.tokens, a.repeats, a.ours)
                rows.append(row)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        **machine.describe(),
        "kernel": kernels.backend(),
        "llama_cpp": llama_cpp.__version__,
        "llama_system_info": rows[0]["llama.cpp"]["system_info"].strip() if rows else "",
        "tokens": a.tokens,
        "prompt_len": a.prompt_len,
        "repeats": a.repeats,
        "ours": a.ours,
    }
    print(json.dumps({"meta": meta, "rows": rows}) if a.json else format_table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
