"""The debugging report's experiments (docs/debugging.md), reproduced at this machine's scale, with the doctor's
verdict on every arm.

    python tools/experiments/experiments.py --out runs/experiments        # full mode: d_model 256 (most of an hour)
    python tools/experiments/experiments.py --quick --out runs/exp-quick  # tiny preset, a minute or two (the tests')
    python tools/experiments/experiments.py --out runs/exp-bpe50257 --tokenizer bpe:50257 --steps 150 --d-model 64 \
        --n-layers 4 --n-heads 4 --ffn-hidden 192 --context 64 --batch 8    # the report's vocabulary, at CPU scale

``--tokenizer bpe:N|PATH`` trains every arm on BPE tokens (the BPE is trained once, before the arms, and
cached); ``--data`` and the model/batch flags override the mode's. At vocab 50257 the output head and the
embedding hold most of the parameters and most of the FLOPs of any model this machine can train.

Arms (every arm: the same random seed, so the same initial weights and the same batch at every step; Tests 1-5
are the debugging report's):
  ref          the reference recipe: two-stage LR/WD schedule, dense evaluations
  fp           the same with --quant none: the full-precision baseline (the doctor's --baseline for every arm)
  t1-stage1    Test 1: stage 1 only, standard LR (1.5e-3), dense evaluations
  t2-lr3       Test 2: stage 1 only, LR / 3
  t3-end-only  Test 3: the reference recipe, evaluated only at the end
  t4-long      Test 4: stage 1 only, standard LR, trained twice as long, dense evaluations (past the dip)
  t5-fractions Test 5: the reference recipe, evaluated at 0/25/50/75/100% only
  t1-half      stage 1 only, half as long, evaluated at the end (with t1 and t4: does longer ever end worse?)
  abl-NAME     the reference recipe with one ablation (--ablate NAME), for every ablation in model.ABLATIONS

Arms run through ``bitnet_ref.train.loop.main`` (the CLI's entry point) in ``--jobs`` worker processes (default 2,
one torch thread each), so each worker imports torch once.
Output in OUT: ``arms/<arm>/`` (metrics.jsonl, ckpt.pt, train.log), ``report.md`` (setup, the headline
table, the doctor's verdicts, answers to the debugging report's five open questions with the measured numbers, and
what a correct BitNet of this width does), and, if matplotlib is importable, ``plots/<arm>.png`` (loss and
unique tokens against step) and ``plots/overview.png``. Without matplotlib the report says so.
An arm whose directory already holds a finished run of the same command is reused (``--fresh`` reruns all).

What this is not: a benchmark. The numbers are for this corpus (Python stdlib source, bytes) and these sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import metrics_log as M
from bitnet_ref.doctor import verdicts as D
from bitnet_ref.doctor.run import load_run
from bitnet_ref.model import ABLATIONS
from tools.experiments.report import Arm, summarize, write_report

MODES = {  # preset, steps N, batch, evaluations per N steps in dense arms, probe prompts, probe tokens
    "quick": dict(preset="tiny", steps=80, batch=16, evals=8, prompts=2, tokens=24, eval_batches=2),
    "full": dict(preset="default", steps=600, batch=16, evals=12, prompts=4, tokens=48, eval_batches=8),
}


def make_arms(m: dict) -> list[Arm]:
    n, e = m["steps"], max(1, m["steps"] // m["evals"])
    model = [
        a
        for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context")
        if m.get(k)
        for a in (f"--{k.replace('_', '-')}", str(m[k]))
    ]
    data = [a for k in ("data", "tokenizer") if m.get(k) for a in (f"--{k}", str(m[k]))]
    common = [
        "--preset",
        m["preset"],
        *model,
        *data,
        "--batch-size",
        str(m["batch"]),
        "--warmup",
        str(max(1, n // 10)),
        "--eval-batches",
        str(m["eval_batches"]),
        "--probe-prompts",
        str(m["prompts"]),
        "--probe-tokens",
        str(m["tokens"]),
        "--seed",
        "1337",
        "--threads",
        "1",
        "--log-every",
        str(max(1, n // 4)),
    ]
    dense = ["--eval-every", str(e)]

    def arm(name, title, extra, steps=n):
        return Arm(name, title, common + ["--steps", str(steps)] + extra, steps)

    arms = [
        arm("t4-long", "Test 4: stage 1 only, standard LR, 2x longer", ["--stage1-only", *dense], 2 * n),
        arm("ref", "reference recipe (two-stage), dense evals", dense),
        arm("fp", "full-precision baseline (two-stage)", ["--quant", "none", *dense]),
        arm("t1-stage1", "Test 1: stage 1 only, standard LR 1.5e-3", ["--stage1-only", *dense]),
        arm(
            "t2-lr3",
            "Test 2: stage 1 only, LR / 3 (5e-4)",
            ["--stage1-only", "--lr", "5e-4", "--lr2", "3.3e-4", *dense],
        ),
        arm("t3-end-only", "Test 3: reference recipe, eval at the end only", ["--eval-at", "end"]),
        arm("t5-fractions", "Test 5: reference recipe, eval at 0/25/50/75/100%", ["--eval-at", "0,0.25,0.5,0.75,1"]),
        arm(
            "t1-half", "stage 1 only, standard LR, half as long", ["--stage1-only", "--eval-at", "end"], max(1, n // 2)
        ),
    ]
    arms += [arm(f"abl-{a}", f"ablation {a}", ["--ablate", a, *dense]) for a in ABLATIONS]
    return arms


# ---------------------------------------------------------------------------- running


def _finished(d: Path, cmd: list) -> bool:
    try:
        same = json.loads((d / "cmd.json").read_text()) == cmd
        recs = M.read(d / M.FILE_NAME).records
        return same and bool(recs) and recs[-1].get("kind") == M.END
    except (OSError, ValueError):
        return False


def run_arm(name: str, args: list, out: str, fresh: bool) -> dict:
    """Train one arm in this (worker) process with the trainer's own CLI entry point; stdout to train.log."""
    import contextlib

    from bitnet_ref.train import loop as train

    d = Path(out) / "arms" / name
    cmd = args + ["--out", str(d)]
    if not fresh and _finished(d, cmd):
        return {"rc": 0, "seconds": None, "reused": True}
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    t0 = time.time()
    with open(d / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            rc = train.main(cmd)
        except Exception as e:  # an internal bug in one arm must not take the other arms down
            print(f"internal error: {type(e).__name__}: {e}")
            rc = 1
    (d / "cmd.json").write_text(json.dumps(cmd))
    return {"rc": rc, "seconds": time.time() - t0, "reused": False}


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Reproduce the debugging report's Tests 1-5, the FP baseline and every ablation; "
        "write OUT/report.md (and plots with matplotlib)."
    )
    ap.add_argument("--out", required=True, help="output directory (arms/, plots/, report.md)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, short runs: a minute or two")
    ap.add_argument("--jobs", type=int, default=2, help="arms trained at once, one thread each (default 2)")
    ap.add_argument("--steps", type=int, help="override the mode's base step count N")
    ap.add_argument("--preset", help="override the mode's model preset")
    ap.add_argument(
        "--tokenizer",
        metavar="bpe:N|PATH",
        help="train every arm on BPE tokens (the trainer's "
        "--tokenizer); the tokenizer is trained once, before the arms start",
    )
    ap.add_argument("--data", metavar="PATH", help="the trainer's --data (default: the Python stdlib source)")
    for k in ("d-model", "n-layers", "n-heads", "ffn-hidden", "context", "batch"):
        ap.add_argument(f"--{k}", type=int, help=f"override the mode's {k.replace('-', ' ')}")
    ap.add_argument("--only", help="comma-separated arm names to run (ref and fp are always included)")
    ap.add_argument("--fresh", action="store_true", help="rerun arms even if a finished run of the same command exists")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = ap.parse_args(argv)
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.steps is not None:
        if args.steps < 8:
            sys.exit("error: --steps must be at least 8")
        mode["steps"] = args.steps
    if args.preset:
        mode["preset"] = args.preset
    for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context", "batch", "tokenizer", "data"):
        if getattr(args, k) is not None:
            mode[k] = getattr(args, k)
    if args.jobs < 1:
        sys.exit("error: --jobs must be at least 1")
    arms = make_arms(mode)
    if args.only:
        keep = set(args.only.split(",")) | {"ref", "fp"}
        unknown = keep - {a.name for a in arms}
        if unknown:
            sys.exit(
                f"error: unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(a.name for a in arms)}"
            )
        arms = [a for a in arms if a.name in keep]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.tokenizer:  # once here, so the workers find it in the cache instead of all training it at once
        from bitnet_ref.data.corpus import DataError, load_corpus
        from bitnet_ref.data.tokenizer import tokenize_corpus

        try:
            corpus = tokenize_corpus(load_corpus(args.data), args.tokenizer)
        except DataError as e:
            sys.exit(f"error: {e}")
        print(f"tokenizer: {corpus.source} ({time.time() - t0:.0f}s)", flush=True)
    print(
        f"{len(arms)} arms, {args.jobs} at a time, into {out} ({mode_name} mode: {mode['preset']}, N={mode['steps']})",
        flush=True,
    )

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(a, pool.submit(run_arm, a.name, a.args, str(out), args.fresh)) for a in arms]
        for a, fut in futures:
            a.result.update(fut.result())
            r = a.result
            print(
                f"  {a.name:14s} exit {r['rc']} " + ("(reused)" if r["reused"] else f"{r['seconds']:.0f}s"), flush=True
            )
    fp_dir = out / "arms" / "fp"
    base = load_run(fp_dir) if by_ok(arms, "fp") else None
    for a in arms:
        if a.result["rc"] != 0:
            continue
        run = load_run(out / "arms" / a.name)
        uni = D.baselines(run)[1] or float("nan")
        a.result.update(
            run=run,
            summary=summarize(a, run, uni),
            diagnosis=D.diagnose(run, base if a.name != "fp" else None).as_dict(),
        )
    if not by_ok(arms, "ref"):
        print("error: the reference arm failed; see arms/ref/train.log", file=sys.stderr)
        return 1
    path = write_report(arms, out, mode_name, mode, plots=not args.no_plots)
    failed = [a.name for a in arms if a.result["rc"] != 0]
    print(f"report: {path} ({time.time() - t0:.0f}s)" + (f"; failed arms: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def by_ok(arms: list, name: str) -> bool:
    return any(a.name == name and a.result.get("rc") == 0 for a in arms)


if __name__ == "__main__":
    sys.exit(main())
