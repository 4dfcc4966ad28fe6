"""The scripts under tools/: each runs as documented (``python tools/<group>/<name>.py``) from any directory and
imports as a module (``tools.<group>.<name>``); every tools path the repository names exists; and the helpers the
benchmarks share (resident memory, read bandwidth, thread counts, the time-breakdown line) do their job."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.bench import bench_decode, bench_llama_cpp, llama_bench
from tools.bench.memory import read_bandwidth, resident_mb

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "tools").glob("*/*.py") if 'if __name__ == "__main__":' in p.read_text())
# where the repository names its tools; README.md is left out while it is being rewritten
NAMING = ["docs/**/*.md", "tools/**/*.py", "tests/*.py", "bitnet_ref/**/*.py", "cpp/**/*.*", "CMakeLists.txt"]
NAMING += ["pyproject.toml", ".ci/run"]


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_the_groups_hold_their_scripts():
    assert {p.parent.name for p in SCRIPTS} == {"bench", "experiments", "reliability"}
    assert len(SCRIPTS) >= 9 and (ROOT / "tools" / "decode_probe.py").is_file()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_imports_as_a_module(path):
    assert callable(importlib.import_module(module_of(path)).main)


@pytest.mark.slow
def test_every_script_answers_help_from_another_directory(tmp_path):
    """Without PYTHONPATH and from outside the checkout: each script finds `tools` (and, uninstalled, the
    package) from its own location."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {
        p: subprocess.Popen(
            [sys.executable, str(p), "--help"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for p in SCRIPTS
    }
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (p.name, err.decode()[-500:])
        assert out.decode().startswith("usage:"), (p.name, out.decode()[:200])


def test_every_tools_path_named_in_the_repository_exists():
    named = {}
    for pattern in NAMING:
        for f in ROOT.glob(pattern):
            for m in re.finditer(r"\btools/[A-Za-z0-9_/]+\.py\b", f.read_text(errors="replace")):
                named.setdefault(m.group(), str(f.relative_to(ROOT)))
    assert len(named) >= 10
    missing = {p: where for p, where in named.items() if not (ROOT / p).is_file()}
    assert not missing, f"tools paths that do not exist (path: first file naming it): {missing}"


def test_resident_memory_sees_an_allocation():
    before = resident_mb("VmRSS")
    buf = np.ones(80_000_000, dtype=np.uint8)  # written, so resident
    after, peak = resident_mb("VmRSS"), resident_mb("VmHWM")
    del buf
    if sys.platform.startswith("linux"):  # elsewhere only the peak is known
        assert 70 < after - before < 200, (before, after)
    assert peak >= after > 0
    with pytest.raises(ValueError, match="VmHWM or VmRSS"):
        resident_mb("VmPeak")


def test_read_bandwidth_probes_with_the_given_streams():
    pytest.importorskip("bitnet_ref._bench")
    assert read_bandwidth(1, 1 << 20, reps=1, tries=2, streams=1) > 0
    with pytest.raises(ValueError):  # the probe checks what it is handed: streams reach it
        read_bandwidth(1, 1 << 20, reps=1, tries=1, streams=9)


@pytest.mark.parametrize("text, want", [("1,2", [1, 2]), ("4", [4]), (" 1, 3 ,", [1, 3])])
def test_thread_counts(text, want):
    assert bench_llama_cpp.thread_counts(text, "--threads") == want


@pytest.mark.parametrize("text", ["0", "1,-2", "x", "", ","])
def test_bad_thread_counts_are_one_line_errors(text):
    with pytest.raises(ValueError, match=r"^--threads must be positive integers separated by commas, got"):
        bench_llama_cpp.thread_counts(text, "--threads")


def test_bad_thread_flags_exit_2_before_any_work(capsys):
    assert bench_llama_cpp.main(["--threads", "1,x"]) == 2
    assert capsys.readouterr().err == "error: --threads must be positive integers separated by commas, got '1,x'\n"
    from bitnet_ref.runtime import kernels

    if kernels.available():  # otherwise bench_decode stops earlier, at the missing extension
        assert bench_decode.main(["--preset", "bitnet-b1.58-large", "--threads-list", "0"]) == 2
        assert capsys.readouterr().err.startswith("error: --threads-list must be positive integers")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--presets", "bitnet-b1.58-2b-4t,nope"], "unknown preset 'nope'"),
        (["--threads", "0"], "--threads must be positive integers"),
        (["--repeats", "0"], "--repeats must be at least 1"),
    ],
)
def test_llama_bench_refuses_bad_flags_in_one_line(argv, message, capsys):
    assert bench_decode.main(["--llama-bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_llama_bench_runs_the_issue_table_by_default():
    args = argparse.Namespace(presets=None, threads=None)
    assert llama_bench.runs_of(args) == [("bitnet-b1.58-2b-4t", [1]), ("bitnet-b1.58-large", [1, 2])]
    args = argparse.Namespace(presets="smoke,bitnet-b1.58-large", threads="2")
    assert llama_bench.runs_of(args) == [("smoke", [2]), ("bitnet-b1.58-large", [2])]


@pytest.mark.slow
def test_llama_bench_table_end_to_end_on_a_small_shape(capsys):
    """The whole harness on the small shape at one thread (each side in its own process; llama.cpp where
    llama-cpp-python is installed): every column measured, the table printed from the same rows."""
    from bitnet_ref.runtime import kernels

    if not kernels.available():
        pytest.skip("the C++ extension is not built")
    argv = ["--llama-bench", "--presets", "smoke", "--threads", "1", "--repeats", "1", "--json"]
    assert bench_decode.main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    (row,) = got["rows"]
    want = {"ours", "llama.cpp"} if importlib.util.find_spec("llama_cpp") else {"ours"}
    assert set(row["sides"]) == want and row["threads"] == 1 and row["macs"] > 0
    for side in row["sides"].values():
        assert all(side[c]["wall"] > 0 and side[c]["cpu"] > 0 for c in ("pp128", "pp512", "tg128"))
        assert side["weight_bytes"] > 0
    assert set(row["sides"]["ours"]["batched"]) == {"1", "4", "8"}
    table = llama_bench.format_table(got["rows"], got["meta"])
    assert "smoke" in table and ("ours / llama.cpp (cpu)" in table) == ("llama.cpp" in want)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "{d}", "--jobs", "0"], "--jobs must be at least 1"),
        (["build", "{d}"], "name the sources"),
        (["model", "{d}"], "holds no bitnet.cpp build"),
        (["bench", "{d}"], "holds no bitnet.cpp build"),
    ],
)
def test_bitnet_cpp_refuses_in_one_line_before_any_work(argv, message, tmp_path, capsys):
    from tools.bench import bitnet_cpp

    assert bitnet_cpp.main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert bench_decode.main(["--llama-bench", "--bitnet-cpp", str(tmp_path)]) == 2
    assert "holds no bitnet.cpp build" in capsys.readouterr().err
    assert bench_decode.main(["--llama-bench", "--sides", "ours,nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --sides must name some of ours, llama.cpp, bitnet.cpp")


def test_bitnet_cpp_exports_a_commit_without_the_blobs_a_snapshot_lacks(tmp_path):
    """Its sources come from git snapshots that lack a few blobs it does not need: those are skipped, the rest
    written as committed."""
    from tools.bench import bitnet_cpp

    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "keep").mkdir()
    (repo / "keep" / "a.txt").write_text("kept\n")
    (repo / "gone.bin").write_text("a blob the snapshot lacks\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "two files"], check=True)
    blob = subprocess.run([*git, "rev-parse", "HEAD:gone.bin"], capture_output=True, text=True).stdout.strip()
    (repo / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    out = tmp_path / "out"
    assert bitnet_cpp.export_tree(repo / ".git", "HEAD", out) == ["gone.bin"]
    assert (out / "keep" / "a.txt").read_text() == "kept\n" and not (out / "gone.bin").exists()
    assert not (out / ".git").exists()


def test_breakdown_line():
    bd = {"us_per_token": 1500.0, "parts_us": {"norm": 300.0, "kernel": 1200.0}}
    bd["parts_share"] = {"norm": 0.2, "kernel": 0.8}
    assert bench_decode.breakdown_line(bd, "packed", "us") == (
        "  packed, where one token's 1500 us go (with hooks): norm 300 us (20%), kernel 1200 us (80%)"
    )
    assert bench_decode.breakdown_line(bd, "exact path", "ms") == (
        "  exact path, where one token's 1.5 ms go (with hooks): norm 0.3 ms (20%), kernel 1.2 ms (80%)"
    )
