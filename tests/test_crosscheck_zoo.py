"""tools/reliability/crosscheck_zoo.py --only runtime: every runtime fault named where it is, every runtime failure
one line with exit 2, on a random model (the converter cases are tests/test_crosscheck.py's; real llama.cpp and
transformers on good files are the zoo's own --only good, docs/crosscheck.md)."""

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from _decode_ckpt import needs_ext

from bitnet_ref.checkpoint import save_checkpoint
from bitnet_ref.model import ModelConfig, Transformer

ZOO = Path(__file__).resolve().parents[1] / "tools" / "reliability" / "crosscheck_zoo.py"


@needs_ext
@pytest.mark.slow
def test_runtime_side_of_the_zoo_is_all_right(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=256,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=512,
        context=64,
        ffn_act="swiglu",
        tie_embeddings=True,
        layout="official",
    )
    save_checkpoint(tmp_path / "ckpt.pt", {"config": asdict(cfg), "model": Transformer(cfg).state_dict(), "step": 0})
    p = subprocess.run(
        [
            sys.executable,
            str(ZOO),
            "--checkpoint",
            str(tmp_path / "ckpt.pt"),
            "--only",
            "runtime",
            "--length",
            "24",
            "--keep",
            str(tmp_path / "zoo"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "8/8 right" in p.stdout
