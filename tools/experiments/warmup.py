"""From full precision to 1.58 bits at this machine's scale: abrupt quantization, the warmup shapes, from scratch.

    python tools/experiments/warmup.py --out runs/exp-warmup           # full mode: ~25 min of CPU, 2 arms at once
    python tools/experiments/warmup.py --quick --out runs/exp-warmup-q  # tiny preset, short runs: a minute or two

Arms (same seed, data order and recipe schedule everywhere; one torch thread each, ``--jobs`` at a time):
  fp            the full-precision source: the default recipe with --quant none, F steps
  scratch       ternary from a random init for F + C steps (the same total steps as fp + a continuation)
  abrupt        from fp's checkpoint, ternary at full strength from the first step (--quant-warmup 0), C steps
  SHAPE-N       from fp's checkpoint, --quant-warmup N --quant-warmup-shape SHAPE, for linear, exponential and
                sigmoid at a short and a long N, C steps
  extra-norm-N  linear-N with --layout per-linear-norm: the "extra RMSNorm before each linear" variant

Every continuation (and scratch) is trained in four segments (--stop-at, then --resume: bit-identical to one
straight run on the CPU with one thread) and the decode probe (packed ternary decode of the checkpoint) runs
after each; the doctor judges every arm against fp as its full-precision baseline. Output in OUT: ``arms/<arm>/``
(metrics.jsonl, ckpt.pt, train.log, probe-<step>.json), ``report.md`` and ``plots/`` (matplotlib). An arm whose
directory already holds a finished run of the same command is reused (``--fresh`` reruns everything).
The report's writing is in warmup_report.py beside this file. What this is not: a benchmark; the numbers are for
this corpus (the Python standard library's source, bytes) and these sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODES = {
    # model, F (fp steps), C (continuation steps), the two warmup lengths, evals every E steps, batch
    "full": dict(
        model=["--d-model", "128", "--n-layers", "4", "--n-heads", "4", "--ffn-hidden", "384", "--context", "128"],
        fp_steps=500,
        cont_steps=300,
        short=30,
        long=150,
        every=25,
        batch=16,
        eval_batches=4,
    ),
    "quick": dict(
        model=["--preset", "tiny"], fp_steps=60, cont_steps=40, short=4, long=20, every=10, batch=8, eval_batches=2
    ),
}
SHAPES = ("linear", "exponential", "sigmoid")
SEGMENTS = 4


def arms(m: dict) -> dict:
    """{arm name: (trainer flags, steps, the arm it starts from or None)}."""
    common = [
        *m["model"],
        "--batch-size",
        str(m["batch"]),
        "--eval-every",
        str(m["every"]),
        "--eval-batches",
        str(m["eval_batches"]),
        "--probe-prompts",
        "4",
        "--probe-tokens",
        "32",
        "--seed",
        "1337",
        "--threads",
        "1",
        "--log-every",
        "25",
    ]
    F, C = m["fp_steps"], m["cont_steps"]

    def cont(*extra):
        return [*common, "--steps", str(C), "--warmup", str(max(1, C // 10)), *extra]

    out = {
        "fp": ([*common, "--quant", "none", "--steps", str(F), "--warmup", str(max(1, F // 10))], F, None),
        "scratch": ([*common, "--steps", str(F + C), "--warmup", str(max(1, (F + C) // 10))], F + C, None),
        "abrupt": (cont(), C, "fp"),
    }
    for shape in SHAPES:
        for n in (m["short"], m["long"]):
            out[f"{shape}-{n}"] = (cont("--quant-warmup", str(n), "--quant-warmup-shape", shape), C, "fp")
    out[f"extra-norm-{m['long']}"] = (cont("--quant-warmup", str(m["long"]), "--layout", "per-linear-norm"), C, "fp")
    return out


# ---------------------------------------------------------------------------- one arm, in a worker process


def _timing(d: Path) -> dict:
    try:
        return json.loads((d / "timing.json").read_text())
    except (OSError, ValueError):
        return {"seconds": None, "cpu_seconds": None}


def _finished(d: Path, cmd: list) -> bool:
    from bitnet_ref import metrics_log as M

    try:
        recs = M.read(d / M.FILE_NAME).records
        return json.loads((d / "cmd.json").read_text()) == cmd and bool(recs) and recs[-1].get("kind") == M.END
    except (OSError, ValueError):
        return False


def _probe(d: Path, step: int) -> dict:
    """The decode probe on the arm's checkpoint now; kept as probe-<step>.json (decode_probe.json: the last)."""
    from bitnet_ref.decode import probe

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = probe.main([str(d / "ckpt.pt"), "--json", "--threads", "1"])
    report = json.loads(buf.getvalue()) if buf.getvalue().strip() else {"error": f"probe exit {rc}"}
    (d / f"probe-{step}.json").write_text(json.dumps(report))
    return report


def run_arm(name: str, args: list, steps: int, out: str, fresh: bool) -> dict:
    """Train one arm in segments with the trainer's CLI entry point, probing after each; stdout to train.log."""
    import torch

    from bitnet_ref.train import loop as train

    torch.set_num_threads(1)
    d = Path(out) / "arms" / name
    cmd = args + ["--out", str(d)]
    if not fresh and _finished(d, cmd):
        return {"rc": 0, **_timing(d), "reused": True}
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    t0, c0, rc = time.time(), time.process_time(), 0
    stops = sorted({max(1, round(steps * (i + 1) / SEGMENTS)) for i in range(SEGMENTS)})
    with open(d / "train.log", "w") as log:
        for i, stop in enumerate(stops):
            again = ["--out", str(d), "--resume", "--threads", "1", "--log-every", "25"]
            argv = cmd + ["--stop-at", str(stop)] if i == 0 else again + ["--stop-at", str(stop)]
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    rc = train.main(argv)
                except Exception as e:  # an internal bug in one arm must not take the others down
                    print(f"internal error: {type(e).__name__}: {e}")
                    rc = 1
                if rc == 0 and "--quant" not in cmd:
                    _probe(d, stop)
            if rc != 0:
                break
    timing = {"seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
    (d / "timing.json").write_text(json.dumps(timing))
    (d / "cmd.json").write_text(json.dumps(cmd))
    return {"rc": rc, **timing, "reused": False}


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Continue a full-precision run as ternary: abrupt, each warmup shape at two lengths, "
        "the extra-norm variant, and ternary from scratch; write OUT/report.md and plots."
    )
    ap.add_argument("--out", required=True, help="output directory (arms/, plots/, report.md)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, short runs (a minute or two)")
    ap.add_argument("--jobs", type=int, default=2, help="arms trained at once, one thread each (default 2)")
    ap.add_argument(
        "--fresh", action="store_true", help="rerun arms even when a finished run of the same command exists"
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        sys.exit("error: --jobs must be at least 1")
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    table = arms(mode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, results = time.time(), {}
    print(f"{len(table)} arms, {args.jobs} at a time, into {out} ({mode_name} mode)", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:

        def submit(name):
            flags, steps, parent = table[name]
            if parent is not None:
                flags = [*flags, "--init-from", str(out / "arms" / parent / "ckpt.pt")]
            return pool.submit(run_arm, name, flags, steps, str(out), args.fresh)

        first = {n: submit(n) for n in ("fp", "scratch")}  # the continuations need fp's checkpoint
        results["fp"] = first["fp"].result()
        later = {n: submit(n) for n in table if table[n][2] is not None} if results["fp"]["rc"] == 0 else {}
        for name, fut in [("scratch", first["scratch"]), *later.items()]:
            results[name] = fut.result()
    for name, r in results.items():
        took = f"{r['seconds']:.0f}s wall, {r['cpu_seconds']:.0f}s CPU" if r["seconds"] is not None else "?"
        took += " (reused)" if r["reused"] else ""
        print(f"  {name:18s} exit {r['rc']} ({took})", flush=True)
    from tools.experiments.warmup_report import write_report

    path = write_report(out, mode_name, mode, table, results, time.time() - t0)
    failed = [n for n, r in results.items() if r["rc"] != 0]
    print(f"report: {path}" + (f"; failed arms: {', '.join(failed)}" if failed else ""))
    return 1 if failed or len(results) != len(table) else 0


if __name__ == "__main__":
    sys.exit(main())
