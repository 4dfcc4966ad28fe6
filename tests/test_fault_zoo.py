"""tools/reliability/fault_zoo.py --quick: the doctor names each injected fault and calls the healthy runs healthy."""

import subprocess
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "tools" / "reliability" / "fault_zoo.py"


@pytest.mark.slow
def test_quick_fault_zoo_is_all_right(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ZOO), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "right" in p.stdout and "NO" not in p.stdout.split()
