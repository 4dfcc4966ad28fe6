"""Where training tokens come from: corpora, subword tokenizers and their cache, a run's corpus rebuilt.

Corpora and batches (corpus.py), subword tokenizers and their cache (tokenizer.py), and a run's corpus rebuilt
from what its checkpoint recorded (rebuild.py). Not a data pipeline with workers: one process reads arrays."""
