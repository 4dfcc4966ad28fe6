"""tools/fault_zoo.py --quick: the doctor names each injected fault and calls the healthy runs healthy."""

import importlib.util
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "tools" / "fault_zoo.py"


@pytest.mark.slow
def test_quick_fault_zoo_is_all_right(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fault_zoo", ZOO)
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    code = zoo.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "NO" not in out.split() and "right" in out
