"""The corpus a run was trained on, rebuilt from what its checkpoint recorded, and checked to be the same."""

from __future__ import annotations

from bitnet_ref.data.corpus import Corpus, DataError, load_corpus


def reload(info: dict) -> Corpus:
    """Rebuild the corpus a checkpoint was trained on (tokenized again when it was) and check it is the same
    data (fingerprint)."""
    vocab = info["vocab_size"] if info.get("kind") == "tokens" else None
    corpus = load_corpus(info.get("path"), vocab, info.get("val_fraction", 0.1))
    tok = info.get("tokenizer")
    if isinstance(tok, dict) and tok.get("spec"):
        from bitnet_ref.data.tokenizer import tokenize_corpus

        corpus = tokenize_corpus(corpus, tok["spec"])
        if corpus.tokenizer.sha256 != tok.get("sha256"):
            raise DataError(
                f"--tokenizer {tok['spec']} now gives another tokenizer (sha256 "
                f"{corpus.tokenizer.sha256[:16]}, the run used {str(tok.get('sha256'))[:16]})"
            )
    if corpus.fingerprint != info.get("fingerprint"):
        raise DataError(
            f"the data at {corpus.source} has changed since the checkpoint was written "
            f"(fingerprint {corpus.fingerprint}, expected {info.get('fingerprint')})"
        )
    return corpus
