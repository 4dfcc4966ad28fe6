"""Benchmark the packed ternary kernels against torch fp32 F.linear and our portable path.

For every (N, K) weight shape, activation rows M, thread count (1 and all cores) and cache state
(hot: one weight copy reused, stays in cache; cold: rotating through enough copies to exceed the
last-level cache several times), it reports the median time per call, G weights/s (M*N*K / t),
the speed-up over torch fp32 ``F.linear`` and over our forced portable (scalar) kernel, the
throughput relative to M = 1 ("x GEMV": 2.0 means an M-row call does the work of 2x as many
separate GEMVs in the same time), and the roofline ratio: bytes a call must read (packed weights,
activations, outputs) per second, divided by the measured streaming read bandwidth at that thread
count. Hot rows can exceed 1.0 because cache is faster than DRAM. "of peak" divides the multiply-add
rate (per CPU second of the calling thread on single-threaded rows, per wall second otherwise) by what the
core's multiply instruction allows (measured at the start, per CPU second: vpdpbusd zmm for avx512vnni,
vpmaddubsw ymm for avx2, sdot for dotprod, smlal for neon, times the thread count): no arrangement of the
same instructions can pass 1.0, which bounds "x GEMV" at 1 / (the GEMV's "of peak") for hot weights. For
single-threaded rows, "cpu G/s" uses the calling thread's CPU time instead of wall time: on a shared,
oversubscribed machine, calls longer than a scheduler time slice get preempted and their wall time says more
about the neighbours than about the kernel.

A second section times our AVX2 and AVX-512 kernels side by side with a bitnet.cpp-style I2_S GEMV loop: our
own re-implementation of bitnet.cpp's published AVX2 I2_S 1x1 algorithm (cpp/bench/i2s_avx2.cpp, benchmark
only, same AVX2 compile flags, int16 accumulation as published, not exact for K > 2048 with adversarial input),
at 256x256, 4096x4096 and 11008x4096, M = 1, one thread, hot and cold, with the ratio of each to the I2_S
loop. Every call goes through a pybind11 call (ours: ternary_matmul; I2_S: _bench.i2s_gemv, which also
computes the activation sum, as bitnet.cpp's quantizer does), and the same calls are timed again inside C++
(_bench.gemv_seconds), without the Python call around each: those columns compare with figures
measured in C, such as bitnet.cpp's.

A third section puts the two packed formats side by side (M = 1, each thread count, hot and cold, the same
weights): the 2-bit format (cpp/ternary.h, the backend's kernel) and the 1.6-bit one (cpp/ternary5.h, five
weights per byte, its AVX2 or NEON kernel), with each one's roofline computed from its own bytes per weight and the
ratio of their speeds. The ceilings (read bandwidth, multiply rate) are the ones measured at the start of the run.

A fourth section (AVX2 backend) times the AVX2 GEMV with its two row orders side by side (M = 1, each thread
count, hot and cold, timed inside C++): tiles of four rows a quarter of each thread's range apart, the kernel's
order, which reads four sequential weight streams at once, and tiles of four adjacent rows (one stream,
hardware prefetch only), with the ratio. The header also gives the read bandwidth of one sequential stream per
thread beside the four-stream probe the roofline column uses: a kernel that reads one stream cannot pass the
first.

The bandwidth probe, the multiply ceiling and the I2_S-style loop are benchmark-only code in their own
extension, bitnet_ref._bench (cpp/bench/), built by the same pip install as the kernels' bitnet_ref._core.

The implementations are timed in interleaved rounds, case by case, so that noise from a
shared machine hits them alike; medians, not means. Timings include the Python call overhead of
``kernels.ternary_matmul`` (what callers pay). Not a decode benchmark: see tools/bench/bench_decode.py.

    python tools/bench/bench_kernels.py                  # the full table (a few minutes)
    python tools/bench/bench_kernels.py --quick          # smoke test, seconds
    python tools/bench/bench_kernels.py --json out.json  # also write the table as JSON
    python tools/bench/bench_kernels.py --backend avx2 --threads 1 --shapes 4096x4096 --m 1 8
    python tools/bench/bench_kernels.py --i2s-only       # just the side-by-side with the I2_S-style loop
    python tools/bench/bench_kernels.py --formats-only --threads 1   # just 2-bit vs 1.6-bit
    python tools/bench/bench_kernels.py --order-only     # just the AVX2 GEMV's row orders
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import machine
from tools.bench.memory import read_bandwidth

SHAPES = [(256, 256), (2048, 2048), (4096, 4096), (11008, 4096), (4096, 11008)]
MS = [1, 8, 64]
QUICK_SHAPES = [(256, 256), (2048, 2048)]
QUICK_MS = [1, 8]
I2S_SHAPES = [(256, 256), (4096, 4096), (11008, 4096)]
FORMAT_SHAPES = [(2048, 2048), (4096, 4096), (11008, 4096), (4096, 11008)]


class BenchError(Exception):
    """A user-facing problem (no extension, bad flag value)."""


# The multiply instruction each backend's ceiling is measured on (cpp/bench/mac_loop_*_asm.cpp).
MAC_INSTRUCTION = {"avx512vnni": "vpdpbusd zmm", "avx2": "vpmaddubsw ymm", "dotprod": "sdot", "neon": "smlal"}


def llc_bytes() -> int:
    """Last-level cache size (Linux sysfs), 32 MiB if unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(f"{base}/{idx}/size") as f:
                    txt = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
            best = max(best, int(txt.rstrip("KMG")) * mult)
    except OSError:
        pass
    return best or 32 << 20


def time_rounds(fns: dict, min_time: float, rounds: int = 5, cpu_of: str | None = None) -> tuple[dict, float | None]:
    """Median wall seconds per call of each fn, timed in interleaved rounds, and the median CPU
    time of the calling thread for fn `cpu_of` (only meaningful for single-threaded calls; "*": a dict
    of it for every fn)."""
    samples = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up, and a per-call estimate to size the rounds
        t0 = time.perf_counter()
        fn()
        samples[name] = [time.perf_counter() - t0]
    reps = {name: max(1, min(2000, int(min_time / rounds / max(s[0], 1e-7)))) for name, s in samples.items()}
    for name in fns:
        samples[name] = []
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(reps[name]):
                c0 = time.thread_time()
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                c1 = time.thread_time()
                samples[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    walls = {name: statistics.median(s) for name, s in samples.items()}
    if cpu_of == "*":
        return walls, {name: statistics.median(c) for name, c in cpu.items()}
    return walls, (statistics.median(cpu[cpu_of]) if cpu_of in cpu else None)


def weight_copies(buf, cold: bool, cold_bytes: int, copy=lambda b: b.copy()) -> list:
    """[buf] when hot; when cold, buf and enough copies of it (at least two) to total cold_bytes."""
    nbytes = buf.nbytes if hasattr(buf, "nbytes") else buf.numel() * buf.element_size()
    count = max(2, math.ceil(cold_bytes / nbytes)) if cold else 1
    return [buf] + [copy(buf) for _ in range(count - 1)]


def section(title: str, header: str) -> None:
    """Prints a side-by-side section's title and column header."""
    print()
    print(title)
    print(header)
    print("-" * len(header))


def cases(shapes, threads_list):
    """(n, k, threads, cold) for every shape, thread count and cache state, in the order the sections print."""
    for n, k in shapes:
        for threads in threads_list:
            for cold in (False, True):
                yield n, k, threads, cold


def rotating(call, copies):
    """A no-argument function that calls call(copy) with the next copy each time."""
    state = {"i": 0}

    def fn():
        i = state["i"]
        state["i"] = (i + 1) % len(copies)
        return call(copies[i])

    return fn


def bench_case(kernels, torch, n, k, m, threads, cold, cold_bytes, min_time, rng, backend):
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)  # (N, K)
    x = rng.integers(-127, 128, size=(m, k), dtype=np.int8)  # (M, K)
    packed = kernels.pack_ternary(codes)
    wf = torch.from_numpy(codes.astype(np.float32))  # (N, K) fp32 weights, same values
    xf = torch.from_numpy(x.astype(np.float32))  # (M, K)
    packs = weight_copies(packed, cold, cold_bytes)
    wfs = weight_copies(wf, cold, cold_bytes, copy=lambda w: w.clone())
    linear = torch.nn.functional.linear
    fns = {
        "ours": rotating(lambda p: kernels.ternary_matmul(x, p, n, k, threads=threads, backend=backend), packs),
        "portable": rotating(lambda p: kernels.ternary_matmul(x, p, n, k, threads=threads, force_scalar=True), packs),
        "torch": rotating(lambda w: linear(xf, w), wfs),
    }
    # The result must be right before it is timed.
    want = x.astype(np.int64) @ codes.astype(np.int64).T  # (M, N)
    if not np.array_equal(fns["ours"](), want):
        raise AssertionError(f"kernel result differs from numpy for N={n} K={k} M={m}")
    torch.set_num_threads(threads)
    t, cpu = time_rounds(fns, min_time, cpu_of="ours" if threads == 1 else None)
    del packs, wfs
    return t, cpu, packed.nbytes


def bench_i2s_case(kernels, bench, n, k, cold, cold_bytes, min_time, rng):
    """Median wall seconds per M = 1, one-thread call: our kernels and the I2_S-style loop on the same weights."""
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)  # (N, K)
    x = rng.integers(-127, 128, size=(1, k), dtype=np.int8)  # (1, K); random: the I2_S loop cannot wrap
    packed = kernels.pack_ternary(codes)
    w_i2s = bench.i2s_repack(packed, n, k)
    packs = weight_copies(packed, cold, cold_bytes)
    ws = weight_copies(w_i2s, cold, cold_bytes)
    fns = {"i2s": rotating(lambda w: bench.i2s_gemv(x, w, n, k), ws)}
    for b in ("avx2", "avx512vnni"):
        if b in kernels.supported_backends():
            fns[b] = rotating(lambda p, b=b: kernels.ternary_matmul(x, p, n, k, threads=1, backend=b), packs)
    want = x.astype(np.int64) @ codes.astype(np.int64).T  # (1, N)
    for name, fn in fns.items():
        if not np.array_equal(fn(), want):
            raise AssertionError(f"{name} result differs from numpy for N={n} K={k}")
    t, _ = time_rounds(fns, min_time)
    # The same calls timed inside C++, without the Python call around each: comparable to figures
    # measured in C (bitnet.cpp's). Interleaved rounds again; median per call.
    samples = {name: [] for name in fns}
    reps = {name: max(1, min(5000, int(min_time / 5 / max(t[name], 1e-7)))) for name in fns}
    for _ in range(5):
        for name in fns:
            bufs = ws if name == "i2s" else packs
            samples[name] += bench.gemv_seconds(name, x, bufs, n, k, reps[name])
    t_cpp = {name: statistics.median(v) for name, v in samples.items()}
    return t, t_cpp


def run_i2s_section(kernels, bench, cold_bytes, min_time, rng) -> list:
    section(
        "side by side, M = 1, 1 thread: ours vs a bitnet.cpp-style I2_S loop (our re-implementation of the "
        "published algorithm, same -mavx2 flags)\n(python: timed around each Python call, like the table above; "
        "C++: the same calls timed inside C++)",
        f"{'N x K':>12} {'cache':>5} {'impl':>11} {'us':>9} {'G w/s':>7} {'x I2_S':>7}"
        f" {'C++ us':>9} {'C++ G w/s':>9} {'x I2_S':>7}",
    )
    rows = []
    for n, k in I2S_SHAPES:
        for cold in (False, True):
            t, tc = bench_i2s_case(kernels, bench, n, k, cold, cold_bytes, min_time, rng)
            for name in ("i2s", "avx2", "avx512vnni"):
                if name not in t:
                    continue
                row = {
                    "n": n,
                    "k": k,
                    "m": 1,
                    "threads": 1,
                    "cache": "cold" if cold else "hot",
                    "impl": "i2s_style" if name == "i2s" else name,
                    "us": t[name] * 1e6,
                    "gweights_s": n * k / t[name] / 1e9,
                    "x_i2s": t["i2s"] / t[name],
                    "cpp_us": tc[name] * 1e6,
                    "cpp_gweights_s": n * k / tc[name] / 1e9,
                    "cpp_x_i2s": tc["i2s"] / tc[name],
                }
                rows.append(row)
                print(
                    f"{n:>5} x {k:<5} {row['cache']:>5} {row['impl']:>11} {row['us']:>9.1f}"
                    f" {row['gweights_s']:>7.1f} {row['x_i2s']:>7.2f}"
                    f" {row['cpp_us']:>9.1f} {row['cpp_gweights_s']:>9.1f} {row['cpp_x_i2s']:>7.2f}",
                    flush=True,
                )
    return rows


def bench_formats_case(kernels, n, k, threads, cold, cold_bytes, min_time, rng, backend):
    """Median wall seconds per M = 1 call of the 2-bit and the 1.6-bit kernels on the same weights and input."""
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)  # (N, K)
    x = rng.integers(-128, 128, size=(1, k), dtype=np.int8)  # (1, K)
    want = x.astype(np.int64) @ codes.astype(np.int64).T  # (1, N)
    fns, nbytes = {}, {}
    for fmt in ("2", "1.6"):
        packed = kernels.pack_ternary(codes, format=fmt)
        packs = weight_copies(packed, cold, cold_bytes)
        # The same backend for both formats: an avx512vnni CPU runs the 1.6-bit format with its AVX2 kernel.
        fns[fmt] = rotating(
            lambda p, fmt=fmt: kernels.ternary_matmul(x, p, n, k, threads=threads, backend=backend, format=fmt), packs
        )
        nbytes[fmt] = packed.nbytes
        if not np.array_equal(fns[fmt](), want):
            raise AssertionError(f"format {fmt} result differs from numpy for N={n} K={k}")
    t, cpu = time_rounds(fns, min_time, cpu_of="*")
    return t, (cpu if threads == 1 else None), nbytes


def run_formats_section(kernels, shapes, threads_list, cold_bytes, min_time, rng, backend, bandwidth, peak) -> list:
    section(
        f"formats side by side, M = 1: 2-bit ({backend}) vs 1.6-bit (five weights per byte, "
        f"{'avx2' if backend == 'avx512vnni' else backend}); same weights, interleaved rounds",
        f"{'N x K':>12} {'thr':>3} {'cache':>5} {'format':>6} {'bits/w':>6} {'us':>9} {'G w/s':>7} {'cpu G/s':>7}"
        f" {'GB/s':>6} {'roofline':>8} {'of peak':>7} {'x 2-bit':>7}",
    )
    rows = []
    for n, k, threads, cold in cases(shapes, threads_list):
        t, cpu, nbytes = bench_formats_case(kernels, n, k, threads, cold, cold_bytes, min_time, rng, backend)
        for fmt in ("2", "1.6"):
            rate = n * k / t[fmt] / 1e9
            cpu_rate = n * k / cpu[fmt] / 1e9 if cpu and cpu[fmt] > 0 else None
            row = {
                "n": n,
                "k": k,
                "m": 1,
                "threads": threads,
                "cache": "cold" if cold else "hot",
                "format": fmt,
                "bits_per_weight": 8 * nbytes[fmt] / (n * k),
                "us": t[fmt] * 1e6,
                "gweights_s": rate,
                "gweights_s_cpu": cpu_rate,
                "weight_gbs": nbytes[fmt] / t[fmt] / 1e9,
                "roofline": (nbytes[fmt] + k + 4 * n) / t[fmt] / 1e9 / bandwidth[threads],
                "of_peak": (cpu_rate or rate) / (peak * threads) if peak else None,
                "x_2bit": t["2"] / t[fmt],
            }
            rows.append(row)
            op = f"{row['of_peak']:.2f}" if row["of_peak"] else "-"
            gc = f"{cpu_rate:.1f}" if cpu_rate else "-"
            print(
                f"{n:>5} x {k:<5} {threads:>3} {row['cache']:>5} {fmt:>6} {row['bits_per_weight']:>6.3f}"
                f" {row['us']:>9.1f} {rate:>7.1f} {gc:>7} {row['weight_gbs']:>6.1f} {row['roofline']:>8.2f}"
                f" {op:>7} {row['x_2bit']:>7.2f}",
                flush=True,
            )
    return rows


def bench_order_case(bench, kernels, n, k, threads, cold, cold_bytes, min_time, rng):
    """Median seconds per M = 1 call, timed inside C++, of the AVX2 GEMV in its two row orders, same weights."""
    codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)  # (N, K)
    x = rng.integers(-128, 128, size=(1, k), dtype=np.int8)  # (1, K)
    packed = kernels.pack_ternary(codes)
    packs = weight_copies(packed, cold, cold_bytes)
    # est. seconds per call at ~60 G weights/s per thread; then enough calls for min_time over 5 rounds
    reps = max(3, min(5000, int(min_time / 5 / (n * k / (60e9 * threads)))))
    samples = {"avx2": [], "avx2-adjacent": []}
    for _ in range(5):
        for impl in samples:
            samples[impl] += bench.gemv_seconds(impl, x, packs, n, k, reps, threads)
    return {impl: statistics.median(v) for impl, v in samples.items()}, packed.nbytes


def run_order_section(kernels, bench, shapes, threads_list, cold_bytes, min_time, rng, bandwidth) -> list:
    section(
        "AVX2 GEMV row order, M = 1 (timed in C++): four rows a quarter of the range apart (four read streams, "
        "the kernel's order) vs four adjacent rows (one stream, hardware prefetch only)",
        f"{'N x K':>12} {'thr':>3} {'cache':>5} {'order':>8} {'us':>9} {'G w/s':>7} {'GB/s':>6}"
        f" {'roofline':>8} {'x adjacent':>10}",
    )
    rows = []
    for n, k, threads, cold in cases(shapes, threads_list):
        t, nbytes = bench_order_case(bench, kernels, n, k, threads, cold, cold_bytes, min_time, rng)
        for impl, order in (("avx2", "spread"), ("avx2-adjacent", "adjacent")):
            row = {
                "n": n,
                "k": k,
                "m": 1,
                "threads": threads,
                "cache": "cold" if cold else "hot",
                "order": order,
                "us": t[impl] * 1e6,
                "gweights_s": n * k / t[impl] / 1e9,
                "weight_gbs": nbytes / t[impl] / 1e9,
                "roofline": (nbytes + k + 4 * n) / t[impl] / 1e9 / bandwidth[threads],
                "x_adjacent": t["avx2-adjacent"] / t[impl],
            }
            rows.append(row)
            print(
                f"{n:>5} x {k:<5} {threads:>3} {row['cache']:>5} {order:>8} {row['us']:>9.1f}"
                f" {row['gweights_s']:>7.1f} {row['weight_gbs']:>6.1f} {row['roofline']:>8.2f}"
                f" {row['x_adjacent']:>10.2f}",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small shapes, M in {1, 8}, short timings (smoke test)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds of timing per implementation per case (default 0.3, --quick 0.02)",
    )
    ap.add_argument(
        "--threads", type=int, nargs="+", default=None, help="thread counts to run (default: 1 and all cores)"
    )
    ap.add_argument(
        "--backend",
        default=None,
        help="kernel to time: avx512vnni, avx2, dotprod, neon or scalar (default: the best this CPU has)",
    )
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="NxK",
        help="weight shapes to run, e.g. 4096x4096 11008x4096 (default: the full set)",
    )
    ap.add_argument("--m", type=int, nargs="+", default=None, help="activation rows M to run (default: 1 8 64)")
    ap.add_argument("--no-i2s", action="store_true", help="skip the side-by-side with the I2_S-style loop")
    ap.add_argument("--i2s-only", action="store_true", help="run only the side-by-side with the I2_S-style loop")
    ap.add_argument("--no-formats", action="store_true", help="skip the 2-bit vs 1.6-bit side by side")
    ap.add_argument(
        "--formats-only",
        action="store_true",
        help="run only the 2-bit vs 1.6-bit side by side (shapes: --shapes, or 2048x2048 and up)",
    )
    ap.add_argument("--no-order", action="store_true", help="skip the AVX2 GEMV row-order side by side")
    ap.add_argument(
        "--order-only",
        action="store_true",
        help="run only the AVX2 GEMV row-order side by side (shapes: --shapes, or 2048x2048 and up)",
    )
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def resolve_args(args, kernels) -> tuple:
    """(thread counts, min time, shapes, M values, backend) from the flags, each checked (BenchError)."""
    threads_list = args.threads or sorted({1, machine.cores()})
    if any(t < 1 for t in threads_list):
        raise BenchError("--threads values must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.3)
    if min_time <= 0:
        raise BenchError("--min-time must be > 0")
    shapes, ms = (QUICK_SHAPES, QUICK_MS) if args.quick else (SHAPES, MS)
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
        except ValueError:
            raise BenchError(f"--shapes takes NxK values like 4096x4096, got {' '.join(args.shapes)}") from None
        if any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise BenchError("--shapes takes NxK values with N, K >= 1")
    if args.m:
        if min(args.m) < 1:
            raise BenchError("--m values must be >= 1")
        ms = sorted(set(args.m) | {1})  # M = 1 is the reference for the x GEMV column
    if args.backend is not None and args.backend not in kernels.supported_backends():
        raise BenchError(
            f"backend {args.backend!r} is not available here; choose from {', '.join(kernels.supported_backends())}"
        )
    backend = args.backend or kernels.backend()
    return threads_list, min_time, shapes, ms, backend


def run_main_table(
    kernels, torch, shapes, ms, threads_list, cold_bytes, min_time, rng, backend, bandwidth, peak
) -> list:
    """The main table: every shape, thread count, hot and cold, every M; printed row by row, returned as dicts."""
    gemv_rate = {}
    rows = []
    for n, k in shapes:
        for threads in threads_list:
            for cold in (False, True):
                for m in ms:
                    t, cpu, nbytes = bench_case(
                        kernels, torch, n, k, m, threads, cold, cold_bytes, min_time, rng, backend
                    )
                    work = m * n * k
                    rate = work / t["ours"] / 1e9
                    key = (n, k, threads, cold)
                    if m == 1:
                        gemv_rate[key] = rate
                    bytes_per_call = nbytes + m * k + 4 * m * n
                    row = {
                        "n": n,
                        "k": k,
                        "m": m,
                        "threads": threads,
                        "cache": "cold" if cold else "hot",
                        "us": t["ours"] * 1e6,
                        "gweights_s": rate,
                        "cpu_us": cpu * 1e6 if cpu else None,
                        "gweights_s_cpu": work / cpu / 1e9 if cpu else None,
                        "torch_us": t["torch"] * 1e6,
                        "portable_us": t["portable"] * 1e6,
                        "x_torch": t["torch"] / t["ours"],
                        "x_portable": t["portable"] / t["ours"],
                        "x_gemv": rate / gemv_rate[key] if key in gemv_rate else None,
                        "roofline": bytes_per_call / t["ours"] / 1e9 / bandwidth[threads],
                        # per CPU second on single-threaded rows, like the ceiling (mac_peak counts thread CPU time)
                        "of_peak": (work / cpu / 1e9 if cpu else rate) / (peak * threads) if peak else None,
                    }
                    rows.append(row)
                    xg = f"{row['x_gemv']:.2f}" if m > 1 and row["x_gemv"] else "-"
                    gc = f"{row['gweights_s_cpu']:.1f}" if row["gweights_s_cpu"] else "-"
                    op = f"{row['of_peak']:.2f}" if row["of_peak"] else "-"  # no ceiling measured: no asm build
                    print(
                        f"{n:>5} x {k:<5} {m:>3} {threads:>3} {row['cache']:>5} {row['us']:>10.1f}"
                        f" {rate:>7.1f} {gc:>7} {row['x_torch']:>8.1f} {row['x_portable']:>10.1f} {xg:>7}"
                        f" {row['roofline']:>8.2f} {op:>7}",
                        flush=True,
                    )
    return rows


def run(args) -> int:
    from bitnet_ref.runtime import kernels

    if not kernels.available():
        raise BenchError(f"the C++ extension is not available: {kernels.import_error()}")
    try:
        from bitnet_ref import _bench
    except ImportError as exc:  # _core loaded but not _bench: a partial or stale build
        raise BenchError(
            f"the benchmark extension bitnet_ref._bench is not available ({exc}); reinstall with `pip install -e .`"
        ) from None
    import torch

    threads_list, min_time, shapes, ms, backend = resolve_args(args, kernels)
    llc = llc_bytes()
    cold_bytes = 4 * llc
    bw_bytes = (64 << 20) if args.quick else max(8 * llc, 256 << 20)

    # Both ceilings are the best of a few measurements (see read_bandwidth for why the best).
    def measure_bandwidth():
        tries, reps = (1, 3) if args.quick else (3, 5)
        return {t: read_bandwidth(t, bw_bytes, reps=reps, tries=tries) for t in threads_list}

    # Measured before the table (the roofline column) and again after it, to show the drift.
    bandwidth = measure_bandwidth()
    one_stream = {t: read_bandwidth(t, bw_bytes, tries=1 if args.quick else 3, streams=1) for t in threads_list}
    # The multiply ceiling of one core: the best of seven short runs of 4M iterations each, short enough to fit
    # between preemptions. Only where the build has an assembly loop to measure it with (GCC/Clang
    # with BITNET_INLINE_ASM): elsewhere mac_peak is 0 and the column shows "-".
    mac_peak = {
        b: max(_bench.mac_peak(b, 4_000_000) for _ in range(7)) / 1e9
        for b in kernels.supported_backends()
        if b != "scalar"
    }
    mac_peak = {b: v for b, v in mac_peak.items() if v > 0}
    peak = mac_peak.get(backend) or None
    info = {
        **machine.describe(),
        "backend": backend,
        "supported_backends": kernels.supported_backends(),
        "llc_bytes": llc,
        "cold_bytes": cold_bytes,
        "read_bandwidth_gbs": {str(t): round(v, 2) for t, v in bandwidth.items()},
        "read_bandwidth_one_stream_gbs": {str(t): round(v, 2) for t, v in one_stream.items()},
        "mac_peak_gmacs_per_core": {b: round(v, 1) for b, v in mac_peak.items()},
    }
    print(f"machine: {machine.summary(info)}")
    print(f"backend: {info['backend']} (supported: {', '.join(info['supported_backends'])})")
    print(
        "measured read bandwidth (best of 3): "
        + ", ".join(f"{t} thread{'s' * (t > 1)}: {bw:.1f} GB/s" for t, bw in bandwidth.items())
        + " (four sequential streams per thread; one stream: "
        + ", ".join(f"{bw:.1f}" for bw in one_stream.values())
        + " GB/s)"
    )
    if mac_peak:
        print(
            "multiply ceiling of one core (best of 7): "
            + ", ".join(f"{b} {v:.1f} G MAC/s ({MAC_INSTRUCTION[b]})" for b, v in mac_peak.items())
        )
    print(f"cold = rotating copies totalling >= {cold_bytes >> 20} MiB (4x the {llc >> 20} MiB last-level cache)")
    header = (
        f"{'N x K':>12} {'M':>3} {'thr':>3} {'cache':>5} {'us':>10} {'G w/s':>7} {'cpu G/s':>7} {'x torch':>8}"
        f" {'x portable':>10} {'x GEMV':>7} {'roofline':>8} {'of peak':>7}"
    )
    only_order = args.order_only and not (args.i2s_only or args.formats_only)
    only_formats = args.formats_only and not args.i2s_only
    if not (args.i2s_only or only_formats or only_order):
        print(header)
        print("-" * len(header))

    rng = np.random.default_rng(0)
    rows = []
    if not (args.i2s_only or only_formats or only_order):
        rows = run_main_table(
            kernels, torch, shapes, ms, threads_list, cold_bytes, min_time, rng, backend, bandwidth, peak
        )
    i2s_rows = []
    if not (args.no_i2s or only_formats or only_order):
        if hasattr(_bench, "i2s_gemv") and kernels.has_avx2():
            i2s_rows = run_i2s_section(kernels, _bench, cold_bytes, min_time, rng)
        else:
            print("\nI2_S-style side by side skipped: needs an AVX2 x86 build")
    format_rows = []
    fshapes = shapes if args.shapes else ([(2048, 2048)] if args.quick else FORMAT_SHAPES)
    if not (args.no_formats or args.i2s_only or only_order):
        format_rows = run_formats_section(
            kernels, fshapes, threads_list, cold_bytes, min_time, rng, backend, bandwidth, peak
        )
    order_rows = []
    if not (args.no_order or args.i2s_only or only_formats):
        if backend == "avx2" and hasattr(_bench, "i2s_gemv"):
            order_rows = run_order_section(kernels, _bench, fshapes, threads_list, cold_bytes, min_time, rng, bandwidth)
        else:
            print(f"\nrow-order side by side skipped: it times the AVX2 backend's GEMV (this run: {backend})")
    after = measure_bandwidth()
    print(
        "read bandwidth after the run: "
        + ", ".join(f"{t}: {bw:.1f} GB/s" for t, bw in after.items())
        + " (the roofline column used the before-run figures)"
    )
    info["read_bandwidth_after_gbs"] = {str(t): round(v, 2) for t, v in after.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "info": info,
                    "rows": rows,
                    "i2s_rows": i2s_rows,
                    "format_rows": format_rows,
                    "order_rows": order_rows,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
