"""Training data for bitnet_ref: where tokens come from and how batches are drawn.

Three sources, all ending as two 1-D numpy arrays of token ids (``Corpus.train``, ``Corpus.val``):

- **The default corpus** (``path=None``): the ``*.py`` source of the running Python's standard library
  (``sysconfig.get_paths()["stdlib"]``), read fresh each run (about 12 MB, well under a second warm, so
  nothing is cached on disk). Excluded: any path component named ``test``, ``tests`` or ``idle_test`` or
  starting with ``test_``, and ``site-packages``/``dist-packages``. Files are taken in sorted relative-path
  order and, if the stdlib is unusually large, only the first ``DEFAULT_MAX_BYTES`` are used.
- **Text** (``path`` is a file, or a directory searched recursively in sorted order): byte-level tokens,
  vocab 256, stored as ``uint8``. In a directory, hidden entries (a component starting with ``.``) and
  non-regular files and empty files are ignored, and a *binary* file -- one containing a NUL byte or not valid
  UTF-8 -- is skipped (listed in ``Corpus.skipped``). A file that cannot be read (including a dangling
  symlink) is an error, not a skip; so is a directory with no usable file.
- **Token files** nanoGPT-style: raw little-endian ``uint16`` ids in ``train.bin`` and ``val.bin`` (``path`` is
  the directory holding them, or ``train.bin`` itself), or any single ``*.bin`` file (split like one text file).
  Needs ``vocab_size``; an id ``>= vocab_size`` is an error. With ``vocab_size > 65536`` the files hold
  ``uint32`` ids instead (the ids no longer fit 16 bits).

Text can be carried into a subword token space with ``tokenizer.tokenize_corpus`` (``--tokenizer``); the
result is a ``Corpus`` with ``tokenizer`` set, and ``reload`` redoes that step from the recorded spec.

The train/validation split is deterministic. With several files, usable file ``i`` (0-based, sorted order) goes to
validation when ``floor((i + 1) * f) > floor(i * f)`` for ``f = val_fraction``: with the default 0.1 that is
files 9, 19, 29, ... When that would leave either side without a file (one file, or a handful), the
concatenation is split instead: the last ``val_fraction`` of the tokens are validation.
Files are concatenated in order, each followed by a newline if it does not end with one.

What this module is not: a tokenizer (that is ``tokenizer.py``) or a data pipeline with workers.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

BYTE_VOCAB = 256
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # cap on the default corpus, in sorted file order
TEST_DIR_NAMES = {"test", "tests", "idle_test"}


class DataError(ValueError):
    """A user-facing data problem; the message is one line saying what is wrong and what to do."""


@dataclass
class Corpus:
    train: np.ndarray  # (N_train,) uint8 (text) or uint16 (token files)
    val: np.ndarray  # (N_val,)
    vocab_size: int
    source: str  # one line for humans, e.g. "python 3.11 stdlib (734 files)"
    kind: str  # "stdlib" | "text" | "tokens"
    path: str | None  # what was passed as `path` (None for the default corpus)
    val_fraction: float
    n_files: int = 1
    skipped: list[str] = field(default_factory=list)  # binary files left out of a directory
    tokenizer: object = None  # tokenizer.Codec when the text was tokenized with --tokenizer
    tokenizer_info: dict | None = None  # spec, sha256, vocab_size, ... (stored in checkpoints and the header)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def byte_level(self) -> bool:
        """True when ids are UTF-8 bytes (no tokenizer), so samples can be shown as text."""
        return self.kind in ("stdlib", "text") and self.tokenizer is None

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of sha256 over the train ids then the val ids (as uint16 little-endian; uint32
        when the vocabulary is over 65536)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            dtype = "<u2" if self.vocab_size <= 1 << 16 else "<u4"
            for part in (self.train, self.val):
                h.update(np.ascontiguousarray(part, dtype=dtype).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def unigram_entropy(self) -> float:
        """Entropy in nats of the train split's token histogram: the loss of the best context-free model."""
        counts = np.bincount(self.train, minlength=self.vocab_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def require(self, context: int) -> None:
        """Raise DataError unless both splits hold at least one window of ``context + 1`` tokens."""
        for name, part in (("training", self.train), ("validation", self.val)):
            if len(part) < context + 1:
                raise DataError(
                    f"the {name} split of {self.source} has {len(part)} tokens, fewer than context + 1 = "
                    f"{context + 1}; use more data or a smaller --context"
                )

    def info(self) -> dict:
        """Plain dict stored in checkpoints and the metrics header; `reload(info)` rebuilds the corpus."""
        return {
            "source": self.source,
            "kind": self.kind,
            "path": self.path,
            "vocab_size": self.vocab_size,
            "val_fraction": self.val_fraction,
            "fingerprint": self.fingerprint,
            "n_train": int(len(self.train)),
            "n_val": int(len(self.val)),
            "n_files": self.n_files,
            "skipped": list(self.skipped),
            **({"tokenizer": dict(self.tokenizer_info)} if self.tokenizer_info else {}),
        }

    def text(self, tokens) -> str:
        """``tokens`` for a person to read: decoded text (bytes or through the tokenizer), else the ids."""
        return text(tokens, self.byte_level, self.tokenizer)


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as token ids, uint8 (T,)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode(tokens) -> str:
    """Byte-level ids back to text; invalid UTF-8 (a sample cut mid-character) becomes U+FFFD."""
    ids = [int(t) for t in tokens]
    if any(t < 0 or t >= BYTE_VOCAB for t in ids):
        raise ValueError("decode() takes byte-level ids (0..255); token-file ids have no text form here")
    return bytes(ids).decode("utf-8", errors="replace")


def text(tokens, byte_level: bool, tokenizer=None) -> str:
    """Tokens for a person to read: through ``tokenizer.decode`` when there is one (a tokenizer.json), the decoded
    text when they are bytes, else the ids separated by spaces."""
    if tokenizer is not None:
        return tokenizer.decode([int(t) for t in tokens])
    return decode(tokens) if byte_level else " ".join(str(int(t)) for t in tokens)


def get_batch(tokens: np.ndarray, batch: int, context: int, gen: torch.Generator):
    """Draw ``batch`` random windows: x (B, T) and y = x shifted by one (B, T), both int64 CPU tensors."""
    n = len(tokens) - context  # number of valid start positions
    if n < 1:
        raise DataError(f"{len(tokens)} tokens cannot fill one window of context + 1 = {context + 1}")
    starts = torch.randint(n, (batch,), generator=gen).numpy()  # (B,)
    idx = starts[:, None] + np.arange(context + 1)  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))  # (B, T+1)
    return window[:, :-1], window[:, 1:]


# ---------------------------------------------------------------------------------------------- loading


def load_corpus(
    path=None, vocab_size: int | None = None, val_fraction: float = 0.1, context: int | None = None
) -> Corpus:
    """Load the default corpus (``path=None``), a text file/directory, or nanoGPT token files.

    ``context``, if given, also checks that both splits can fill one training window.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if path is None:
        corpus = _load_stdlib(vocab_size, val_fraction)
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(f"--data {path}: no such file or directory")
        if _is_token_source(p):
            corpus = _load_tokens(p, vocab_size, val_fraction, str(path))
        else:
            if vocab_size not in (None, BYTE_VOCAB):
                raise DataError(
                    f"--vocab-size {vocab_size} applies to token files (*.bin) only; text is read "
                    f"as bytes, vocab {BYTE_VOCAB}, or as subword tokens with --tokenizer"
                )
            corpus = _load_text(p, val_fraction, str(path))
    if context is not None:
        corpus.require(context)
    return corpus


def _stdlib_files(root: Path) -> list[Path]:
    keep = []
    for p in root.rglob("*.py"):
        parts = p.relative_to(root).parts
        if any(c in TEST_DIR_NAMES or c.startswith("test_") for c in parts):
            continue
        if "site-packages" in parts or "dist-packages" in parts:
            continue
        if p.is_file():
            keep.append(p)
    return sorted(keep, key=lambda q: q.relative_to(root).as_posix())


def _load_stdlib(vocab_size, val_fraction) -> Corpus:
    if vocab_size not in (None, BYTE_VOCAB):
        raise DataError(f"--vocab-size {vocab_size} applies to token files only; the default corpus is bytes")
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for p in _stdlib_files(root):
        data = _read_bytes(p)
        if not _is_text(data):
            continue
        docs.append(data)
        total += len(data)
        if total >= DEFAULT_MAX_BYTES:
            break
    if not docs:
        raise DataError(f"no usable Python source found under {root}; pass --data PATH")
    import platform

    source = f"python {platform.python_version()} stdlib ({len(docs)} files, {root})"
    return _split_docs(docs, val_fraction, BYTE_VOCAB, source, "stdlib", None, [])


def _load_text(p: Path, val_fraction: float, shown: str) -> Corpus:
    skipped = []
    if p.is_dir():
        docs = []
        for f in _dir_files(p):
            data = _read_bytes(f)
            if not data:
                continue
            if _is_text(data):
                docs.append(data)
            else:
                skipped.append(f.relative_to(p).as_posix())
        if not docs:
            why = f" ({len(skipped)} binary files skipped)" if skipped else ""
            raise DataError(f"--data {shown}: no non-empty UTF-8 text files found{why}")
    else:
        data = _read_bytes(p)
        if not data:
            raise DataError(f"--data {shown}: the file is empty")
        if not _is_text(data):
            raise DataError(
                f"--data {shown}: not a UTF-8 text file (NUL bytes or invalid UTF-8); "
                "token ids belong in train.bin/val.bin with --vocab-size"
            )
        docs = [data]
    source = f"{shown} ({len(docs)} file{'s' if len(docs) != 1 else ''})"
    return _split_docs(docs, val_fraction, BYTE_VOCAB, source, "text", shown, skipped)


def _dir_files(d: Path) -> list[Path]:
    """Regular files under ``d`` (recursive, sorted), ignoring hidden entries; dangling links are errors."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            f = Path(dirpath) / name
            if f.is_file() or f.is_symlink():  # a dangling symlink falls through to an unreadable-file error
                out.append(f)
    return sorted(out, key=lambda q: q.relative_to(d).as_posix())


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _split_docs(docs, val_fraction, vocab, source, kind, path, skipped) -> Corpus:
    docs = [d if d.endswith(b"\n") else d + b"\n" for d in docs]
    is_val = [math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction) for i in range(len(docs))]
    if any(is_val) and not all(is_val):
        train = b"".join(d for d, v in zip(docs, is_val) if not v)
        val = b"".join(d for d, v in zip(docs, is_val) if v)
        tr, va = np.frombuffer(train, np.uint8), np.frombuffer(val, np.uint8)
    else:
        tr, va = _split_tail(np.frombuffer(b"".join(docs), np.uint8), val_fraction)
    return Corpus(tr, va, vocab, source, kind, path, val_fraction, len(docs), skipped)


def _split_tail(tokens: np.ndarray, val_fraction: float):
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    return tokens[:-n_val], tokens[-n_val:]


# ---------------------------------------------------------------------------------------------- token files


def _is_token_source(p: Path) -> bool:
    if p.is_dir():
        return (p / "train.bin").exists() or (p / "val.bin").exists()
    return p.suffix == ".bin"


def _load_tokens(p: Path, vocab_size, val_fraction, shown) -> Corpus:
    if vocab_size is None:
        raise DataError(f"--data {shown} holds token ids: pass --vocab-size (50257 for GPT-2 tokens)")
    from bitnet_ref.model import MAX_VOCAB

    if not isinstance(vocab_size, int) or not 2 <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size must be an integer in [2, {MAX_VOCAB}] for token files, got {vocab_size}")
    if p.is_dir():
        train_f, val_f = p / "train.bin", p / "val.bin"
    elif p.name == "train.bin" and (p.parent / "val.bin").exists():
        train_f, val_f = p, p.parent / "val.bin"
    else:
        train_f, val_f = p, None
    for f in (train_f, val_f):
        if f is not None and not f.exists():
            raise DataError(f"--data {shown}: {f.name} is missing (nanoGPT data needs train.bin and val.bin)")
    train = _read_bin(train_f, vocab_size)
    if val_f is None:
        train, val = _split_tail(train, val_fraction)
        n_files = 1
    else:
        val = _read_bin(val_f, vocab_size)
        n_files = 2
    bits = 16 if vocab_size <= 1 << 16 else 32
    return Corpus(
        train,
        val,
        vocab_size,
        f"{shown} (uint{bits} tokens, vocab {vocab_size})",
        "tokens",
        shown,
        val_fraction,
        n_files,
        [],
    )


def _read_bin(f: Path, vocab_size: int) -> np.ndarray:
    """The ids in ``f``: uint16 for a vocabulary up to 65536, uint32 above; every id checked < vocab_size."""
    width = 2 if vocab_size <= 1 << 16 else 4
    try:
        size = f.stat().st_size
        if size == 0:
            raise DataError(f"{f}: the token file is empty")
        if size % width:
            raise DataError(f"{f}: {size} bytes is not a whole number of uint{8 * width} tokens (truncated?)")
        tokens = np.memmap(f, dtype=np.uint16 if width == 2 else np.uint32, mode="r")
    except OSError as e:
        raise DataError(f"cannot read {f}: {e.strerror or e}") from None
    chunk = 1 << 24
    for start in range(0, len(tokens), chunk):  # chunked so huge files are checked without a full copy
        part = tokens[start : start + chunk]
        bad = np.flatnonzero(part >= vocab_size)
        if len(bad):
            i = start + int(bad[0])
            raise DataError(f"{f}: token id {int(tokens[i])} at position {i} is not below --vocab-size {vocab_size}")
    return tokens


VAL_WINDOWS = 32  # validation windows (of the model's context) for the loss measured by the probe


VAL_SEED = 0


def val_windows(val_tokens, context: int, n: int = VAL_WINDOWS) -> torch.Tensor:
    """``n`` fixed validation windows of context + 1 tokens: (n, context + 1) long."""
    x, y = get_batch(val_tokens, n, context, torch.Generator().manual_seed(VAL_SEED))  # (n, T) each
    return torch.cat([x, y[:, -1:]], dim=1)
