"""Training data: corpora (corpus.py), subword tokenizers and their cache (tokenizer.py), and a run's corpus rebuilt
from its checkpoint (rebuild.py)."""
