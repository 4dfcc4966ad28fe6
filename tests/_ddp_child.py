"""Entry point for test_ddp.py under torchrun: the real ``bitnet_ref.train.loop.main``, plus a record of the batch
each rank feeds its model on each training step (written to ``$BITNET_SHARD_LOG.rank<R>.jsonl``).

Not a test and not a tool: it only exists so the DDP test can prove each rank reads its own shard.
"""

import json
import os
import sys

from bitnet_ref import model as M
from bitnet_ref.train import loop as T

_log = open(f"{os.environ['BITNET_SHARD_LOG']}.rank{os.environ['RANK']}.jsonl", "a", encoding="utf-8")
_forward = M.Transformer.forward


def _recording_forward(self, idx, targets=None, cache=None, **kw):
    if self.training:  # training steps only; eval batches and the probe run in eval mode
        _log.write(json.dumps({"rank": int(os.environ["RANK"]), "idx": idx.tolist()}) + "\n")  # (B/W, T)
        _log.flush()
    return _forward(self, idx, targets, cache, **kw)


M.Transformer.forward = _recording_forward
sys.exit(T.main(sys.argv[1:]))
