"""Health hooks for training loops other than bitnet_ref's: ``watch(model, run_dir, ...)`` (hook.py) in any
PyTorch loop, finding the ternary layers by behaviour or by name (layers.py), and callbacks built on it for the
Hugging Face Trainer (hf.py; TRL's trainers are Trainers) and PyTorch Lightning (lightning.py). They write the
metrics.jsonl that ``bitnet-doctor RUN_DIR`` reads. transformers and lightning are imported only by their module."""

from bitnet_ref.watch.hook import Watch, watch
from bitnet_ref.watch.layers import WatchError, find_ternary

__all__ = ["Watch", "WatchError", "find_ternary", "watch"]
