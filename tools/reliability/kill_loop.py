"""Crash-safety kill loop: SIGKILL ``python -m bitnet_ref.train`` at random moments, check what it leaves, resume.

Each *episode* trains one small run in a fresh directory. Training is started (``--resume`` once a
checkpoint exists), killed with SIGKILL, and the directory is checked after every kill:

- ``ckpt.pt``, if present, loads with ``load_checkpoint`` and its step never goes backwards;
- nothing but ``ckpt.pt`` and ``metrics.jsonl`` is visible; anything else is a temporary file
  (``.ckpt.pt.*.tmp`` or ``metrics.jsonl.tmp``) that no tool reads as a result;
- every complete line of ``metrics.jsonl`` is a JSON object; only the *last* line may be torn;
- after each ``resume`` record the step records continue from the checkpoint step, one per step.

When the episode's kills are used up the run is resumed to the end, and its records must equal a straight
run's bit for bit (step losses, gradient norms, LR/WD, eval losses and samples) with the same final weights.
A run killed before its first checkpoint has nothing to resume; its directory is removed and started again.

Kill points: half wait a random delay after the child has written its header/resume record (landing in
steps, evals, metrics writes or saves); the other half wait for a checkpoint temp file to appear and kill
then, so kills during a save are certain. ``--slow-save S`` (default 0.2) makes the child sleep S seconds
half-way through writing each checkpoint, widening that window; it patches ``torch.save`` in the child only.

    python tools/reliability/kill_loop.py --kills 200          # the release check (docs/reliability.md)
    python tools/reliability/kill_loop.py --kills 6 --seed 1   # what tests/test_crash.py runs in CI

What this is not: a test of power loss (fsync ordering is trusted, not simulated).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import metrics_log as M

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ARGS = (
    "--preset tiny --steps 12 --batch-size 4 --warmup 2 --eval-at 0,0.5,1 --eval-batches 1 "
    "--probe-prompts 2 --probe-prompt-len 8 --probe-tokens 4 --save-every 2 --threads 1 --device cpu "
    "--log-every 1000"
).split()
VISIBLE = {"ckpt.pt", "metrics.jsonl"}


class KillLoopFailure(AssertionError):
    """An invariant did not hold after a kill."""


def _child(slow_save: float, argv: list[str]) -> int:
    """Run the trainer with checkpoint writes slowed half-way through (the temp file is half written)."""
    import torch

    real_save = torch.save

    def slow(obj, f, *a, **k):
        if not hasattr(f, "write"):
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(slow_save)
        f.write(data[len(data) // 2 :])

    torch.save = slow
    from bitnet_ref.train.loop import main

    return main(argv)


def default_data(tmp: Path) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    f = tmp / "py.txt"
    f.write_bytes(b"".join((stdlib / n).read_bytes() for n in ("os.py", "argparse.py", "textwrap.py")))
    return str(f)


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """(complete records, whether the last line is torn), read strictly: a complete line that is not a JSON
    object, or a last record without its newline, is a failure (a kill may tear only the line being written)."""
    m = M.read(path)
    if m.bad_lines:
        raise KillLoopFailure(f"{path}: complete line {m.bad_lines[0]} is not JSON (or not an object)")
    if m.unterminated:
        raise KillLoopFailure(f"{path}: last record complete but has no newline")
    return m.records, m.torn


def check_dir(d: Path, last_step: int) -> dict:
    """The invariants after a kill; returns what was seen."""
    from bitnet_ref.checkpoint import load_checkpoint

    if not d.exists():
        return {"ckpt_step": None, "tmp": 0, "torn": False}
    names = set(os.listdir(d))
    tmp = {n for n in names - VISIBLE if n.endswith(".tmp")}
    if names - VISIBLE - tmp:
        raise KillLoopFailure(f"{d}: unexpected files {sorted(names - VISIBLE - tmp)}")
    if any(not (n.startswith(".ckpt.pt.") or n == "metrics.jsonl.tmp") for n in tmp):
        raise KillLoopFailure(f"{d}: unexpected temp files {sorted(tmp)}")
    step = None
    if (d / "ckpt.pt").exists():
        step = load_checkpoint(d / "ckpt.pt")["step"]  # raises CheckpointError if the kill damaged it
        if step < last_step:
            raise KillLoopFailure(f"{d}: checkpoint went back from step {last_step} to {step}")
    recs, torn = read_metrics(d / "metrics.jsonl")
    if recs and recs[0].get("kind") != "header":
        raise KillLoopFailure(f"{d}: metrics.jsonl does not start with the header")
    if [r["kind"] for r in recs].count("header") > 1:
        raise KillLoopFailure(f"{d}: metrics.jsonl has more than one header")
    expect = 1
    for r in recs:
        if r["kind"] == "resume":
            expect = r["step"] + 1
        elif r["kind"] == "step":
            if r["step"] != expect:
                raise KillLoopFailure(f"{d}: step record {r['step']} where {expect} was due")
            expect += 1
    return {"ckpt_step": step, "tmp": len(tmp), "torn": torn}


def _starts(d: Path) -> int:
    recs, _ = read_metrics(d / "metrics.jsonl") if d.exists() else ([], False)
    return sum(r["kind"] in ("header", "resume") for r in recs)


def _launch(cmd, env):
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_episode(d: Path, data: str, kills: int, rng: random.Random, slow_save: float, stats: dict, log) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(slow_save),
        "--",
        *TRAIN_ARGS,
        "--data",
        data,
        "--out",
        str(d),
    ]
    last_step = 0
    for i in range(kills):
        if d.exists() and not (d / "ckpt.pt").exists():
            shutil.rmtree(d)  # killed before the first checkpoint: nothing to resume (documented behaviour)
            stats["restarts_from_scratch"] += 1
        resume = (d / "ckpt.pt").exists()
        n0 = _starts(d)
        stale = set(os.listdir(d)) if d.exists() else set()  # temp files an earlier kill left
        p = _launch(base + (["--resume"] if resume else []), env)
        in_save = i % 2 == 1
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:  # wait until it is past start-up
            if _starts(d) > n0:
                break
            time.sleep(0.01)
        if in_save:  # wait for the next checkpoint's temp file, then kill inside the save
            while p.poll() is None and time.monotonic() < deadline:
                if d.exists() and any(n.startswith(".ckpt.pt.") for n in set(os.listdir(d)) - stale):
                    break
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.0, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            stats["kills"] += 1
        else:
            stats["finished_before_kill"] += 1
            if p.returncode != 0:
                raise KillLoopFailure(f"training exited {p.returncode}: {p.stderr.read().decode()[-500:]}")
        p.wait()
        p.stderr.close()
        seen = check_dir(d, last_step)
        stats["tmp_left"] += bool(seen["tmp"])
        stats["torn_last_line"] += seen["torn"]
        last_step = seen["ckpt_step"] or last_step
        log(
            f"kill {i + 1}/{kills}: {'in save' if in_save else 'random'}, ckpt step {seen['ckpt_step']}, "
            f"temp file left {bool(seen['tmp'])}, torn last line {seen['torn']}"
        )
        if seen["ckpt_step"] == 12:
            break  # the run completed before the kill landed
    # finish the run
    if d.exists() and not (d / "ckpt.pt").exists():
        shutil.rmtree(d)
    resume = (d / "ckpt.pt").exists() and last_step < 12
    if not (d / "ckpt.pt").exists() or resume:
        r = subprocess.run(
            base + (["--resume"] if resume else []), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        if r.returncode != 0:
            raise KillLoopFailure(f"final {'resume' if resume else 'run'} exited {r.returncode}: {r.stderr[-500:]}")


def compare(a: Path, b: Path) -> None:
    """Records and final weights of run ``b`` (killed and resumed) equal the straight run ``a``, bit for bit."""
    import torch

    from bitnet_ref.checkpoint import load_checkpoint

    ra, ta = read_metrics(a / "metrics.jsonl")
    rb, tb = read_metrics(b / "metrics.jsonl")
    if ta or tb:
        raise KillLoopFailure("a finished run has a torn last line")

    def key(recs):
        st = [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["wd"]) for r in recs if r["kind"] == "step"]
        ev = [(r["step"], r["val_loss"], r["samples"]) for r in recs if r["kind"] == "eval"]
        return st, ev

    if key(ra) != key(rb):
        raise KillLoopFailure(f"records differ from the straight run:\n{key(ra)}\n{key(rb)}")
    if rb[-1]["kind"] != "end" or [r["kind"] for r in rb].count("header") != 1:
        raise KillLoopFailure("the resumed run has no end record or not exactly one header")
    ma, mb = load_checkpoint(a / "ckpt.pt")["model"], load_checkpoint(b / "ckpt.pt")["model"]
    if ma.keys() != mb.keys() or not all(torch.equal(ma[k], mb[k]) for k in ma):
        raise KillLoopFailure("final weights differ from the straight run")
    left = [n for n in os.listdir(b) if n not in VISIBLE]
    if left:
        raise KillLoopFailure(f"temp files left after a completed run: {left}")


def kill_loop(work: Path, kills: int, seed: int, slow_save: float = 0.2, data: str | None = None, log=print) -> dict:
    from bitnet_ref.train.loop import main

    work.mkdir(parents=True, exist_ok=True)
    data = data or default_data(work)
    ref = work / "straight"
    if main([*TRAIN_ARGS, "--data", data, "--out", str(ref)]) != 0:
        raise KillLoopFailure("the straight reference run failed")
    rng = random.Random(seed)
    stats = {
        "kills": 0,
        "finished_before_kill": 0,
        "tmp_left": 0,
        "torn_last_line": 0,
        "restarts_from_scratch": 0,
        "episodes": 0,
    }
    while stats["kills"] + stats["finished_before_kill"] < kills:
        d = work / f"episode{stats['episodes']}"
        budget = kills - stats["kills"] - stats["finished_before_kill"]
        run_episode(d, data, budget, rng, slow_save, stats, log)
        compare(ref, d)
        stats["episodes"] += 1
        shutil.rmtree(d)
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--kills",
        type=int,
        default=int(os.environ.get("BITNET_KILL_POINTS", 200)),
        help="kill points to try (default: $BITNET_KILL_POINTS or 200)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for the random delays (default: random, printed)")
    p.add_argument("--slow-save", type=float, default=0.2, help="seconds the child sleeps half-way through each save")
    p.add_argument("--work", help="working directory (default: a temporary one, removed after)")
    p.add_argument("--child", type=float, metavar="SLOW_SAVE", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(args.child, args.rest[1:] if args.rest[:1] == ["--"] else args.rest)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"kill loop: {args.kills} kill points, seed {seed}, slow save {args.slow_save}s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        try:
            stats = kill_loop(work, args.kills, seed, args.slow_save, log=lambda m: print(m, flush=True))
        except KillLoopFailure as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
    print(f"ok: {json.dumps(stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
