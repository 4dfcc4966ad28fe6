"""What llama.cpp's ``llama-bench`` reports, for ours and our peers, in one table from one run
(``python tools/bench/bench_decode.py --llama-bench``).

Per shape and thread count, each side in a fresh process on the same random TQ2_0 GGUF (written as
tools/bench/bench_llama_cpp.py writes it): pp128 and pp512 (a prompt of that many tokens through an empty cache in
one call, the last position's logits only: tokens/s of the prompt), tg128 (128 tokens one at a time from an empty
cache), and batched decoding, ours only (llama-cpp-python has no multi-sequence API to time it with): B = 1, 4, 8
sequences (an 8-token prompt each, then 32 steps of B tokens; aggregate tokens/s). Beside them: pp as a fraction of
the multiply ceiling (the ternary multiply-adds of a token, times tokens/s, over the core's measured vpdpbusd /
vpmaddubsw rate times the threads) and tg as a fraction of the read bandwidth (the weight bytes a token reads,
times tokens/s, over the probe).

- ours: the fused path (``gguf_file.read_gguf(head="int8")`` -> ``packed_model`` -> ``FusedTransformer``);
- llama.cpp: llama-cpp-python's ``Llama.eval`` (skipped, with a note, when llama-cpp-python is not installed);
- bitnet.cpp, with ``--bitnet-cpp DIR`` (a directory tools/bench/bitnet_cpp.py built): its own llama-bench on its
  I2_S (and TL2) files of the bitnet_b1_58-large shape, random weights of the same distribution (not the same
  file: its converter writes its own formats).

By default the table is the one issue 29 asks for: the 2B-4T shape at one thread, the large shape at one and two.
``--presets smoke`` runs a shape small enough to check the harness end to end in a minute (not a measurement).
What this is not: a quality comparison (random weights decode noise) or a kernel benchmark
(tools/bench/bench_kernels.py).
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

import torch

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import machine
from bitnet_ref.formats import gguf_file as GF
from bitnet_ref.model import ModelConfig
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from tools.bench.bench_llama_cpp import bandwidth, bench_config, memory, missing_parts, random_packed, thread_counts

PP = (128, 512)
TG = 128
BATCHES = (1, 4, 8)
BATCH_PROMPT, BATCH_STEPS = 8, 32
# the table: the 2B-4T shape at one thread, the large shape (bitnet.cpp's) at one and two
DEFAULT_RUNS = {"bitnet-b1.58-2b-4t": (1,), "bitnet-b1.58-large": (1, 2)}
SMOKE = "smoke"  # a small shape with room for pp512 and dimensions llama.cpp's TQ2_0 blocks (256) divide


def shape(preset: str) -> ModelConfig:
    if preset == SMOKE:
        over = dict(d_model=256, n_layers=2, ffn_hidden=768, context=640, vocab_size=1024)
        return ModelConfig.preset("default", ffn_act="swiglu", tie_embeddings=True, **over)
    return bench_config(preset)


def ternary_macs(cfg: ModelConfig) -> int:
    """Ternary multiply-adds of one token (the head's are not counted: a prompt needs it for its last position only)."""
    d, kv, h = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden
    return cfg.n_layers * (d * (d + 2 * kv + d) + 3 * d * h)


# ---------------------------------------------------------------------------------------------- the sides


def median_rate(fn, repeats: int, cpu: bool) -> dict:
    """fn(clock) times one run with `clock` and returns tokens/s. After a warm-up, `repeats` runs timed by wall
    time and, if `cpu` (one-thread runs), as many by this process's CPU time (on a shared machine the CPU-time rate
    of a one-thread run says what the code does when it gets the core); the median of each."""
    fn(time.perf_counter)
    out = {"wall": statistics.median(fn(time.perf_counter) for _ in range(repeats))}
    if cpu:
        out["cpu"] = statistics.median(fn(time.process_time) for _ in range(repeats))
    return out


def ours(path, threads: int, repeats: int) -> dict:
    """pp128, pp512, tg128 and batched decoding of our fused path on the GGUF file."""
    from bitnet_ref.runtime.fused import FusedTransformer

    torch.set_num_threads(1)
    kernels.set_threads(threads)
    cfg, packed, floats = GF.read_gguf(path, head="int8")
    packed_model = GF.packed_model(cfg, packed, floats, threads=threads)
    del packed, floats
    weight_bytes = P.weight_bytes_per_token(packed_model)["total"]  # the int8 head whole, one embedding row
    model = FusedTransformer(packed_model, threads=threads)
    tokens = [(7 * i + 3) % cfg.vocab_size for i in range(max(PP + (TG,)))]

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
    out = {f"pp{n}": median_rate(lambda c, n=n: pp(n, c), repeats, cpu) for n in PP}
    out[f"tg{TG}"] = median_rate(lambda c: tg(TG, c), repeats, cpu)
    out["batched"] = {str(b): median_rate(lambda c, b=b: batched(b, c), repeats, cpu) for b in BATCHES}
    return {**out, "weight_bytes": weight_bytes, **memory()}


def llama_cpp(path, threads: int, repeats: int) -> dict:
    """pp128, pp512 and tg128 of llama.cpp on the same file, through llama-cpp-python (eval: the prompt in one
    batch of up to 512 tokens, logits of the last position only; tg one token per eval)."""
    import llama_cpp as lc

    n_max = max(PP)
    llm = lc.Llama(
        model_path=str(path),
        n_ctx=n_max + 8,
        n_batch=n_max,
        n_ubatch=n_max,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    tokens = [(7 * i + 3) % llm.n_vocab() for i in range(max(n_max, TG))]

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
    out = {f"pp{n}": median_rate(lambda c, n=n: pp(n, c), repeats, cpu) for n in PP}
    out[f"tg{TG}"] = median_rate(lambda c: tg(TG, c), repeats, cpu)
    weights = sum(int(t.n_bytes) for t in GF.gguf_module().GGUFReader(str(path)).tensors)  # F16 embedding = head
    return {**out, "weight_bytes": weights, "system_info": lc.llama_print_system_info().decode(), **memory()}


CHILDREN = {"ours": ours, "llama.cpp": llama_cpp}
SIDES = ("ours", "llama.cpp", "bitnet.cpp")


def run_child(side: str, path, threads: int, repeats: int) -> dict:
    """One side in a fresh process (no warm caches, no other side's memory), its result as JSON on stdout."""
    cmd = [sys.executable, __file__, "--child", side, "--gguf", str(path), "--threads", str(threads)]
    cmd += ["--repeats", str(repeats)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if p.returncode:
        raise SystemExit(f"error: the {side} child failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- the table


def format_table(rows, meta) -> str:
    cols = [f"pp{n}" for n in PP] + [f"tg{TG}"]
    out = [
        f"llama-bench style: tokens/s, median of {meta['repeats']}; machine: {machine.summary(meta)}; "
        f"our kernel {meta['kernel']}, our path fused; multiply ceiling {meta['mac_peak']:.1f} G MAC/s per core "
        f"({meta['mac_instruction']}); llama.cpp: {meta['llama_cpp']}; bitnet.cpp: {meta['bitnet_cpp']}; "
        f"load average before {meta['load_before']}, after {meta['load']}",
        f"{'shape':<20}{'thr':>4} {'side':<16}{'clock':<6}"
        + "".join(f"{c:>8}" for c in cols)
        + "".join(f"{'B=' + str(b):>8}" for b in BATCHES)
        + f"{'B8/B1':>7}{'pp128 of ceiling':>18}{'pp512 of ceiling':>18}{'tg of DRAM':>12}",
    ]
    for r in rows:
        ceiling = meta["mac_peak"] * 1e9 * r["threads"]
        for clock in ("wall", "cpu") if r["threads"] == 1 else ("wall",):
            for side, s in r["sides"].items():
                if clock not in s[cols[0]]:
                    continue  # bitnet.cpp's llama-bench times wall clock only
                cells = "".join(f"{s[c][clock]:>8.1f}" for c in cols)
                b = {n: v[clock] for n, v in s["batched"].items()} if "batched" in s else None
                cells += "".join(f"{b[str(n)]:>8.1f}" for n in BATCHES) if b else "".join(f"{'-':>8}" for _ in BATCHES)
                cells += f"{b['8'] / b['1']:>6.2f}x" if b else f"{'-':>7}"
                fr = "".join(
                    f"{s[f'pp{n}'][clock] * r['macs'] / ceiling:>18.0%}" if ceiling else f"{'-':>18}" for n in PP
                )  # no ceiling on the portable path (no multiply loop to time)
                tg = s[f"tg{TG}"][clock] * s["weight_bytes"] / 1e9 / r["dram_gb_s"]
                out.append(f"{r['shape']:<20}{r['threads']:>4} {side:<16}{clock:<6}{cells}{fr}{tg:>12.0%}")
            for peer in (
                p for p in r["sides"] if p != "ours" and "ours" in r["sides"] and clock in r["sides"][p][cols[0]]
            ):
                ratios = ", ".join(
                    f"{c} {r['sides']['ours'][c][clock] / r['sides'][peer][c][clock]:.2f}x" for c in cols
                )
                out.append(f"{'':<24}ours / {peer} ({clock}): {ratios}")
    out.append(
        "pp: a prompt of that many tokens in one call, last logits only; tg128: 128 tokens one at a time from an "
        "empty cache; B=b: b sequences, 8-token prompts, then 32 steps of b tokens (aggregate tokens/s; ours "
        "only); clock: wall time, or (one thread) the process's CPU time; of ceiling: ternary multiply-adds per "
        "token x tokens/s over the ceiling x threads; of DRAM: the side's own weight bytes per token (ours: packed "
        "layers + int8 head; llama.cpp: every tensor of the file, its F16 embedding read as the head; bitnet.cpp: "
        "its file's size) x tokens/s over the read-bandwidth probe at that thread count (best of 3, before the run)"
    )
    return "\n".join(out)


def runs_of(args) -> list[tuple[str, list[int]]]:
    """(preset, thread counts) pairs: --threads for every preset when given, else the issue's table's counts."""
    presets = [p for p in args.presets.split(",") if p] if args.presets else list(DEFAULT_RUNS)
    for p in presets:
        if p != SMOKE and p not in DEFAULT_RUNS:
            raise ValueError(f"unknown preset {p!r}; choose from {', '.join([*DEFAULT_RUNS, SMOKE])}")
    if args.threads:
        counts = thread_counts(args.threads, "--threads")
        return [(p, counts) for p in presets]
    return [(p, list(DEFAULT_RUNS.get(p, (1,)))) for p in presets]


def bitnet_cpp_sides(args, preset: str, threads: int) -> dict:
    """bitnet.cpp's rows at this shape and thread count, if --bitnet-cpp names a build with a model of the shape."""
    if not args.bitnet_cpp or "bitnet.cpp" not in args.sides:
        return {}
    from tools.bench import bitnet_cpp

    return bitnet_cpp.bench(Path(args.bitnet_cpp).resolve(), preset, threads, args.repeats)


def run(args, runs, work: Path, have_llama: bool) -> int:
    from bitnet_ref import _bench

    backend = kernels.backend()
    peak = max(_bench.mac_peak(backend, 4_000_000) for _ in range(7)) / 1e9 if backend != "scalar" else 0.0
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    bw = {t: bandwidth(t) for t in sorted({t for _, ts in runs for t in ts})}
    rows = []
    for preset, counts in runs:
        cfg = shape(preset)
        path = work / f"{preset}-random-tq2_0.gguf"
        ours_sides = [s for s in ("ours", "llama.cpp") if s in args.sides and (s == "ours" or have_llama)]
        if ours_sides and not path.exists():
            packed, floats = random_packed(cfg)
            GF.write_gguf(path, cfg, packed, floats, emb_type="f16", name=f"{preset} shape, random weights")
            del packed, floats
        for t in counts:
            row = {"shape": preset, "threads": t, "dram_gb_s": bw[t], "macs": ternary_macs(cfg), "sides": {}}
            for side in ours_sides:
                row["sides"][side] = run_child(side, path, t, args.repeats)
                print(f"{preset}, {t} thread(s), {side}: {json.dumps(row['sides'][side])}", file=sys.stderr, flush=True)
            for side, s in bitnet_cpp_sides(args, preset, t).items():
                row["sides"][side] = s
                print(f"{preset}, {t} thread(s), {side}: {json.dumps(s)}", file=sys.stderr, flush=True)
            rows.append(row)
    meta = {
        **machine.describe(),
        "kernel": backend,
        "mac_peak": peak,
        "mac_instruction": {"avx512vnni": "vpdpbusd zmm", "avx2": "vpmaddubsw ymm"}.get(backend, backend),
        "llama_cpp": (
            f"llama-cpp-python {__import__('llama_cpp').__version__}"
            if have_llama and "llama.cpp" in args.sides
            else "not run"
            if have_llama
            else "not installed (not run)"
        ),
        "bitnet_cpp": "built from microsoft/BitNet (--bitnet-cpp)" if args.bitnet_cpp else "not run (--bitnet-cpp DIR)",
        "repeats": args.repeats,
        "bandwidth_after": {t: bandwidth(t) for t in bw},
        "load_before": load_before,
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    print(json.dumps({"meta": meta, "rows": rows}) if args.json else format_table(rows, meta))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/bench/bench_decode.py --llama-bench",
        description="pp128, pp512, tg128 (as llama-bench names them) and batched decoding at B = 1, 4, 8: ours, "
        "llama.cpp's and (with --bitnet-cpp) bitnet.cpp's, with the fractions of the multiply ceiling and of "
        "the read bandwidth, in one table from one run.",
    )
    p.add_argument("--llama-bench", action="store_true", help=argparse.SUPPRESS)  # how bench_decode.py calls us
    p.add_argument(
        "--presets",
        help=f"shapes, comma-separated: {', '.join(DEFAULT_RUNS)}, or {SMOKE} (a small shape that checks the harness "
        "end to end; not a measurement); default: the first two",
    )
    p.add_argument(
        "--threads", help="thread counts for every shape, e.g. 1,2 (default: 1 for the 2B-4T shape, 1,2 for large)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median (default 3)")
    p.add_argument("--keep", metavar="DIR", help="write the GGUF files here and keep them (default: a temp dir)")
    p.add_argument(
        "--bitnet-cpp",
        metavar="DIR",
        help="a bitnet.cpp built by tools/bench/bitnet_cpp.py in DIR: add its llama-bench rows (large shape)",
    )
    p.add_argument(
        "--sides", default=",".join(SIDES), help=f"which sides to run, comma-separated (default: {','.join(SIDES)})"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(CHILDREN[a.child](a.gguf, int(a.threads), a.repeats)))
        return 0
    try:
        runs = runs_of(a)
        a.sides = [s for s in a.sides.split(",") if s]
        if not a.sides or set(a.sides) - set(SIDES):
            raise ValueError(f"--sides must name some of {', '.join(SIDES)}, got {','.join(a.sides)!r}")
        if a.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {a.repeats}")
        if a.bitnet_cpp:
            from tools.bench import bitnet_cpp

            bitnet_cpp.check_build(Path(a.bitnet_cpp))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problem = missing_parts()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        have_llama = False
    else:
        have_llama = True
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="llama_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(a, runs, work, have_llama)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
