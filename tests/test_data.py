"""Data loading: the default corpus, text files and directories, nanoGPT token files, every bad input."""

import math
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bitnet_ref.data import corpus as data
from bitnet_ref.data.corpus import DataError, decode, encode, get_batch, load_corpus
from bitnet_ref.data.rebuild import reload


def write(p: Path, content) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


# ---------------------------------------------------------------------------------------------- default corpus


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus()


def test_default_corpus_is_stdlib_source_without_tests(stdlib):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = data._stdlib_files(root)
    rels = [f.relative_to(root).as_posix() for f in files]
    assert rels == sorted(rels)
    assert all(
        not any(c in ("test", "tests", "idle_test") or c.startswith("test_") for c in Path(r).parts) for r in rels
    )
    assert not any("site-packages" in r for r in rels)
    assert "os.py" in rels and "json/decoder.py" in rels
    assert stdlib.kind == "stdlib" and stdlib.vocab_size == 256 and stdlib.byte_level
    assert stdlib.train.dtype == np.uint8 and stdlib.val.dtype == np.uint8
    # every 10th file is validation: about a tenth of the bytes, and both splits are real Python
    share = len(stdlib.val) / (len(stdlib.train) + len(stdlib.val))
    assert 0.03 < share < 0.25
    assert b"def " in stdlib.val.tobytes() and b"import " in stdlib.train.tobytes()


def test_default_corpus_is_deterministic(stdlib):
    again = load_corpus()
    assert again.fingerprint == stdlib.fingerprint
    assert np.array_equal(again.val, stdlib.val)


def test_unigram_entropy_of_python_source(stdlib):
    h = stdlib.unigram_entropy()
    assert 2.5 < h < 4.5  # byte-level source code: far below ln 256 = 5.55


def test_unigram_entropy_hand_case(tmp_path):
    c = load_corpus(write(tmp_path / "a.txt", "ab" * 500 + "\n"), val_fraction=0.5)
    counts = np.bincount(c.train, minlength=256)
    p = counts[counts > 0] / counts.sum()
    assert math.isclose(c.unigram_entropy(), float(-(p * np.log(p)).sum()))
    one = data.Corpus(np.zeros(10, np.uint8), np.zeros(10, np.uint8), 256, "x", "text", None, 0.1)
    assert one.unigram_entropy() == 0.0


# ---------------------------------------------------------------------------------------------- text


def test_text_file_split_is_tail(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    c = load_corpus(write(tmp_path / "t.txt", text))
    assert c.kind == "text" and c.n_files == 1
    joined = (c.train.tobytes() + c.val.tobytes()).decode()
    assert joined == text
    assert len(c.val) == round(len(text) * 0.1)


def test_directory_split_by_file_and_skips_binary_and_hidden(tmp_path):
    for i in range(20):
        write(tmp_path / "d" / f"sub{i % 3}" / f"f{i:02d}.txt", f"file {i}\n" * 20)
    write(tmp_path / "d" / "blob.bin.txt", b"abc\x00def")  # NUL byte: binary
    write(tmp_path / "d" / "latin1.txt", "caf\xe9".encode("latin-1"))  # invalid UTF-8: binary
    write(tmp_path / "d" / ".git" / "objects" / "x", "hidden text")
    write(tmp_path / "d" / ".hidden.txt", "hidden text")
    c = load_corpus(tmp_path / "d")
    assert sorted(c.skipped) == ["blob.bin.txt", "latin1.txt"]
    assert c.n_files == 20
    assert b"hidden" not in c.train.tobytes() + c.val.tobytes()
    # sorted relative paths: sub0/f00, sub0/f03, ..., file index 9 and 19 of that order go to validation
    order = sorted(f"sub{i % 3}/f{i:02d}.txt" for i in range(20))
    val_names = [order[9], order[19]]
    expect_val = "".join(f"file {int(n[-6:-4])}\n" * 20 for n in val_names)
    assert c.val.tobytes().decode() == expect_val


def test_few_files_fall_back_to_tail_split(tmp_path):
    write(tmp_path / "d" / "a.txt", "a" * 100)
    write(tmp_path / "d" / "b.txt", "b" * 100)
    c = load_corpus(tmp_path / "d")
    assert len(c.train) > 0 and len(c.val) > 0
    assert c.train.tobytes() + c.val.tobytes() == b"a" * 100 + b"\n" + b"b" * 100 + b"\n"


def test_encode_decode_round_trip():
    s = "def f(x):\n    return 'héllo ✓'\n"
    assert decode(encode(s)) == s
    assert encode("A").dtype == np.uint8
    assert decode([0xE2, 0x9C]) == "\ufffd"  # a cut multi-byte character is shown, not raised
    with pytest.raises(ValueError):
        decode([300])


# ---------------------------------------------------------------------------------------------- token files


def test_nanogpt_token_dir(tmp_path):
    tr = np.arange(1000, dtype=np.uint16) % 50257
    va = (np.arange(300, dtype=np.uint16) * 7) % 50257
    tr.tofile(tmp_path / "train.bin")
    va.tofile(tmp_path / "val.bin")
    c = load_corpus(tmp_path, vocab_size=50257)
    assert c.kind == "tokens" and not c.byte_level and c.vocab_size == 50257
    assert np.array_equal(c.train, tr) and np.array_equal(c.val, va)
    c2 = load_corpus(tmp_path / "train.bin", vocab_size=50257)  # pointing at train.bin finds val.bin
    assert np.array_equal(c2.val, va)
    assert reload(c.info()).fingerprint == c.fingerprint


def test_single_bin_file_is_split(tmp_path):
    (np.arange(1000, dtype=np.uint16) % 97).tofile(tmp_path / "all.bin")
    c = load_corpus(tmp_path / "all.bin", vocab_size=97)
    assert len(c.train) == 900 and len(c.val) == 100


# ---------------------------------------------------------------------------------------------- bad inputs


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path / "nope.txt")
    assert "no such file" in one_line(e)


def test_empty_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_corpus(write(tmp_path / "e.txt", b""))
    assert "empty" in one_line(e)


def test_empty_directory_and_only_binary(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path / "empty")
    assert "no non-empty UTF-8 text files" in one_line(e)
    write(tmp_path / "bin" / "a.dat", bytes(range(256)))
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path / "bin")
    assert "1 binary files skipped" in one_line(e)


def test_binary_single_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_corpus(write(tmp_path / "x.dat", b"\x00\x01\x02" * 100))
    assert "not a UTF-8 text file" in one_line(e)


def test_unreadable_file_is_an_error_not_a_skip(tmp_path):
    write(tmp_path / "d" / "ok.txt", "fine text\n" * 10)
    os.symlink(tmp_path / "gone", tmp_path / "d" / "dangling.txt")
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path / "d")
    assert "cannot read" in one_line(e) and "dangling.txt" in str(e.value)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_permission_denied():
    # Root reads mode-000 files, so the load runs in a forked child that first drops to user "nobody" when it
    # is root; the directory comes from mkdtemp under the system temp dir, which "nobody" can traverse.
    d = Path(tempfile.mkdtemp(prefix="bitnet-ref-perm-"))
    try:
        d.chmod(0o755)
        write(d / "secret.txt", "text\n").chmod(0)
        pid = os.fork()
        if pid == 0:  # child: report through the exit code, never return into pytest
            code = 3
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    load_corpus(d)
                    code = 1
                except DataError as e:
                    code = 0 if "cannot read" in str(e) and "\n" not in str(e) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 1: loaded anyway, 2: wrong message, 3: setup failed
    finally:
        shutil.rmtree(d)


def test_shorter_than_one_context(tmp_path):
    c = load_corpus(write(tmp_path / "s.txt", "x" * 50))
    with pytest.raises(DataError) as e:
        c.require(64)
    assert "fewer than context + 1" in one_line(e)
    with pytest.raises(DataError):
        load_corpus(tmp_path / "s.txt", context=64)
    load_corpus(write(tmp_path / "ok.txt", "x" * 2000), context=64)  # long enough: no error


def test_token_file_needs_vocab_and_checks_ids(tmp_path):
    np.array([1, 2, 3, 70000 % 65536], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([1, 2], dtype=np.uint16).tofile(tmp_path / "val.bin")
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path)
    assert "--vocab-size" in one_line(e)
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path, vocab_size=100)
    msg = one_line(e)
    assert "4464" in msg and "position 3" in msg and "not below --vocab-size 100" in msg
    assert len(load_corpus(tmp_path, vocab_size=5000).train) == 4


def test_token_file_missing_val_empty_or_odd_size(tmp_path):
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path, vocab_size=10)
    assert "val.bin is missing" in one_line(e)
    (tmp_path / "val.bin").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path, vocab_size=10)
    assert "empty" in one_line(e)
    (tmp_path / "val.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError) as e:
        load_corpus(tmp_path, vocab_size=10)
    assert "truncated" in one_line(e)


def test_vocab_size_with_text_is_rejected(tmp_path):
    with pytest.raises(DataError) as e:
        load_corpus(write(tmp_path / "t.txt", "hello\n" * 100), vocab_size=50257)
    assert "token files" in one_line(e)


def test_reload_detects_changed_data(tmp_path):
    f = write(tmp_path / "t.txt", "hello world\n" * 100)
    info = load_corpus(f).info()
    write(f, "HELLO world\n" * 100)
    with pytest.raises(DataError) as e:
        reload(info)
    assert "changed" in one_line(e)


# ---------------------------------------------------------------------------------------------- batches


def test_get_batch_shapes_shift_and_determinism():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # consecutive ids: targets are the next token
    x2, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x3, _ = get_batch(tokens, 4, 16, torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)


def test_get_batch_reaches_the_last_window():
    tokens = np.arange(17, dtype=np.uint8)  # exactly one window of 16 + 1
    x, y = get_batch(tokens, 3, 16, torch.Generator().manual_seed(0))
    assert x[0].tolist() == list(range(16)) and y[0].tolist() == list(range(1, 17))
    with pytest.raises(DataError):
        get_batch(tokens, 1, 17, torch.Generator())
