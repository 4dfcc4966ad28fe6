"""tools/gpu_seed_regime.py: the GPU script's pipeline, run at its tiny --dry-run size on the CPU."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_seed_regime as G  # noqa: E402


def test_the_seed_size_is_about_100m_parameters_at_vocab_50257():
    from bitnet_ref.model import ModelConfig

    s = G.SEED
    cfg = ModelConfig.from_dict(
        {k: s[k] for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context")}
        | {"vocab_size": 50257, "layout": "official"}
    )
    n = cfg.n_params if hasattr(cfg, "n_params") else None
    bitlinear = s["n_layers"] * (4 * s["d_model"] ** 2 + 3 * s["d_model"] * s["ffn_hidden"])
    other = 2 * 50257 * s["d_model"]
    assert 90e6 < bitlinear + other < 120e6 and s["tokenizer"] == "bpe:50257" and s["steps"] >= 1000
    assert n is None or 90e6 < n < 120e6


def test_dry_run_writes_metrics_and_a_summary(tmp_path, corpus_file):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "tools/gpu_seed_regime.py", "--out", str(out), "--dry-run", "--data", corpus_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BITNET_REF_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["device"] == "cpu" and s["exit"] == 0 and sorted(s["arms"]) == ["fp", "ref", "t1-stage1"]
    for arm in s["arms"].values():
        assert arm["ln_vocab"] == math.log(300) and arm["evals"][-1][0] == 8
    assert (out / "report.md").is_file()
    head = json.loads((out / "arms" / "t1-stage1" / "metrics.jsonl").read_text().splitlines()[0])
    assert head["train_config"]["stage1_only"] and head["train_config"]["tokenizer"] == "bpe:300"
