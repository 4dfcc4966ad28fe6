"""tools/decode_probe.py and bitnet_ref/decode_probe.py: the verdict, the report's fields, and one clear
error line (exit 2, no traceback, no code run) for every kind of bad input."""

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _decode_ckpt import needs_ext, trained_checkpoint

from bitnet_ref.checkpoint import build_model, load_checkpoint
from bitnet_ref.data.corpus import val_windows
from bitnet_ref.data.rebuild import reload
from bitnet_ref.decode import probe as DP
from bitnet_ref.diversity import probe_prompts
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.thresholds import COLLAPSE_TOP1, PROBE_LOSS_MARGIN

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "decode_probe.py"


@pytest.fixture(scope="module")
def trained():
    path = trained_checkpoint()
    ckpt = load_checkpoint(path)
    corpus = reload(ckpt["data"])
    prompts = probe_prompts(corpus.val, 4, 16)
    windows = val_windows(corpus.val, ckpt["config"]["context"])
    return path, ckpt, prompts, windows


def probe(model, trained, **kw):
    _, ckpt, prompts, windows = trained
    return DP.probe_model(model, prompts, 48, windows=windows, ckpt=ckpt, **kw)


def cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=cwd,
    )


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err, err
    assert r.stdout == ""


# ---------------------------------------------------------------------------------------------- verdict


DIVERSE = {
    "unique_tokens": 40,
    "distinct_1": 0.2,
    "distinct_2": 0.6,
    "max_repeat_run": 3,
    "top_token_share": 0.15,
    "token_entropy": 3.0,
}
ONE_TOKEN = {**DIVERSE, "unique_tokens": 1, "top_token_share": 1.0, "max_repeat_run": 48}


@pytest.mark.parametrize(
    "loss, div, top1, want",
    [
        (2.0, DIVERSE, 0.5, "healthy"),
        (3.2, DIVERSE, 0.5, "not learning"),  # within PROBE_LOSS_MARGIN of the unigram entropy
        # greedy loop at low confidence, loss at ln V: the debugging report's symptom
        (5.5, ONE_TOKEN, 0.2, "not learning"),
        (2.0, ONE_TOKEN, 0.95, "collapsed"),
        (6.0, ONE_TOKEN, 0.99, "collapsed"),  # confidently one token: collapse is the more specific diagnosis
        (2.0, {**DIVERSE, "top_token_share": 0.7}, 0.5, "healthy"),  # repetitive greedy output alone is not collapse
        (None, DIVERSE, 0.5, "unknown"),
    ],
)
def test_verdict_rules(loss, div, top1, want):
    v = DP.verdict(val_loss=loss, unigram_entropy=3.23, ln_vocab=5.545, div=div, mean_top1=top1)
    assert v["verdict"] == want and "\n" not in v["reason"]
    assert v["thresholds"]["learn_margin_nats"] == PROBE_LOSS_MARGIN


def test_verdict_notes_repetitive_output():
    v = DP.verdict(
        val_loss=2.0, unigram_entropy=3.23, ln_vocab=5.545, div={**DIVERSE, "top_token_share": 0.7}, mean_top1=0.5
    )
    assert v["notes"] and "repetitive" in v["notes"][0]


def test_trained_checkpoint_is_healthy(trained):
    _, ckpt, _, _ = trained
    r = probe(build_model(ckpt), trained)
    c = r["context"]
    assert r["verdict"]["verdict"] == "healthy", r["verdict"]
    # honest margin: the run really learned context, not a borderline pass
    assert c["val_loss_measured"] < c["unigram_entropy"] - 0.3
    assert abs(c["val_loss_measured"] - ckpt["last_val_loss"]) < 0.15  # measured now ~ what the trainer saw
    assert r["next_token"]["mean_top1"] < COLLAPSE_TOP1


def test_zeroed_head_is_not_learning(trained):
    _, ckpt, _, _ = trained
    model = build_model(ckpt)
    with torch.no_grad():
        model.head.weight.zero_()
    r = probe(model, trained)
    assert r["verdict"]["verdict"] in ("not learning", "collapsed")
    assert r["verdict"]["verdict"] == "not learning"  # uniform logits: loss = ln V, top-1 = 1/V
    assert r["context"]["val_loss_measured"] == pytest.approx(r["context"]["ln_vocab"], abs=1e-4)


@pytest.mark.parametrize("bias", [3.0, 10.0])
def test_head_that_always_prefers_one_token_is_collapsed(trained, bias):
    _, ckpt, _, _ = trained
    model = build_model(ckpt)
    head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.head.weight)
        head.bias.zero_()
        head.bias[ord(" ")] = bias
    model.head = head
    r = probe(model, trained)
    assert r["verdict"]["verdict"] == "collapsed", r["verdict"]
    assert r["diversity"]["unique_tokens"] <= 2 and r["next_token"]["mean_top1"] > 0.9


def test_random_init_is_not_learning(trained):
    _, ckpt, _, _ = trained
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_dict(ckpt["config"])).eval()
    assert probe(model, trained)["verdict"]["verdict"] == "not learning"


# ---------------------------------------------------------------------------------------------- the CLI


@needs_ext
def test_json_report_holds_every_field_and_is_saved(trained, tmp_path):
    src = trained[0]
    path = tmp_path / "ckpt.pt"
    path.write_bytes(src.read_bytes())
    r = cli(path, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for k in ("unique_tokens", "distinct_1", "distinct_2", "max_repeat_run", "top_token_share", "token_entropy"):
        assert k in rep["diversity"]
    assert set(rep["next_token"]) == {"mean_entropy", "mean_top1"}
    for k in ("step", "last_val_loss", "val_loss_measured", "ln_vocab", "unigram_entropy"):
        assert rep["context"][k] is not None
    assert rep["verdict"]["verdict"] == "healthy" and rep["verdict"]["reason"]
    assert rep["speed"]["packed_tok_s"] > 0 and rep["speed"]["torch_tok_s"] > 0
    par = rep["parity"]
    assert par["tokens_identical"] is True and par["ok"] is True
    assert par["max_abs_logit_diff"] == 0.0 and par["max_rel_logit_diff"] == 0.0
    rc = rep["recompute"]  # every run: each cached path against a full recompute, figure and verdict
    assert rc["ok"] is True and set(rc) == {"packed", "fake_quant", "ok"}
    assert all(rc[k]["samples_identical"] == rc[k]["samples"] and rc[k]["disagreements"] == 0 for k in rc if k != "ok")
    assert 0 < rep["context"]["val_loss_se"] < 0.2  # the measured loss comes with its standard error
    assert rep["backend"] == "packed" and len(rep["samples"]) == rep["decoding"]["samples"]
    # the trainer's probe prompts and length by default: the diversity numbers match its last eval record
    last_eval = [json.loads(x) for x in (src.parent / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    for k in rep["diversity"]:
        assert rep["diversity"][k] == pytest.approx(last_eval[k]), k
    saved = json.loads((tmp_path / DP.REPORT_NAME).read_text())
    assert saved["parity"] == par and saved["verdict"] == rep["verdict"]
    assert not list(tmp_path.glob(".*.tmp"))


@needs_ext
def test_table_output_and_sampling_options(trained):
    r = cli(
        trained[0],
        "--no-save",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--seed",
        "1",
        "--samples",
        "2",
        "--max-new-tokens",
        "20",
        "--prompt",
        "def main():\n    ",
    )
    assert r.returncode == 0, r.stderr
    for word in ("diversity", "next token", "verdict", "parity       ok", "tok/s", "sample 1"):
        assert word in r.stdout, r.stdout
    assert not (trained[0].parent / "x").exists()


def test_torch_backend_runs(trained):
    r = cli(trained[0], "--no-save", "--json", "--backend", "torch", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "torch"


@needs_ext
def test_fused_int8_head_samples_keep_the_exact_parity_check(trained):
    r = cli(trained[0], "--no-save", "--fused", "--head", "int8", "--max-new-tokens", "16", "--samples", "2")
    assert r.returncode == 0, r.stderr
    assert "the fused C++ step and the int8 head" in r.stdout and "parity       ok" in r.stdout
    assert "bit for bit" in r.stdout  # parity ran on the exact packed path, not on the fused one
    r = cli(trained[0], "--no-save", "--backend", "torch", "--fused")
    assert r.returncode == 2 and "need the packed backend" in r.stderr


def test_module_entry_and_a_reader_that_stops_early(trained):
    args = [
        sys.executable,
        "-m",
        "bitnet_ref.decode_probe",
        str(trained[0]),
        "--no-save",
        "--backend",
        "torch",
        "--max-new-tokens",
        "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "verdict" in r.stdout, r.stderr
    # `| head` that has already gone when the report is printed: no BrokenPipeError traceback, exit 0
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0 and b"Traceback" not in err, err.decode()


@pytest.fixture(scope="module")
def bad_files(trained, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = trained[0].read_bytes()
    ckpt = load_checkpoint(trained[0])
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "random.pt").write_bytes(
        bytes(torch.randint(256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist())
    )
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, d / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"format": "bitnet_ref.ckpt", "x": Evil()}, f)
    torch.save({"format": "bitnet_ref.ckpt", "x": Evil()}, d / "evil_torch.pt")
    huge = copy.deepcopy(ckpt)
    huge["config"]["d_model"] = 1 << 40
    torch.save(huge, d / "huge.pt")
    nan = copy.deepcopy(ckpt)
    nan["model"]["blocks.0.attn.q_proj.weight"][0, 0] = float("nan")
    torch.save(nan, d / "nan.pt")
    gone = copy.deepcopy(ckpt)
    gone["data"] = {**gone["data"], "kind": "text", "path": str(d / "deleted.txt")}
    torch.save(gone, d / "data_gone.pt")
    return d


@pytest.mark.parametrize(
    "name, needles",
    [
        ("missing.pt", ["no such checkpoint"]),
        ("empty.pt", ["empty"]),
        ("truncated.pt", ["truncated"]),
        ("random.pt", ["corrupt or not a PyTorch file"]),
        ("foreign.pt", ["not a bitnet_ref checkpoint"]),
        ("evil.pt", []),
        ("evil_torch.pt", ["run code"]),
        ("huge.pt", ["model config"]),
        ("nan.pt", ["NaN"]),
        ("data_gone.pt", ["--prompt"]),
    ],
)
def test_bad_input_is_one_line_exit_2(bad_files, name, needles):
    r = cli(bad_files / name, "--no-save")
    assert_one_line_error(r, *needles)
    assert not (bad_files / "PWNED").exists()  # the malicious pickle never ran


def test_data_gone_works_with_an_explicit_prompt(bad_files):
    r = cli(bad_files / "data_gone.pt", "--no-save", "--json", "--prompt", "import os\n", "--max-new-tokens", "8")
    assert r.returncode in (0, 1) and r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert "unavailable" in rep["decoding"]["data_note"]
    assert rep["context"]["val_loss_measured"] is None and rep["context"]["last_val_loss"] is not None


def test_bad_flags_and_prompt_file(trained, tmp_path):
    assert_one_line_error(cli(trained[0], "--temperature", "-1"), "temperature")
    assert_one_line_error(cli(trained[0], "--no-save", "--prompt-file", tmp_path / "none.txt"), "--prompt-file")
    assert_one_line_error(cli(trained[0], "--no-save", "--max-new-tokens", "64", "--prompt", "x"), "no room")
    assert_one_line_error(cli(trained[0], "--no-save", "--device", "tpu"), "device")


def test_missing_extension_for_packed_says_how_to_build(trained):
    code = (
        "import sys; sys.modules['bitnet_ref._core'] = None\n"
        "from bitnet_ref.decode_probe import main\n"
        f"sys.exit(main([{str(trained[0])!r}, '--no-save']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert_one_line_error(r, "pip install", "--backend torch")


@needs_ext
def test_a_cache_fault_both_cached_paths_share_is_its_own_verdict(trained, monkeypatch, capsys):
    # parity compares packed with fake-quant, both through the KV cache: blind to a fault in the cache path
    # itself; the recompute check against a full forward with no cache is not
    from test_generate import rope_restarts_in_the_cache

    path = trained[0]
    assert DP.main([str(path), "--json", "--no-save", "--max-new-tokens", "24"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["recompute"]["ok"] and rep["verdict"]["verdict"] != "cache mismatch"
    rope_restarts_in_the_cache(monkeypatch)
    assert DP.main([str(path), "--no-save", "--max-new-tokens", "24"]) == 1
    text = capsys.readouterr().out
    assert "CACHE MISMATCH" in text and "verdict      CACHE MISMATCH" in text
    assert "parity       ok" in text  # both cached paths share the fault
