"""End-to-end decode speed: packed int8 x 2-bit vs torch fp32 eager vs the fake-quant torch forward.

For each model (a checkpoint given with --checkpoint, or randomly initialised "default" and "wide" presets --
speed does not depend on what the weights learned), the same weights decode the same prompt three ways, in one
run, batch 1, through the KV cache:

- packed:    every BitLinear is a PackedBitLinear (bitnet_ref/packed.py): the C++ ternary kernel;
- fp32:      every BitLinear is a DequantLinear: F.linear with the fp32 weight codes * beta (the quant="none"
             cost of the same model, no fake-quant overhead);
- fakequant: the training-time model (act quant + weight quant recomputed at every call).

Reported per backend: decode tokens/s (median of --repeats runs, prefill excluded), weight bytes read per token
(packed 2-bit linears vs fp32; head, norms and one embedding row included) and the bandwidth that implies. For
the packed path it also shows where the time of one token goes (RMSNorm, Python glue, the C++ calls -- fused
activation quant + kernel + scaling --, everything outside the linear layers), measured with hooks in a separate run so the headline numbers
carry no hook overhead.

Targets (issue 5): packed not slower than fp32 at the default size; at least 3x faster at d_model 2048.
What this is not: a kernel benchmark (tools/bench_kernels.py) or a quality test (tools/decode_probe.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from bitnet_ref import generate as G
from bitnet_ref import kernels
from bitnet_ref import packed as P
from bitnet_ref.checkpoint import CheckpointError, load_checkpoint
from bitnet_ref.model import ModelConfig, Transformer

BACKENDS = ("packed", "fp32", "fakequant")


def random_model(preset: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset(preset)).eval()


def variants(base: Transformer, threads: int) -> dict:
    """{backend: model}, all built from ``base`` (the fake-quant model itself is the third)."""
    return {"packed": P.to_packed(copy.deepcopy(base), threads=threads),
            "fp32": P.to_dequantized(copy.deepcopy(base)),
            "fakequant": base}


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
            handles += [m.register_forward_pre_hook(pre("linear")), m.register_forward_hook(post("linear")),
                        m.norm.register_forward_pre_hook(pre("norm")), m.norm.register_forward_hook(post("norm"))]
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
    return {"us_per_token": us(total), "parts_us": parts,
            "parts_share": {k: v / us(total) for k, v in parts.items()}}


def bench_model(label, base: Transformer, *, new_tokens, repeats, threads, prompt_len=8, profile=True) -> dict:
    cfg = base.cfg
    prompt = [(7 * i + 3) % cfg.vocab_size for i in range(prompt_len)]
    new_tokens = min(new_tokens, cfg.context - prompt_len)
    row = {"model": label, "d_model": cfg.d_model, "n_layers": cfg.n_layers, "ffn_hidden": cfg.ffn_hidden,
           "params": cfg.num_params(), "new_tokens": new_tokens, "repeats": repeats, "backends": {}}
    models = variants(base, threads)
    # the fake-quant forward re-quantizes every weight at every call (~100x slower at d_model 2048): fewer tokens
    tokens = {name: new_tokens if name != "fakequant" else max(4, new_tokens // 8) for name in models}
    rates = {name: [] for name in models}
    for name, model in models.items():
        G.generate(model, [prompt], 2)  # warm-up
    for _ in range(repeats):  # interleaved, so load changes on a shared machine hit every backend alike
        for name, model in models.items():
            rates[name].append(G.generate(model, [prompt], tokens[name]).tok_per_s)
    for name, model in models.items():
        wb = P.weight_bytes_per_token(model)  # fakequant reads the fp32 latent weights
        med = statistics.median(rates[name])
        row["backends"][name] = {"tok_s": med, "tok_s_all": rates[name], "new_tokens": tokens[name],
                                 "weight_bytes_per_token": wb["total"], "weight_gb_s": wb["total"] * med / 1e9}
    if profile:
        row["packed_breakdown"] = breakdown(models["packed"], prompt, new_tokens)
    del models
    b = row["backends"]
    row["packed_over_fp32"] = b["packed"]["tok_s"] / b["fp32"]["tok_s"]
    row["packed_over_fakequant"] = b["packed"]["tok_s"] / b["fakequant"]["tok_s"]
    return row


def format_table(rows, meta) -> str:
    w = max([28] + [len(r["model"]) for r in rows])
    out = [f"decode tokens/s, batch 1, {meta['threads']} thread(s), kernel {meta['kernel']}, torch {meta['torch']}",
           f"{'model':<{w}} {'backend':<11}{'tok/s':>9}{'weight MB/token':>17}{'GB/s':>8}{'vs fp32':>9}"]
    for r in rows:
        for name, b in r["backends"].items():
            ratio = b["tok_s"] / r["backends"]["fp32"]["tok_s"]
            out.append(f"{r['model']:<{w}} {name:<11}{b['tok_s']:>9.1f}{b['weight_bytes_per_token'] / 1e6:>17.3f}"
                       f"{b['weight_gb_s']:>8.2f}{ratio:>8.2f}x")
        if "packed_breakdown" in r:
            bd = r["packed_breakdown"]
            parts = ", ".join(f"{k} {v:.0f} us ({bd['parts_share'][k]:.0%})" for k, v in bd["parts_us"].items())
            out.append(f"  packed, where one token's {bd['us_per_token']:.0f} us go (with hooks): {parts}")
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--vs-llama-cpp" in argv:  # ours and llama.cpp on the same GGUF: its own options (--vs-llama-cpp --help)
        import bench_llama_cpp

        return bench_llama_cpp.main(argv)
    p = argparse.ArgumentParser(description="End-to-end decode tokens/s: packed vs torch fp32 vs fake-quant.")
    p.add_argument("--vs-llama-cpp", action="store_true",
                   help="instead: ours and llama.cpp on the same GGUF (2B-4T and large shapes, 1 and 2 threads, "
                        "tok/s, peak memory, GB/s); tools/bench_llama_cpp.py, see --vs-llama-cpp --help")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a ckpt.pt to benchmark (repeatable); without it, random default and wide presets")
    p.add_argument("--presets", default="default,wide", help="random-init presets to run (default: default,wide)")
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per repeat (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="repeats per backend; the median is reported (default 5)")
    p.add_argument("--threads", type=int, default=1, help="kernel and torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="few tokens and repeats: a smoke run, not a measurement")
    p.add_argument("--no-profile", action="store_true", help="skip the packed time breakdown")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if not kernels.available():
        print(f"error: the C++ extension is not available ({kernels.import_error()}); build it with "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        return 2
    if a.quick:
        a.tokens, a.repeats = min(a.tokens, 16), min(a.repeats, 2)
    torch.set_num_threads(a.threads)
    kernels.set_threads(a.threads)
    models = []
    for path in a.checkpoint:
        models.append((path, lambda path=path: P.build_model(load_checkpoint(path), path)))
    if not a.checkpoint:
        for name in filter(None, a.presets.split(",")):
            if name not in ("tiny", "default", "wide"):
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
        rows.append(bench_model(label, base, new_tokens=a.tokens, repeats=a.repeats, threads=a.threads,
                                profile=not a.no_profile))
        del base
    meta = {"threads": a.threads, "kernel": kernels.backend(), "torch": torch.__version__, "quick": a.quick}
    print(json.dumps({"meta": meta, "rows": rows}) if a.json else format_table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
