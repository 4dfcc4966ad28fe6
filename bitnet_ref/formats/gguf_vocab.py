"""The tokenizer a GGUF file carries (its ``tokenizer.ggml.model``, tokens, merges and scores), as a text codec for
prompts and samples.

- ``gpt2`` (byte-level BPE: ``tokens`` and ``merges``; LLaMA 3 and bitnet-b1.58-2B-4T, and bitnet_ref's own
  byte vocabulary): a ``tokenizers`` BPE with GPT-2's byte-to-character table, split first by the pre-tokenizer
  regex that ``tokenizer.ggml.pre`` names (LLaMA 3's for ``llama-bpe``/``llama3``, GPT-2's otherwise);
- ``llama`` (SentencePiece: ``tokens``, ``scores``, ``token_type``): llama.cpp's SPM algorithm, written out here:
  spaces become U+2581, a leading one is added when ``add_space_prefix`` (default true), then adjacent symbols
  merge highest score first (leftmost on ties) while the merged piece is a token; what is left unknown falls back
  to the ``<0xXX>`` byte tokens;
- ``no_vocab`` or none: token ids only (``FileIdCodec``); another model (bert, t5, rwkv...): ``MissingCodec``,
  whose encode is a one-line error.

``add_bos_token`` is honoured on encode (llama.cpp adds the BOS id before a prompt when the file says so). The
codecs are built lazily, on first use: a 128k-token vocabulary with its merges takes about a second.
What this is not: byte-exact llama.cpp tokenization of every pre-tokenizer it knows (the ids that are compared
between runtimes are fed as ids; text only makes prompts and shows samples).
"""

from __future__ import annotations

from bitnet_ref.formats.hf import IdCodec, byte_chars

SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe"}


class FileIdCodec(IdCodec):
    """No vocabulary in the file: prompts are space-separated token ids, samples are shown as ids."""

    source = "token ids (the file has no vocabulary)"

    def encode(self, text: str) -> list[int]:
        try:
            return [int(t) for t in text.split()]
        except ValueError:
            raise ValueError("the file has no vocabulary: give the prompt as space-separated token ids") from None


class MissingCodec(FileIdCodec):
    """A vocabulary of a model this reader does not tokenize: ids only, and text prompts are a one-line error."""

    def __init__(self, model: str):
        self.source = f"token ids (tokenizer.ggml.model {model!r} is not read here)"
        self.model = model

    def encode(self, text: str) -> list[int]:
        try:
            return [int(t) for t in text.split()]
        except ValueError:
            raise ValueError(
                f"the file's tokenizer ({self.model!r}) is not one bitnet_ref reads (gpt2 BPE, llama SPM): "
                "give the prompt as space-separated token ids"
            ) from None


class BPECodec:
    """GPT-2 style byte-level BPE from a GGUF vocabulary (built on first use)."""

    def __init__(self, tokens: list[str], merges: list[str], pre: str, bos: int | None, add_bos: bool):
        self.tokens, self.merges, self.pre, self.bos, self.add_bos = tokens, merges, pre, bos, add_bos
        self.source = f"the file's BPE vocabulary ({len(tokens)} tokens, pre-tokenizer {pre!r})"
        self._tok = None

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

            vocab: dict[str, int] = {}
            for i, t in enumerate(self.tokens):
                vocab.setdefault(t, i)
            pairs = [tuple(m.split(" ", 1)) for m in self.merges if " " in m]
            pairs = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]  # others never apply
            llama3 = self.pre in LLAMA3_PRE
            tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=llama3))
            byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
            tok.pre_tokenizer = (
                pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level])
                if llama3
                else byte_level
            )
            tok.decoder = decoders.ByteLevel()
            self._tok = tok
        return self._tok

    def encode(self, text: str) -> list[int]:
        ids = self._tokenizer().encode(text, add_special_tokens=False).ids
        return [self.bos, *ids] if self.add_bos and self.bos is not None else ids

    def decode(self, ids) -> str:
        return self._tokenizer().decode([int(t) for t in ids], skip_special_tokens=False)


class SPMCodec:
    """llama.cpp's SentencePiece tokenizer over a GGUF vocabulary (see the module docstring)."""

    def __init__(self, tokens, scores, types, *, add_space_prefix: bool, bos, add_bos: bool, unk):
        self.tokens, self.scores, self.types = tokens, scores, types
        self.add_space_prefix, self.bos, self.add_bos, self.unk = add_space_prefix, bos, add_bos, unk
        self.source = f"the file's SentencePiece vocabulary ({len(tokens)} tokens)"
        self._ids: dict[str, int] | None = None

    def _vocab(self) -> dict[str, int]:
        if self._ids is None:
            self._ids = {}
            for i, t in enumerate(self.tokens):
                self._ids.setdefault(t, i)
        return self._ids

    def encode(self, text: str) -> list[int]:
        vocab = self._vocab()
        text = text.replace(" ", SPACE)
        symbols = list(SPACE + text if self.add_space_prefix and text else text)
        while len(symbols) > 1:
            best, at = None, -1
            for i in range(len(symbols) - 1):
                tid = vocab.get(symbols[i] + symbols[i + 1])
                if tid is not None and (best is None or self.scores[tid] > best):
                    best, at = self.scores[tid], i
            if best is None:
                break
            symbols[at : at + 2] = [symbols[at] + symbols[at + 1]]
        ids = [] if not (self.add_bos and self.bos is not None) else [self.bos]
        for s in symbols:
            if s in vocab:
                ids.append(vocab[s])
                continue
            for b in s.encode("utf-8"):  # byte fallback
                ids.append(vocab.get(f"<0x{b:02X}>", self.unk if self.unk is not None else 0))
        return ids

    def decode(self, ids) -> str:
        out = bytearray()
        for t in ids:
            t = int(t)
            if not 0 <= t < len(self.tokens):
                continue
            kind, piece = self.types[t] if t < len(self.types) else NORMAL, self.tokens[t]
            if kind == BYTE and len(piece) == 6 and piece.startswith("<0x"):
                out.append(int(piece[3:5], 16))
            elif kind != CONTROL:
                out += piece.replace(SPACE, " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        return text[1:] if self.add_space_prefix and text.startswith(" ") else text


def codec_of(meta: dict, vocab_size: int):
    """The text codec of a GGUF file's metadata (``GGUFFile.metadata``), checked against the model's vocabulary."""
    model = meta.get("tokenizer.ggml.model")
    if model in (None, "none", "no_vocab"):
        return FileIdCodec()
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        return MissingCodec(f"{model} without tokens")
    if len(tokens) > vocab_size:
        raise ValueError(f"the file's vocabulary has {len(tokens)} tokens but the embedding only {vocab_size} rows")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    bos = int(bos) if isinstance(bos, int) and 0 <= bos < len(tokens) else None
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    if model == "gpt2":
        merges = meta.get("tokenizer.ggml.merges")
        if not isinstance(merges, list):
            return MissingCodec("gpt2 without merges")
        return BPECodec(tokens, merges, str(meta.get("tokenizer.ggml.pre", "default")), bos, add_bos)
    if model == "llama":
        scores = meta.get("tokenizer.ggml.scores")
        types = meta.get("tokenizer.ggml.token_type")
        scores = (
            [float(s) for s in scores] if scores is not None and len(scores) == len(tokens) else [0.0] * len(tokens)
        )
        types = [int(t) for t in types] if types is not None and len(types) == len(tokens) else [NORMAL] * len(tokens)
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        return SPMCodec(
            tokens,
            scores,
            types,
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            bos=bos,
            add_bos=add_bos,
            unk=int(unk) if isinstance(unk, int) else None,
        )
    return MissingCodec(str(model))


def is_byte_vocab(meta: dict) -> bool:
    """True for bitnet_ref's byte vocabulary (256 GPT-2 byte characters): text is its bytes, as trained."""
    return meta.get("tokenizer.ggml.model") == "gpt2" and meta.get("tokenizer.ggml.tokens") == byte_chars()
