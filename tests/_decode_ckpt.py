"""What several test modules share: a short real training run (test_packed.py, test_generate.py,
test_decode_probe.py, ...; trained once per session), and the export command run in-process (test_interop.py,
test_gguf.py).

Not a test module (the leading underscore keeps pytest from collecting it).
"""

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from bitnet_ref.formats import export as E
from bitnet_ref.runtime import kernels

needs_ext = pytest.mark.skipif(
    not kernels.available(), reason=f"C++ extension not built ({kernels.import_error()}); CI builds it"
)

_CACHE = {}
STEPS = 200


def trained_checkpoint() -> Path:
    """ckpt.pt of a tiny-preset, 200-step run on the default corpus (~15 s on one core)."""
    if "path" not in _CACHE:
        from bitnet_ref.train.loop import TrainConfig, train

        root = Path(tempfile.mkdtemp(prefix="bitnet_ref_decode_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        out = root / "run"
        train(
            TrainConfig(preset="tiny", steps=STEPS, out=str(out), device="cpu", threads=1, eval_at="end"),
            log=lambda *a, **k: None,
        )
        _CACHE["path"] = out / "ckpt.pt"
    return _CACHE["path"]


def run_export(capsys, *args):
    """bitnet_ref.export's main in this process (a subprocess costs seconds of torch import): (exit status,
    stdout, stderr)."""
    try:
        code = E.main([str(a) for a in args])
    except SystemExit as e:  # argparse errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
