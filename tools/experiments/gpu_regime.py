"""The debugging report's regime on a GPU: vocab 50257, a ~100 M-parameter model, thousands of steps, CUDA with bf16
autocast.

    python tools/experiments/gpu_regime.py --out runs/gpu-regime            # on a machine with CUDA
    python tools/experiments/gpu_regime.py --out runs/x --dry-run           # the same pipeline, tiny, on the CPU

Runs three arms of ``tools/experiments/experiments.py`` at once on the one GPU: ``ref`` (the reference two-stage
recipe), ``t1-stage1`` (the debugging report's stage-1-only schedule) and ``fp`` (the full-precision baseline the
doctor compares with), with ``--tokenizer bpe:50257`` trained on the default corpus (this Python's stdlib source).
The trainer's ``--autocast auto`` puts CUDA runs under bf16 autocast with fp32 master weights; nothing here
changes that. Writes ``OUT/arms/<arm>/metrics.jsonl`` (+ ckpt.pt, train.log), ``OUT/report.md`` and
``OUT/summary.json`` (per arm: its log's numbers; the GPU's name, the machine, seconds, exit status).

The model (``GPU_SIZE``): d_model 576, 12 layers, 9 heads, FFN 1536, context 256, untied embeddings:
47.8 M BitLinear weights + 57.9 M in the embedding, the head and the norms = 105.7 M parameters (the debugging
report's own model was 256 wide with the same GPT-2-sized vocabulary; the 100 M size is the issue's). ``--dry-run``
swaps in a tiny model, ``bpe:300`` and 8 steps on the CPU, to test the pipeline without a GPU; its numbers mean
nothing.

What this is not: a benchmark, or a run of every arm (``tools/experiments/experiments.py --tokenizer bpe:50257``
does those at CPU scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import machine
from bitnet_ref import metrics_log as M
from tools.experiments import experiments

GPU_SIZE = dict(
    d_model=576, n_layers=12, n_heads=9, ffn_hidden=1536, context=256, batch=32, steps=3000, tokenizer="bpe:50257"
)
DRY = dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, context=64, batch=4, steps=8, tokenizer="bpe:300")


def argv_for(size: dict, out: Path, data: str | None) -> list[str]:
    """tools/experiments/experiments.py arguments for the three arms at ``size``."""
    args = [
        "--out",
        str(out),
        "--only",
        "t1-stage1",
        "--jobs",
        "3",
        "--tokenizer",
        size["tokenizer"],
        "--steps",
        str(size["steps"]),
        "--batch",
        str(size["batch"]),
    ]
    for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context"):
        args += [f"--{k.replace('_', '-')}", str(size[k])]
    return args + (["--data", data] if data else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="ref, t1-stage1 and fp at the debugging report's vocabulary (50257) and ~100 M "
        "parameters on CUDA; metrics under --out."
    )
    ap.add_argument("--out", required=True, help="output directory (arms/, report.md, summary.json)")
    ap.add_argument("--steps", type=int, help=f"steps per arm (default {GPU_SIZE['steps']})")
    ap.add_argument("--data", help="training text (default: this Python's stdlib source)")
    ap.add_argument("--dry-run", action="store_true", help="a tiny CPU version of the same pipeline (for tests)")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to test the pipeline on the CPU", file=sys.stderr)
        return 2
    size = dict(DRY if args.dry_run else GPU_SIZE)
    if args.steps is not None:
        size["steps"] = args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu"
    t0 = time.time()
    rc = experiments.main(argv_for(size, out, args.data) + (["--no-plots"] if args.dry_run else []))
    summary = {
        "device": device,
        "machine": machine.describe(),
        "size": size,
        "seconds": time.time() - t0,
        "exit": rc,
        "arms": {},
    }
    for arm in ("ref", "fp", "t1-stage1"):
        log = M.read(out / "arms" / arm / M.FILE_NAME)
        if not log.records:
            continue
        head, evals = log.header, log.evals
        end = next(iter(log.of_kind(M.END)), {})
        summary["arms"][arm] = {
            "params": head.get("params"),
            "ln_vocab": head.get("ln_vocab"),
            "unigram_entropy": head.get("unigram_entropy"),
            "wall_s": end.get("wall_s"),
            "tok_s": end.get("tok_s"),
            "evals": [(r["step"], r.get("val_loss"), r.get("unique_tokens")) for r in evals],
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"summary: {out / 'summary.json'} ({device}, {summary['seconds']:.0f}s, exit {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
