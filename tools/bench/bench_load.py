"""How long a real-sized BitNet file takes to become a model that decodes, and the memory it needs.

    python tools/bench/bench_load.py [--preset bitnet-b1.58-2b-4t] [--keep DIR] [--head int8 fp32] [--json FILE]

Writes, once (``--keep`` reuses them), a random model of the preset's shape in the two layouts users download:

- **microsoft's Hugging Face layout** (bitnet-b1.58-2B-4T's): ``config.json`` (BitNetForCausalLM, ReLU^2, tied,
  GQA, ``quantization_config`` autobitlinear/offline), ``model.safetensors`` with every linear as uint8 codes packed
  four rows a byte plus a bf16 ``weight_scale``, and bf16 embedding and norms;
- the **I2_S GGUF of bitnet.cpp** (arch ``bitnet-b1.58``, the layout ``utils/convert-hf-to-gguf-bitnet.py --outtype
  i2_s`` writes): I2_S linears (x86 blocks, float32 scale in the tail), F16 ``token_embd``, F32 norms.

Then, in a fresh process per file and head format, ``decode.loader.load_for_decode(path, head=...)`` (the path the
decode probe and crosscheck take) and one decoded token: seconds to a model (wall and CPU: on a shared machine
the CPU seconds are the steadier figure), seconds for that token, and the process's peak resident memory (VmHWM).
The codes are random (weights -1/0/+1 with probability 1/4, 1/2, 1/4; the speed of loading does not depend on what
they learned). What this is not: a decode speed benchmark (tools/bench/bench_decode.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from bitnet_ref.decode.loader import load_for_decode
from bitnet_ref import generate as G
torch.set_num_threads(1)
t1, c1 = time.perf_counter(), time.process_time()
m = load_for_decode(sys.argv[1], head=sys.argv[2]).model
t2, c2 = time.perf_counter(), time.process_time()
G.generate(m, [[1, 2, 3]], 1)
t3 = time.perf_counter()
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "first_token_s": t3 - t2,
                  "peak_rss_mb": int(hwm) / 1024}))
"""


def random_model(cfg, seed: int = 0):
    """(linear specs, float tensors) of random codes at the config's shape, built packed."""
    from bitnet_ref.runtime.act_modes import LinearSpec
    from bitnet_ref.runtime.packed import PackedWeight
    from bitnet_ref.runtime.random_packed import random_packed_bytes

    rng = np.random.default_rng(seed)
    d, kv, h = cfg.d_model, cfg.kv_dim, cfg.ffn_hidden
    shapes = {
        "attn.q_proj": (d, d),
        "attn.k_proj": (kv, d),
        "attn.v_proj": (kv, d),
        "attn.o_proj": (d, d),
        "ffn.gate_proj": (h, d),
        "ffn.up_proj": (h, d),
        "ffn.down_proj": (d, h),
    }
    linears = {}
    for i in range(cfg.n_layers):
        for name, (n, k) in shapes.items():
            beta = torch.tensor(np.float32(1.0 / math.sqrt(k / 2)))
            linears[f"blocks.{i}.{name}"] = LinearSpec(PackedWeight(random_packed_bytes(rng, n, k), beta, n, k))
    g = torch.Generator().manual_seed(seed)
    floats = {"tok_emb.weight": (torch.randn(cfg.vocab_size, d, generator=g) * 0.02).to(torch.bfloat16)}
    for i in range(cfg.n_layers):
        for norm, width in (("attn_norm", d), ("attn.sub_norm", d), ("ffn_norm", d), ("ffn.sub_norm", h)):
            floats[f"blocks.{i}.{norm}.weight"] = torch.ones(width, dtype=torch.bfloat16)
    floats["norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
    return linears, floats


def write_hf(out: Path, cfg, linears, floats) -> None:
    """microsoft's 2B-4T layout (see the module docstring)."""
    from safetensors.torch import save_file

    from bitnet_ref.formats.hf import hf_config, name_pairs, pack_rows
    from bitnet_ref.runtime import kernels

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for ours, hf, _ in name_pairs(cfg):
        key = ours[: -len(".weight")]
        if key in linears:
            w = linears[key].weight
            tensors[hf] = pack_rows(torch.from_numpy(kernels.unpack_ternary(w.packed, w.n, w.k)))
            tensors[hf + "_scale"] = w.beta.reshape(1).to(torch.bfloat16)
        elif ours in floats:
            tensors[hf] = floats[ours].contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    c = hf_config(cfg, "packed")
    c["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(c, indent=2))


def write_i2s(out: Path, cfg, linears, floats) -> None:
    from bitnet_ref.formats.gguf_write import write_bitnet_gguf

    write_bitnet_gguf(
        out,
        cfg,
        linears,
        {k: v.float() for k, v in floats.items()},
        arch="bitnet-b1.58",
        linear_type="I2_S",
        emb_type="F16",
        force=True,
    )


def measure(path: Path, head: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), head],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=1800,
    )
    if p.returncode != 0:
        raise SystemExit(f"error: loading {path} failed: {(p.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from bitnet_ref.model import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="bitnet-b1.58-2b-4t")
    ap.add_argument("--keep", default="bench_load_files", help="where the files are written (reused if present)")
    ap.add_argument("--head", nargs="+", default=["int8", "fp32"], choices=("int8", "fp32"))
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    cfg = ModelConfig.preset(args.preset)
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    hf, gguf = keep / f"{args.preset}-hf", keep / f"{args.preset}-i2_s.gguf"
    if not (hf / "model.safetensors").exists() or not gguf.exists():
        t0 = time.perf_counter()
        linears, floats = random_model(cfg)
        if not (hf / "model.safetensors").exists():
            write_hf(hf, cfg, linears, floats)
        if not gguf.exists():
            write_i2s(gguf, cfg, linears, floats)
        print(f"wrote {hf} and {gguf} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    for path, layout in ((hf, "microsoft HF (uint8 + weight_scale)"), (gguf, "bitnet.cpp I2_S GGUF")):
        size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
        for head in args.head:
            r = measure(path, head)
            rows.append({"layout": layout, "head": head, "file_mb": size / 1e6, **r})
            print(
                f"{layout:38s} head {head:4s}  load {r['load_s']:6.2f} s ({r['load_cpu_s']:5.2f} s CPU)  "
                f"first token {r['first_token_s']:5.2f} s  "
                f"peak RSS {r['peak_rss_mb']:7.0f} MB  (file {size / 1e6:.0f} MB; imports {r['import_s']:.1f} s)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
