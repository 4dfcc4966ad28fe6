"""tools/experiments/gpu_regime.py: the GPU script's pipeline, run at its tiny --dry-run size on the CPU."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tools.experiments import gpu_regime as G

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_size_is_about_100m_parameters_at_vocab_50257():
    from bitnet_ref.model import ModelConfig

    s = G.GPU_SIZE
    cfg = ModelConfig.from_dict(
        {k: s[k] for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context")}
        | {"vocab_size": 50257, "layout": "official"}
    )
    bitlinear = s["n_layers"] * (4 * s["d_model"] ** 2 + 3 * s["d_model"] * s["ffn_hidden"])
    # the figures the script's docstring gives: 47.8 M BitLinear weights, 105.7 M parameters in all
    assert round(bitlinear / 1e6, 1) == 47.8 and round(cfg.num_params() / 1e6, 1) == 105.7
    assert s["tokenizer"] == "bpe:50257" and s["steps"] >= 1000


def test_dry_run_writes_metrics_and_a_summary(tmp_path, corpus_file):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "tools/experiments/gpu_regime.py", "--out", str(out), "--dry-run", "--data", corpus_file],
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
