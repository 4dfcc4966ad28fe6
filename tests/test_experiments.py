"""tools/experiments/experiments.py --quick: every arm trains, the report answers the debugging report's questions,
the doctor is right."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "experiments" / "experiments.py"
ARMS = [
    "ref",
    "fp",
    "t1-stage1",
    "t2-lr3",
    "t3-end-only",
    "t4-long",
    "t5-fractions",
    "t1-half",
    "abl-no-ste",
    "abl-clamp-ste",
    "abl-quant-head",
    "abl-no-subln",
    "abl-no-dequant",
    "abl-const-wd",
]


def _run(args, env=None):
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    p = _run(["--quick", "--out", str(out)])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return out, (out / "report.md").read_text()


@pytest.mark.slow
def test_quick_trains_every_arm(quick):
    out, report = quick
    for arm in ARMS:
        assert (out / "arms" / arm / "metrics.jsonl").is_file(), arm
        assert f"| {arm} |" in report, arm


@pytest.mark.slow
def test_quick_report_answers_the_five_questions(quick):
    _, report = quick
    section = report.split("## The debugging report's five open questions")[1].split("\n## ")[0]
    for i in range(1, 6):
        assert f"\n{i}. **" in section, i
    assert "## What a correct BitNet of this width does" in report
    assert "Evaluation timing does not change the model" in report and "(identical)" in report


@pytest.mark.slow
def test_quick_doctor_table_names_every_ablation(quick):
    _, report = quick
    table = report.split("## The doctor's verdicts")[1].split("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("| abl-") or r.startswith("| ref |")]
    assert len(rows) == 7
    for row in rows:
        assert row.split("|")[5].strip() == "yes", row


@pytest.mark.slow
def test_quick_plots_or_a_plain_note(quick, tmp_path):
    out, report = quick
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "plots" / "overview.png").stat().st_size > 1000
        assert all((out / "plots" / f"{a}.png").is_file() for a in ARMS)
    # without matplotlib (a stub that fails to import), the finished arms are reused and the report says so
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('matplotlib hidden for this test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "stub"), os.environ.get("PYTHONPATH")]))
    p = _run(["--quick", "--out", str(out)], env={"PYTHONPATH": path})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("(reused)") == len(ARMS)
    assert "No plots: matplotlib is not installed" in (out / "report.md").read_text()


def test_bad_arguments_are_one_line_errors(tmp_path):
    p = _run(["--quick", "--out", str(tmp_path), "--only", "nope"])
    assert p.returncode != 0 and p.stderr.strip().startswith("error: unknown arm(s) nope")
    p = _run(["--quick", "--out", str(tmp_path), "--steps", "3"])
    assert p.returncode != 0 and "--steps must be at least 8" in p.stderr
