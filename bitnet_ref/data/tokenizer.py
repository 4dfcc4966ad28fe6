"""Subword tokenizers for training: ``--tokenizer bpe:N`` (train a byte-level BPE) or ``--tokenizer PATH``.

``tokenize_corpus(corpus, spec)`` turns a text corpus (the bytes that ``corpus.load_corpus`` read) into token
space: a ``Corpus`` whose ids come from a ``tokenizers`` tokenizer.json, whose ``vocab_size`` is the tokenizer's,
and whose ``text()`` decodes through it.

- ``bpe:N`` trains a byte-level BPE (GPT-2 style: the 256 byte symbols, then merges inside GPT-2's
  pre-tokenizer words, no special tokens) of exactly N tokens on the **training split only**, with the
  ``tokenizers`` library. Training is deterministic (same text, same N: byte-identical tokenizer.json; tested).
  When the training split cannot give N tokens (every pair inside a word is merged already) it is refused with
  the size it can give; a smaller model vocabulary than asked for is never used silently.
- ``PATH`` loads an existing tokenizer.json; its vocabulary (added tokens included) must be the ids 0..V-1
  with 2 <= V <= the model cap.

Both are cached under ``cache_dir()`` (``$BITNET_REF_CACHE``, else ``$XDG_CACHE_HOME/bitnet_ref``, else
``~/.cache/bitnet_ref``): ``bpe/<text fingerprint>-<N>/tokenizer.json`` and
``tokens/<text fingerprint>-<tokenizer sha>/{train,val}.bin`` -- the tokenized splits in the nanoGPT
convention (raw little-endian uint16 ids, uint32 when V > 65536). Every cache file is written to a temporary
name and renamed, so a killed run leaves no half file; a cache entry is only trusted after its size checks.
The trainer also copies the tokenizer.json into the run directory and records its sha256 in the checkpoint
and the metrics header (a resume with another tokenizer is refused).

What this is not: a tokenizer implementation (the ``tokenizers`` library is) or a streaming pipeline (the
whole corpus is tokenized once, in memory).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from bitnet_ref.data.corpus import BYTE_VOCAB, Corpus, DataError
from bitnet_ref.files import atomic_write
from bitnet_ref.model import MAX_VOCAB

CHUNK_LINES = 2000  # lines per encode_batch item: the split is fixed, so the ids are the same every time


def cache_dir() -> Path:
    env = os.environ.get("BITNET_REF_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitnet_ref"


def parse_spec(spec: str) -> tuple[str, object]:
    """("bpe", N) for ``bpe:N`` (256 <= N <= the model cap), else ("file", Path)."""
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise DataError(f"--tokenizer {spec}: N in bpe:N must be a whole number, e.g. bpe:8192") from None
        if n < BYTE_VOCAB:
            raise DataError(f"--tokenizer {spec}: a byte-level BPE needs N >= {BYTE_VOCAB} (the byte symbols)")
        if n > MAX_VOCAB:
            raise DataError(f"--tokenizer {spec}: N is above the model's vocabulary cap {MAX_VOCAB}")
        return "bpe", n
    return "file", Path(spec)


def sha256_text(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


class Codec:
    """A loaded tokenizer.json: encode/decode text, its vocabulary size and the sha256 of its JSON."""

    def __init__(self, tok, json_text: str, source: str):
        self.tok, self.json_text, self.source = tok, json_text, source
        self.sha256 = sha256_text(json_text)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(t) for t in ids], skip_special_tokens=False)


def codec_from_json(json_text: str, source: str) -> Codec:
    """Parse a tokenizer.json and check its vocabulary is the dense ids 0..V-1 with 2 <= V <= the model cap."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(json_text)
    except Exception as e:  # the Rust side raises plain Exceptions with multi-line messages
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{source} does not parse as a tokenizers tokenizer.json ({first})") from None
    ids = set(tok.get_vocab(with_added_tokens=True).values())
    n = tok.get_vocab_size(with_added_tokens=True)
    if not 2 <= n <= MAX_VOCAB:
        raise DataError(f"{source} has {n} tokens; the model takes 2 to {MAX_VOCAB}")
    if ids != set(range(n)):
        raise DataError(
            f"{source}: its token ids are not 0..{n - 1} (highest {max(ids, default=-1)}), so they do "
            "not fit a model vocabulary of that size"
        )
    return Codec(tok, json_text, source)


def load_codec(path) -> Codec:
    p = Path(path)
    try:
        data = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"--tokenizer {path}: no such file (pass a tokenizer.json or bpe:N)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--tokenizer {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return codec_from_json(data, str(path))


def train_bpe(train_text: str, n: int) -> str:
    """The tokenizer.json (text) of a byte-level BPE of exactly ``n`` tokens trained on ``train_text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n, show_progress=False, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_chunks(train_text), trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != n:
        raise DataError(
            f"--tokenizer bpe:{n}: the training split ({len(train_text.encode()):,} bytes) gives only "
            f"{got} BPE tokens (every pair inside a word is merged); use bpe:{got} or fewer, or more data"
        )
    return tok.to_str()


def _chunks(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i : i + CHUNK_LINES]) for i in range(0, len(lines), CHUNK_LINES)]


def encode_ids(codec: Codec, text: str) -> np.ndarray:
    """All ids of ``text`` (encoded in fixed line chunks, in parallel), uint16 or uint32 by vocabulary size."""
    dtype = token_dtype(codec.vocab_size)
    encs = codec.tok.encode_batch(_chunks(text), add_special_tokens=False)
    total = sum(len(e.ids) for e in encs)
    out = np.empty(total, dtype=dtype)
    i = 0
    for e in encs:
        out[i : i + len(e.ids)] = e.ids
        i += len(e.ids)
    return out


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def get_codec(corpus: Corpus, spec: str) -> Codec:
    """The tokenizer ``spec`` names, for the text ``corpus``: trained (or taken from the cache) or loaded."""
    kind, arg = parse_spec(spec)
    if kind == "file":
        return load_codec(arg)
    path = cache_dir() / "bpe" / f"{corpus.fingerprint}-{arg}" / "tokenizer.json"
    if path.is_file():
        try:
            codec = codec_from_json(path.read_text(encoding="utf-8"), f"--tokenizer {spec} (cached {path})")
            if codec.vocab_size == arg:
                return codec
        except (DataError, OSError, UnicodeDecodeError):
            pass  # a damaged cache entry is rebuilt
    json_text = train_bpe(_as_text(corpus.train), arg)
    atomic_write(path, lambda f: f.write(json_text.encode("utf-8")))
    return codec_from_json(json_text, f"--tokenizer {spec}")


def tokenize_corpus(corpus: Corpus, spec: str) -> Corpus:
    """``corpus`` (bytes) in the token space of ``spec``; the tokenized splits are cached as token files."""
    if not corpus.byte_level:
        raise DataError(
            "--tokenizer applies to text data; token files (*.bin) are tokenized already "
            "(pass --vocab-size for them instead)"
        )
    codec = get_codec(corpus, spec)
    dtype = token_dtype(codec.vocab_size)
    d = cache_dir() / "tokens" / f"{corpus.fingerprint}-{codec.sha256[:16]}"
    parts = []
    for name, part in (("train", corpus.train), ("val", corpus.val)):
        f = d / f"{name}.bin"
        ids = _read_cached(f, dtype, codec.vocab_size)
        if ids is None:
            ids = encode_ids(codec, _as_text(part))
            atomic_write(f, lambda fh, ids=ids: fh.write(ids.astype(dtype).tobytes()))
        parts.append(ids)
    info = {
        "spec": spec,
        "sha256": codec.sha256,
        "vocab_size": codec.vocab_size,
        "source": codec.source,
        "text_fingerprint": corpus.fingerprint,
        "cache": str(d),
    }
    n_bytes = len(corpus.train) + len(corpus.val)
    n_tok = len(parts[0]) + len(parts[1])
    return replace(
        corpus,
        train=parts[0],
        val=parts[1],
        vocab_size=codec.vocab_size,
        tokenizer=codec,
        tokenizer_info=info,
        _fingerprint=None,
        source=f"{corpus.source}, {spec} tokens (vocab {codec.vocab_size}, {n_bytes / max(1, n_tok):.2f} bytes/token)",
    )


def _read_cached(f: Path, dtype, vocab_size: int):
    """The ids in cache file ``f``, or None when it is missing or not a valid token file for this vocabulary."""
    try:
        data = np.fromfile(f, dtype=dtype)
    except (OSError, ValueError):
        return None
    if len(data) == 0 or f.stat().st_size != data.nbytes or int(data.max()) >= vocab_size:
        return None
    return data


def _as_text(part: np.ndarray) -> str:
    return np.ascontiguousarray(part, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")
