"""python -m bitnet_ref.crosscheck: converter faults named tensor by tensor, runtime faults named by where they are,
good files and faithful runtimes never accused, and every failure of a runtime one line with exit status 2.

The runtime faults are the adapters of tools/reliability/crosscheck_zoo.py, run as ``--runtime FILE:FUNCTION`` in
crosscheck's child process, exactly as a user's own runtime would be; all five are tests/test_crosscheck_zoo.py's.
Real llama.cpp is tests/test_llama_cpp.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from _decode_ckpt import needs_ext

from bitnet_ref.checkpoint import save_checkpoint
from bitnet_ref.crosscheck.command import main
from bitnet_ref.crosscheck.tensors import compare
from bitnet_ref.formats.file_model import from_checkpoint
from bitnet_ref.formats.gguf_model import read_bitnet_gguf
from bitnet_ref.formats.gguf_write import byte_vocab_metadata, write_bitnet_gguf
from bitnet_ref.model import ModelConfig, Transformer

ZOO_PATH = Path(__file__).resolve().parents[1] / "tools" / "reliability" / "crosscheck_zoo.py"


def zoo():
    from tools.reliability import crosscheck_zoo

    return crosscheck_zoo


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A checkpoint llama.cpp's bitnet graph can run (random weights, norm gains that are not 1) and its GGUF."""
    d = tmp_path_factory.mktemp("xc")
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
    m = Transformer(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    save_checkpoint(d / "ckpt.pt", {"config": asdict(cfg), "model": m.state_dict(), "step": 1})
    fm = from_checkpoint({"config": asdict(cfg), "model": m.state_dict(), "step": 1})
    write_bitnet_gguf(d / "good.gguf", cfg, fm.linears, fm.floats, vocab=byte_vocab_metadata(), emb_type="F32")
    return d, fm


def run(capsys, *args):
    code = main([str(a) for a in args] + ["--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


# ---------------------------------------------------------------------------------------------- converter


def test_every_converter_fault_is_named_on_its_tensor(source, tmp_path):
    d, fm = source
    z = zoo()
    for name, _what, mutate, tensor, words in z.converter_cases(fm.cfg):
        path = tmp_path / f"{name}.gguf"
        z.write_case(fm, mutate, path)
        faults = [f for f in compare(read_bitnet_gguf(path, missing_norms="unit"), fm) if f.fault]
        assert any(f.where == tensor and words in f.relation for f in faults), (name, [f.line() for f in faults])
        assert len(faults) <= 2, (name, [f.line() for f in faults])  # named, not buried in collateral findings
    assert [f for f in compare(read_bitnet_gguf(d / "good.gguf"), fm) if f.fault] == []


def test_converter_verdict_and_exit_status(source, tmp_path, capsys):
    d, fm = source
    z = zoo()
    path = tmp_path / "inverted.gguf"
    name, _, mutate, tensor, _ = z.converter_cases(fm.cfg)[0]
    z.write_case(fm, mutate, path)
    code, rep, _ = run(capsys, path, "--source", d / "ckpt.pt")
    assert code == 1 and rep["verdict"] == "converter" and tensor in rep["verdict_text"]
    assert "divided instead of multiplied" in rep["verdict_text"]
    code, rep, _ = run(capsys, d / "good.gguf", "--source", d / "ckpt.pt")
    assert code == 0 and rep["verdict"] == "model"


# ---------------------------------------------------------------------------------------------- runtime


@needs_ext
def test_faithful_runtime_on_a_good_file_is_not_accused(source, capsys):
    d, _ = source
    code, rep, _ = run(
        capsys,
        d / "good.gguf",
        "--source",
        d / "ckpt.pt",
        "--runtime",
        "bitnet_ref",
        "--threads",
        "1",
        "--length",
        "12",
    )
    r = rep["runtimes"][0]
    assert code == 0 and rep["verdict"] == "model", rep["verdict_text"]
    assert r["prefill"]["max_abs"] == 0.0 and r["incremental"]["top1"] == 1.0


@needs_ext
def test_runtime_that_crashes_hangs_or_misshapes_is_one_line(source, capsys):
    d, _ = source
    for fn, words, extra in (
        ("crashes", "crashed (SIGSEGV)", []),
        ("hangs", "did not answer within 5 s", ["--timeout", "5"]),
        ("wrong_shape", "returned logits of shape (8, 7) where (8, 256)", []),
    ):
        code, rep, err = run(
            capsys,
            d / "good.gguf",
            "--runtime",
            f"{ZOO_PATH}:{fn}",
            "--ids",
            "1 2 3 4 5 6 7 8",
            "--length",
            "8",
            "--threads",
            "1",
            *extra,
        )
        assert code == 2 and rep["verdict"] == "error", fn
        assert err.startswith("error: runtime") and words in err and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(source, tmp_path, capsys):
    d, _ = source
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 40)
    cases = [
        ([tmp_path / "missing.gguf", "--source", d / "ckpt.pt"], "no such"),
        ([junk, "--source", d / "ckpt.pt"], "GGUF"),
        ([d / "good.gguf", "--source", junk], "GGUF"),
        ([d / "good.gguf", "--runtime", "no_such_module:f", "--threads", "1", "--length", "4"], "cannot import"),
        ([d / "good.gguf", "--runtime", "nothing"], "module:function"),
    ]
    for args, words in cases:
        code, _, err = run(capsys, *args)
        assert code == 2 and err.startswith("error:") and words in err and err.count("\n") == 1, (args, err)
