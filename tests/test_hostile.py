"""Hostile inputs the other test files do not already cover (the full table is in docs/reliability.md):
bad --data and bad --resume checkpoints leave nothing behind, decode_probe writes no report for a bad file,
random shapes/dtypes/strides at the kernel bindings never crash the process, CUDA flags without a GPU,
fp32 master weights and scales under bf16 autocast, no non-finite checkpoint is ever written, and every kind of
bad trainer log (trainer_state.json, TensorBoard event files, W&B exports) is one line from doctor --log.

Unreadable files: the tests run as root, where chmod 000 does not stop reads, so "unreadable" is made with a
FIFO (no writer: opening it would block, so it must never be opened), a dangling symlink and a directory
named like a file.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bitnet_ref import quant as Q
from bitnet_ref.checkpoint import FORMAT, VERSION, load_checkpoint
from bitnet_ref.doctor.command import main as doctor_main
from bitnet_ref.model import PRESETS, ModelConfig, Transformer
from bitnet_ref.train import loop as T
from bitnet_ref.train.faults import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--preset tiny --steps 4 --batch-size 4 --warmup 1 --eval-at end --eval-batches 1 "
    "--probe-prompts 1 --probe-prompt-len 8 --probe-tokens 4 --threads 1 --device cpu"
).split()


@contextmanager
def no_hang(seconds=30):
    """Turn a blocking open (e.g. of a FIFO) into a test failure instead of a hung suite."""

    def boom(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line_exit_2(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def rand_bytes(n, seed=0):
    return bytes(torch.randint(256, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).tolist())


# ---------------------------------------------------------------------------------------------- train --data


def _bad_data(tmp_path, kind) -> Path:
    p = tmp_path / "data"
    if kind == "empty file":
        p.write_bytes(b"")
    elif kind == "random bytes":
        p.write_bytes(rand_bytes(4096))
    elif kind == "truncated utf-8":
        p.write_bytes("print('héllo')\n".encode() * 50 + "é".encode()[:1])
    elif kind == "dir: binary files and a FIFO":
        p.mkdir()
        (p / "a.bin.txt").write_bytes(rand_bytes(1000))
        (p / "b.dat").write_bytes(b"\x00" * 100)
        os.mkfifo(p / "pipe.txt")  # never opened: non-regular files in a directory are ignored
    elif kind == "dir named like a file, binary inside":
        p = tmp_path / "corpus.txt"
        p.mkdir()
        (p / "x").write_bytes(rand_bytes(500, 1))
    elif kind == "dir: text and a dangling symlink":
        p.mkdir()
        (p / "ok.txt").write_text("fine text\n" * 200)
        os.symlink(tmp_path / "gone", p / "gone.txt")
    elif kind == "dangling symlink":
        os.symlink(tmp_path / "gone", p)
    return p


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("empty file", "empty"),
        ("random bytes", "not a UTF-8 text file"),
        ("truncated utf-8", "not a UTF-8 text file"),
        ("dir: binary files and a FIFO", "2 binary files skipped"),
        ("dir named like a file, binary inside", "1 binary files skipped"),
        ("dir: text and a dangling symlink", "cannot read"),
        ("dangling symlink", "no such file"),
    ],
)
def test_train_bad_data_is_one_line_and_leaves_no_run_dir(tmp_path, capsys, kind, needle):
    data, out = _bad_data(tmp_path, kind), tmp_path / "out"
    with no_hang():
        rc = T.main(TINY + ["--data", str(data), "--out", str(out)])
    one_line_exit_2(capsys, rc, needle)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- train --resume


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_ckpt(path: Path, kind: str, tmp_path: Path) -> None:
    good = {
        "format": FORMAT,
        "version": VERSION,
        "config": {**PRESETS["tiny"], "vocab_size": 256},
        "model": {"w": torch.zeros(3)},
        "step": 2,
    }
    if kind == "missing":
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "random bytes":
        path.write_bytes(rand_bytes(5000, 2))
    elif kind == "another program's":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
    elif kind == "huge config":
        torch.save({**good, "config": {**good["config"], "d_model": 1 << 40, "n_layers": 10**6}}, path)
    elif kind == "code-running pickle":
        _Evil.marker = str(tmp_path / "PWNED")
        torch.save({"format": FORMAT, "version": VERSION, "x": _Evil()}, path)
    elif kind == "legacy pickle":
        _Evil.marker = str(tmp_path / "PWNED")
        path.write_bytes(pickle.dumps(_Evil(), protocol=2))


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "no such checkpoint"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("random bytes", "ckpt.pt"),
        ("another program's", "not a bitnet_ref checkpoint"),
        ("huge config", "unusable model config"),
        ("code-running pickle", "run code"),
        ("legacy pickle", "ckpt.pt"),
    ],
)
def test_resume_from_a_bad_checkpoint_changes_nothing(tmp_path, capsys, kind, needle):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "header"}\n{"kind": "step", "step": 1, "lo')
    _bad_ckpt(out / "ckpt.pt", kind, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one_line_exit_2(capsys, T.main(["--resume", "--out", str(out)]), needle)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not even the torn line is repaired
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran


# ---------------------------------------------------------------------------------------------- decode_probe, doctor


@pytest.mark.parametrize(
    "kind", ["empty", "truncated", "random bytes", "another program's", "huge config", "code-running pickle"]
)
def test_decode_probe_on_a_bad_file_writes_no_report(tmp_path, capsys, kind):
    from bitnet_ref.decode.probe import REPORT_NAME, main

    _bad_ckpt(tmp_path / "ckpt.pt", kind, tmp_path)
    one_line_exit_2(capsys, main([str(tmp_path / "ckpt.pt")]))  # without --no-save
    assert not (tmp_path / REPORT_NAME).exists() and not list(tmp_path.glob(".*.tmp"))
    assert not (tmp_path / "PWNED").exists()


def test_doctor_on_random_bytes_metrics(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_bytes(rand_bytes(3000, 3))
    one_line_exit_2(capsys, doctor_main([str(tmp_path)]), "no training records")


# ---------------------------------------------------------------------------------------------- kernel bindings


@pytest.mark.slow
def test_random_shapes_dtypes_strides_never_crash_the_process():
    """Hypothesis in a child process, so a segfault or abort is a failed test, not a dead test run."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_fuzz_bindings.py"), "1500"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0 and "fuzz ok" in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])


# ---------------------------------------------------------------------------------------------- CUDA without a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, corpus_file):
    out = tmp_path / "out"
    rc = T.main(TINY + ["--data", corpus_file, "--out", str(out), "--device", "cuda"])
    one_line_exit_2(capsys, rc, "no CUDA device is available")
    assert not out.exists()


def test_bf16_autocast_keeps_fp32_master_weights_and_quantizer_scales(monkeypatch):
    """The CUDA recipe on CPU: inputs to the quantizers are bf16 under autocast, the scales are still fp32."""
    seen = []
    real_act, real_w = Q.act_quant, Q.weight_quant

    def act(x):
        q, gamma = real_act(x)
        seen.append(("act", x.dtype, gamma.dtype, q.dtype))
        return q, gamma

    def wq(w):
        codes, beta = real_w(w)
        seen.append(("weight", w.dtype, beta.dtype, codes.dtype))
        return codes, beta

    monkeypatch.setattr(Q, "act_quant", act)
    monkeypatch.setattr(Q, "weight_quant", wq)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_dict({**PRESETS["tiny"], "vocab_size": 256}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    opt.step()
    assert {k for k, *_ in seen} == {"act", "weight"}
    assert any(k == "act" and xd == torch.bfloat16 for k, xd, *_ in seen)  # autocast really reached BitLinear
    assert all(sd == torch.float32 for _, _, sd, _ in seen)  # gamma and beta: fp32 whatever the input
    assert all(cd == torch.int8 for *_, cd in seen)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- non-finite


def test_skipped_nonfinite_gradient_on_a_save_step_saves_finite_state(tmp_path, corpus_file, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, "nan-grad@2,inf-grad@4")
    out = tmp_path / "out"
    assert T.main(TINY + ["--data", corpus_file, "--out", str(out), "--save-every", "2", "--skip-nonfinite"]) == 0
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck["step"] == 4 and ck["skipped_nonfinite"] == 2
    tensors = list(ck["model"].values())
    tensors += [v for st in ck["optimizer"]["state"].values() for v in st.values() if isinstance(v, torch.Tensor)]
    assert len(tensors) > len(ck["model"])  # the AdamW moments are there too
    assert all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_trainer_never_writes_a_checkpoint_with_nonfinite_weights(tmp_path, corpus_file, monkeypatch, capsys):
    """Weights that go NaN behind a finite loss and gradient (here: a poisoned optimizer step) are refused at save
    time; the previous checkpoint stays, intact and finite."""
    real_step, calls = torch.optim.AdamW.step, []

    def poisoned(self, *a, **k):
        r = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return r

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "out"
    rc = T.main(TINY + ["--data", corpus_file, "--out", str(out), "--save-every", "1"])
    one_line_exit_2(capsys, rc, "refusing to save", "NaN or inf")
    assert load_checkpoint(out / "ckpt.pt")["step"] == 1  # raises if it held NaN
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "metrics.jsonl"]  # no temp file left


# ------------------------------------------------------------------------------------- trainer logs (doctor --log)


def write_state(d: Path, history) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": history}))
    return d / "trainer_state.json"


def bad_trainer_logs(tmp_path):
    """{what: path} for every kind of bad trainer log (trainer_state.json, TensorBoard events, W&B CSV)."""
    from torch.utils.tensorboard import SummaryWriter

    out = {}
    out["no log_history"] = write_state(tmp_path / "a", [])
    out["no log_history"].write_text(json.dumps({"global_step": 3}))
    out["state not JSON"] = write_state(tmp_path / "b", [])
    out["state not JSON"].write_text("{not json")
    out["state steps go back"] = write_state(tmp_path / "c", [{"loss": 1.0, "step": 5}, {"loss": 1.0, "step": 2}])
    out["state without a loss"] = write_state(tmp_path / "d", [{"train_runtime": 3.0, "step": 5}])
    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(50):
        w.add_scalar("train/loss", 1.0, s)
    w.close()
    [good] = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    data = good.read_bytes()
    out["truncated events"] = tmp_path / "cut" / good.name
    out["truncated events"].parent.mkdir()
    out["truncated events"].write_bytes(data[: len(data) // 2 + 5])
    out["events from another tool"] = tmp_path / "other" / "events.out.tfevents.123.host"
    out["events from another tool"].parent.mkdir()
    out["events from another tool"].write_bytes(os.urandom(2000))
    out["events damaged"] = tmp_path / "dmg" / good.name
    out["events damaged"].parent.mkdir()
    out["events damaged"].write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    out["no event files"] = tmp_path / "empty"
    out["no event files"].mkdir()
    out["two runs"] = tmp_path / "two"
    for r in ("x", "y"):
        SummaryWriter(str(tmp_path / "two" / r)).close()
    out["wandb no usable column"] = tmp_path / "w.csv"
    out["wandb no usable column"].write_text("_step,_runtime,system/gpu\n0,1.0,3\n1,2.0,4\n")
    return out


EXPECT = {
    "no log_history": "no log_history list",
    "state not JSON": "not a JSON file",
    "state steps go back": "goes back from step 5 to step 2",
    "state without a loss": "no step with a loss",
    "truncated events": "truncated",
    "events from another tool": "not a TensorBoard event file",
    "events damaged": "damaged",
    "no event files": "no TensorBoard event files",
    "two runs": "holds the event files of 2 runs",
    "wandb no usable column": "a W&B export with no usable column",
}


def test_bad_trainer_logs_are_one_line_exit_2(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[test])")
    files = bad_trainer_logs(tmp_path)
    assert set(files) == set(EXPECT)
    for what, path in files.items():
        rc = doctor_main(["--log", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (what, err)
        assert EXPECT[what] in err and "Traceback" not in err, (what, err)
