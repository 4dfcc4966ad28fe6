"""Running a runtime in a child process with a time limit, so its crash, hang or wrong answer never takes the
checker down: ``run_runtime(name, model, ids, incremental=..., threads=..., timeout=...)``.

The parent writes a JSON request into a fresh temporary directory and starts ``python -m
bitnet_ref.crosscheck.child REQUEST``; the child resolves the runtime (runtimes.py), calls it and saves the logits
as ``logits.npy`` beside the request. The parent waits at most ``timeout`` seconds (then kills the child's whole
process group), and turns every way it can go wrong into a ``RuntimeFailure`` with one line: the runtime is not
installed, it cannot be imported, it raised (its exception's first line), it crashed (the signal, or the exit
status and the last line it printed), it hung, or it returned something other than a (T, V) array of finite
floats. Nothing is written outside the temporary directory, which is removed afterwards.

What this is not: the runtimes themselves (runtimes.py) or the comparison (agreement.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EXIT_RAISED = 3  # the runtime raised: its message is on stderr, one line


class RuntimeFailure(Exception):
    """A runtime that could not give logits; the message is one line."""


def run_runtime(
    name: str, model: str, ids: list[int], *, incremental: bool, threads: int, timeout: float, vocab: int | None = None
) -> tuple[np.ndarray, dict]:
    """(the runtime's logits (T, V) float32 for ``ids``, what it offers: {"incremental": bool, "threads": bool});
    RuntimeFailure (one line) for anything else."""
    with tempfile.TemporaryDirectory(prefix="bitnet_crosscheck_") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(
            json.dumps(
                {
                    "runtime": name,
                    "model": str(model),
                    "ids": [int(t) for t in ids],
                    "incremental": incremental,
                    "threads": threads,
                }
            )
        )
        here = str(Path(__file__).resolve().parents[2])  # the child imports this same bitnet_ref
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)
        p = subprocess.Popen(
            [sys.executable, "-m", "bitnet_ref.crosscheck.child", str(req)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(p)
            raise RuntimeFailure(f"runtime {name} did not answer within {timeout:g} s (hung or too slow)") from None
        if p.returncode != 0:
            raise RuntimeFailure(f"runtime {name} {_how_it_failed(p.returncode, err)}")
        try:
            out = np.load(Path(tmp) / "logits.npy", allow_pickle=False)
            offers = json.loads((Path(tmp) / "offers.json").read_text())
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"runtime {name} wrote no readable logits ({str(e)[:80]})") from None
    return check_logits(name, out, len(ids), vocab), offers


def _kill_group(p: subprocess.Popen) -> None:
    """Kill the child and whatever it started (a runtime's worker threads live in it; its processes in its group)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        p.kill()
    p.communicate()


def _how_it_failed(code: int, stderr: str) -> str:
    lines = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()]
    last = lines[-1].strip()[:200] if lines else "no message"
    if code == EXIT_RAISED:
        return f"failed: {last}"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return f"crashed ({sig}): {last}"
    return f"exited with status {code}: {last}"


def check_logits(name: str, out, n: int, vocab: int | None) -> np.ndarray:
    a = np.asarray(out)
    if a.ndim != 2 or a.shape[0] != n or (vocab is not None and a.shape[1] != vocab):
        want = f"({n}, {vocab if vocab is not None else 'V'})"
        raise RuntimeFailure(f"runtime {name} returned logits of shape {tuple(a.shape)} where {want} was expected")
    if a.dtype.kind not in "fiu":
        raise RuntimeFailure(f"runtime {name} returned {a.dtype} values, not numbers")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise RuntimeFailure(f"runtime {name} returned NaN or inf logits")
    return a


def main(argv: list[str]) -> int:
    """The child: one request, one logits file; a raised exception is one line on stderr and exit 3."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        req = json.loads(Path(argv[0]).read_text())
        from bitnet_ref.crosscheck.runtimes import offers, resolve

        f = resolve(req["runtime"])
        kwargs = {}
        if offers(f, "incremental"):
            kwargs["incremental"] = req["incremental"]
        elif req["incremental"]:
            raise ValueError("the runtime takes no incremental argument")
        if offers(f, "threads"):
            kwargs["threads"] = req["threads"]
        out = f(req["model"], req["ids"], **kwargs)
        if hasattr(out, "detach"):
            out = out.detach().cpu().float().numpy()
        where = Path(argv[0]).parent
        np.save(where / "logits.npy", np.asarray(out), allow_pickle=False)
        (where / "offers.json").write_text(json.dumps({k: offers(f, k) for k in ("incremental", "threads")}))
    except BaseException as e:  # anything a runtime raises is its failure, told in one line
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"{type(e).__name__}: {msg}", file=sys.stderr)
        return EXIT_RAISED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
