"""Shared pytest settings.

Tests run torch on one thread: the tensors here are tiny, and on a small shared machine two
threads fighting over two busy cores make the suite several times slower, not faster.
Hypothesis loads its built-in ``ci`` profile (derandomized, no deadline) when CI is set; the
``dev`` profile here is the same minus derandomization, for local runs.
"""

import os
import sysconfig
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """~100 KB of real Python source (three stdlib modules) for short training runs; test_train.py has a larger one."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    f = tmp_path_factory.mktemp("data") / "py.txt"
    f.write_bytes(b"".join((stdlib / n).read_bytes() for n in ("os.py", "argparse.py", "textwrap.py")))
    return str(f)
