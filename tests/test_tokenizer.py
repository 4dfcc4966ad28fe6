"""--tokenizer: BPE training and loading, the token-file cache, token space in the trainer, and bad input."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bitnet_ref.checkpoint import load_checkpoint
from bitnet_ref.data import corpus as D
from bitnet_ref.data import tokenizer as TK
from bitnet_ref.data.rebuild import reload
from bitnet_ref.doctor.command import main as doctor_main
from bitnet_ref.model import MAX_VOCAB
from bitnet_ref.train import loop as T

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("BITNET_REF_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def small_text():
    import sysconfig

    return (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")


def quiet(*a, **k):
    pass


def tiny(tmp_path, corpus_file, **over) -> T.TrainConfig:
    base = dict(
        preset="tiny",
        steps=6,
        batch_size=4,
        warmup=2,
        eval_at="0,1",
        eval_batches=2,
        probe_prompts=2,
        probe_prompt_len=8,
        probe_tokens=8,
        data=corpus_file,
        out=str(tmp_path / "run"),
        log_every=1000,
        threads=1,
        tokenizer="bpe:320",
    )
    base.update(over)
    return T.TrainConfig(**base)


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- the tokenizer


def test_bpe_is_deterministic_exact_size_and_round_trips(small_text):
    a, b = TK.train_bpe(small_text, 300), TK.train_bpe(small_text, 300)
    assert a == b
    codec = TK.codec_from_json(a, "t")
    assert codec.vocab_size == 300
    ids = codec.encode(small_text[:2000])
    assert max(ids) >= 256  # merges are used
    assert len(ids) < len(small_text[:2000].encode())
    assert codec.decode(ids) == small_text[:2000]
    assert codec.decode(codec.encode("naïve → ∑ 日本")) == "naïve → ∑ 日本"  # bytes outside the corpus still work


def test_bpe_larger_than_the_corpus_allows_is_refused(small_text):
    with pytest.raises(D.DataError, match=r"gives only \d+ BPE tokens.*use bpe:\d+ or fewer"):
        TK.train_bpe(small_text[:300], 5000)


@pytest.mark.parametrize(
    "spec, match", [("bpe:255", "N >= 256"), (f"bpe:{MAX_VOCAB + 1}", "cap"), ("bpe:lots", "whole number")]
)
def test_bad_bpe_specs(spec, match):
    with pytest.raises(D.DataError, match=match):
        TK.parse_spec(spec)


def test_tokenizer_files_that_do_not_parse_or_fit(tmp_path, small_text):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(D.DataError, match="does not parse") as e:
        TK.load_codec(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(D.DataError, match="no such file"):
        TK.load_codec(tmp_path / "missing.json")
    j = json.loads(TK.train_bpe(small_text, 300))
    j["model"]["vocab"] = {k: (v + 1000 if v == 299 else v) for k, v in j["model"]["vocab"].items()}
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps(j))
    with pytest.raises(D.DataError, match=r"not 0\.\.299 \(highest 1299\)"):
        TK.load_codec(gap)


def test_tokenize_corpus_caches_the_token_files(corpus_file, cache):
    text = D.load_corpus(corpus_file)
    a = TK.tokenize_corpus(text, "bpe:400")
    assert a.vocab_size == 400 and not a.byte_level and a.train.dtype == np.uint16
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert files == [
        f"bpe/{text.fingerprint}-400/tokenizer.json",
        f"tokens/{text.fingerprint}-{a.tokenizer.sha256[:16]}/train.bin",
        f"tokens/{text.fingerprint}-{a.tokenizer.sha256[:16]}/val.bin",
    ]
    train_bin = cache / files[1]
    assert np.array_equal(np.fromfile(train_bin, np.uint16), a.train)
    # the ids are the tokenizer's encoding of the training split
    assert a.tokenizer.decode(a.train) == bytes(text.train).decode()
    # a damaged cache file (an id past the vocabulary) is rebuilt, not trusted
    bad = a.train.copy()
    bad[5] = 60000
    bad.tofile(train_bin)
    b = TK.tokenize_corpus(text, "bpe:400")
    assert np.array_equal(b.train, a.train) and b.fingerprint == a.fingerprint
    assert np.array_equal(np.fromfile(train_bin, np.uint16), a.train)


def test_tokenizer_path_and_token_files_do_not_mix(tmp_path, corpus_file):
    text = D.load_corpus(corpus_file)
    a = TK.tokenize_corpus(text, "bpe:300")
    (tmp_path / "tok").mkdir()
    a.train.tofile(tmp_path / "tok" / "train.bin")
    a.val.tofile(tmp_path / "tok" / "val.bin")
    ids = D.load_corpus(tmp_path / "tok", 300)
    assert np.array_equal(ids.train, a.train) and ids.fingerprint == a.fingerprint
    with pytest.raises(D.DataError, match="tokenized already"):
        TK.tokenize_corpus(ids, "bpe:300")


def test_uint32_token_files_above_65536(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 70000, 5000, dtype=np.uint32)
    ids.tofile(d / "train.bin")
    ids[:500].tofile(d / "val.bin")
    c = D.load_corpus(d, 70000)
    assert c.train.dtype == np.uint32 and np.array_equal(c.train, ids) and "uint32" in c.source
    assert int(c.train.max()) > 65535
    with pytest.raises(D.DataError, match="not below --vocab-size 69000"):
        D.load_corpus(d, 69000)
    (d / "val.bin").write_bytes(ids[:10].tobytes()[:-2])
    with pytest.raises(D.DataError, match="not a whole number of uint32 tokens"):
        D.load_corpus(d, 70000)


# ---------------------------------------------------------------------------------------------- the trainer


def test_training_in_token_space(tmp_path, corpus_file):
    cfg = tiny(tmp_path, corpus_file)
    T.train(cfg, log=quiet)
    out = Path(cfg.out)
    recs = records(out)
    head = recs[0]
    assert head["config"]["vocab_size"] == 320
    assert head["ln_vocab"] == pytest.approx(math.log(320))
    tok_json = (out / "tokenizer.json").read_text(encoding="utf-8")
    assert head["tokenizer"]["sha256"] == TK.sha256_text(tok_json) and head["tokenizer"]["spec"] == "bpe:320"
    corpus = TK.tokenize_corpus(D.load_corpus(corpus_file), "bpe:320")
    assert head["unigram_entropy"] == pytest.approx(corpus.unigram_entropy())
    assert head["unigram_entropy"] != pytest.approx(D.load_corpus(corpus_file).unigram_entropy())
    assert head["data"]["fingerprint"] == corpus.fingerprint
    evals = [r for r in recs if r["kind"] == "eval"]
    codec = TK.codec_from_json(tok_json, "run")
    for s in evals[-1]["samples"]:  # decoded text, the same the run's tokenizer.json gives for those ids
        assert s == codec.decode(codec.encode(s)) and not s.replace(" ", "").isdigit()
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["data"]["tokenizer"]["sha256"] == head["tokenizer"]["sha256"]
    assert ckpt["config"]["vocab_size"] == 320
    assert reload(ckpt["data"]).fingerprint == corpus.fingerprint


def test_resume_with_another_tokenizer_is_refused(tmp_path, corpus_file, small_text):
    tok = tmp_path / "tok.json"
    tok.write_text(TK.train_bpe(small_text, 320))
    cfg = tiny(tmp_path, corpus_file, tokenizer=str(tok), steps=4, stop_at=2, eval_at="end")
    T.train(cfg, log=quiet)
    with pytest.raises(T.ConfigError, match="--tokenizer 'bpe:320' differs"):
        T.train(replace(cfg, stop_at=None, resume=True, tokenizer="bpe:320"), log=quiet)
    tok.write_text(TK.train_bpe(small_text[: len(small_text) // 2], 320))  # same path, another tokenizer
    before = (Path(cfg.out) / "metrics.jsonl").read_bytes()
    with pytest.raises(D.DataError, match=r"the tokenizer \(.*\) differs from the one the run .* was trained with"):
        T.train(replace(cfg, stop_at=None, resume=True), log=quiet)
    assert (Path(cfg.out) / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--tokenizer", "bpe:100"], "N >= 256"),
        (["--tokenizer", "bpe:300", "--vocab-size", "300"], "the tokenizer sets the vocabulary"),
        (["--tokenizer", "BAD"], "does not parse"),
        (["--tokenizer", "bpe:60000"], "gives only"),
    ],
)
def test_cli_bad_tokenizer_input_is_one_line_and_writes_nothing(tmp_path, corpus_file, capsys, extra, match):
    (tmp_path / "BAD").write_text("[1, 2")
    extra = [str(tmp_path / "BAD") if a == "BAD" else a for a in extra]
    out = tmp_path / "run"
    rc = T.main(["--preset", "tiny", "--steps", "2", "--data", corpus_file, "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and match in err and "\n" not in err
    assert not out.exists()


def test_experiments_quick_with_a_tokenizer(tmp_path, corpus_file):
    """The experiments' tiny CI version in token space: ref and fp only, a 300-token BPE."""
    out = tmp_path / "exp"
    r = subprocess.run(
        [
            sys.executable,
            *"tools/experiments/experiments.py --quick --out".split(),
            str(out),
            *"--only ref --steps 8 --data".split(),
            corpus_file,
            *"--tokenizer bpe:300 --jobs 2 --no-plots".split(),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "BITNET_REF_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = (out / "report.md").read_text()
    assert "ln V = 5.704" in report  # ln 300
    head = json.loads((out / "arms" / "ref" / "metrics.jsonl").read_text().splitlines()[0])
    assert head["config"]["vocab_size"] == 300 and head["tokenizer"]["spec"] == "bpe:300"


# ---------------------------------------------------------------------------------------------- the readers


SEED_LOG = "step,loss,unique_tokens\n1,11.0,20\n1000,10.8,19\n2000,10.8,9\n3000,10.2,4\n4000,10.25,2\n"


def test_doctor_reads_a_foreign_run_in_its_token_space(tmp_path, corpus_file, small_text, capsys):

    tok = tmp_path / "tok.json"
    tok.write_text(TK.train_bpe(small_text, 400))
    log = tmp_path / "seed.csv"
    log.write_text(SEED_LOG)
    assert doctor_main(["--log", str(log), "--json", "--data", corpus_file, "--tokenizer", str(tok)]) == 0
    d = json.loads(capsys.readouterr().out)
    uni = TK.tokenize_corpus(D.load_corpus(corpus_file), str(tok)).unigram_entropy()
    assert f"unigram entropy {uni:.3f}" in d["evidence"][0] and f"ln(V) {math.log(400):.3f}" in d["evidence"][0]
    # --vocab-size alone stays the only vocabulary fact it needs; text data with it points at --tokenizer
    assert doctor_main(["--log", str(log), "--json", "--vocab-size", "50257"]) == 0
    assert "ln(V) 10.825" in json.loads(capsys.readouterr().out)["evidence"][0]
    assert doctor_main(["--log", str(log), "--vocab-size", "50257", "--data", corpus_file]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert doctor_main(["--log", str(log), "--vocab-size", "300", "--data", corpus_file, "--tokenizer", str(tok)]) == 2
    assert "smaller than the 400 tokens" in capsys.readouterr().err


def test_decode_probe_decodes_through_the_runs_tokenizer(tmp_path, corpus_file, capsys):
    from bitnet_ref.decode import probe as decode_probe

    cfg = tiny(tmp_path, corpus_file)
    T.train(cfg, log=quiet)
    ckpt = str(Path(cfg.out) / "ckpt.pt")
    assert decode_probe.main([ckpt, "--json", "--no-save", "--max-new-tokens", "6"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tokenizer"] == str(Path(cfg.out) / "tokenizer.json")
    assert r["context"]["ln_vocab"] == pytest.approx(math.log(320))
    codec = TK.load_codec(Path(cfg.out) / "tokenizer.json")
    prompts = [
        codec.decode(p)
        for p in decode_probe.probe_prompts(TK.tokenize_corpus(D.load_corpus(corpus_file), "bpe:320").val, 2, 8)
    ]
    assert [s["prompt"] for s in r["samples"]] == prompts
    assert decode_probe.main([ckpt, "--json", "--no-save", "--max-new-tokens", "4", "--prompt", "def main():"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["samples"][0]["prompt"] == "def main():"
    (Path(cfg.out) / "tokenizer.json").write_text(TK.train_bpe("x = 1\n" * 50 + "def f(): pass\n" * 50, 260))
    assert decode_probe.main([ckpt, "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the tokenizer this checkpoint was trained with" in err and "\n" not in err


def test_export_copies_the_runs_tokenizer(tmp_path, corpus_file, capsys):
    from bitnet_ref.formats import export
    from bitnet_ref.formats import hf_read as interop

    cfg = tiny(tmp_path, corpus_file)
    T.train(cfg, log=quiet)
    out = tmp_path / "hf"
    assert export.main([str(Path(cfg.out) / "ckpt.pt"), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").read_text() == (Path(cfg.out) / "tokenizer.json").read_text()
    imported = interop.read(out)
    codec = TK.load_codec(out / "tokenizer.json")
    assert imported.tokenizer.encode("x = 1") == codec.encode("x = 1") and max(codec.encode("def __init__")) >= 256
    (Path(cfg.out) / "tokenizer.json").write_text(TK.train_bpe("y = 2\n" * 40 + "def g(): pass\n" * 40, 260))
    assert export.main([str(Path(cfg.out) / "ckpt.pt"), "--out", str(tmp_path / "hf2")]) == 2
    assert "not the one it was trained with" in capsys.readouterr().err
    assert not (tmp_path / "hf2").exists()
