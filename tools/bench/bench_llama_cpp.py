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


def memory() -> dict:
    """Peak (VmHWM) and current (VmRSS) resident memory of this process, in MB; called with the model loaded."""
    return {"peak_rss_mb": resident_mb("VmHWM"), "rss_mb": resident_mb("VmRSS")}


def child(args) -> int:
    prompt = json.loads(args.prompt)
    if args.child == "ours":
        r = ours(args.gguf, args.threads, prompt, args.tokens, args.repeats, args.ours)
    else:
        r = llama_cpp_side(args.gguf, args.threads, prompt, args.tokens, args.repeats)
    print(json.dumps(r))
    return 0


# ---------------------------------------------------------------------------------------------- the run


def run_child(side, path, threads, prompt, tokens, repeats, how="fused") -> dict:
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
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"error: the {side} child failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
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


def missing_parts() -> str | None:
    """What our side of a GGUF benchmark lacks (the C++ extension, the gguf package), or None."""
    if not kernels.available():
        return f"the C++ extension is not available ({kernels.import_error()})"
    try:
        GF.gguf_module()
    except GF.FormatError as e:
        return str(e)
    return None


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
        print(
            'error: llama-cpp-python is not installed; CMAKE_ARGS="-DGGML_NATIVE=ON" pip install -e ".[llama]"',
            file=sys.stderr,
        )
        return 2
    problem = missing_parts()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_llama_cpp_"))
    work.mkdir(parents=True, exist_ok=True)
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
