"""Crash safety: SIGKILL the trainer at random moments and during saves; the checkpoint always loads, the
metrics file never has a torn line in the middle, and ``--resume`` finishes bit-identical to a straight run.

CI runs ``tools/reliability/kill_loop.py`` with ``BITNET_KILL_POINTS`` kill points (default 6: 3 at random delays, 3
inside a checkpoint write widened by a 0.2 s sleep half-way through it). The release check is
``python tools/reliability/kill_loop.py --kills 200`` (see that file for every invariant checked after each kill).
"""

import os

import pytest

from tools.reliability import kill_loop as KL


def test_check_dir_catches_a_torn_line_in_the_middle(tmp_path):
    """The checker itself can fail: a torn line anywhere but last, or a stray file, is reported."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"kind": "header"}\n{"kind": "step", "st\n{"kind": "step", "step": 1}\n')
    with pytest.raises(KL.KillLoopFailure, match="not JSON"):
        KL.check_dir(d, 0)
    (d / "metrics.jsonl").write_text('{"kind": "header"}\n{"kind": "step", "step": 1}\n{"kind": "step", "st')
    assert KL.check_dir(d, 0) == {"ckpt_step": None, "tmp": 0, "torn": True}
    (d / "metrics.jsonl").write_text('{"kind": "header"}\n{"kind": "step", "step": 2}\n')
    with pytest.raises(KL.KillLoopFailure, match="step record 2 where 1 was due"):
        KL.check_dir(d, 0)
    (d / "metrics.jsonl").write_text('{"kind": "header"}\n')
    (d / "ckpt.pt.partial").write_bytes(b"x")
    with pytest.raises(KL.KillLoopFailure, match="unexpected files"):
        KL.check_dir(d, 0)


@pytest.mark.slow
def test_sigkill_loop_then_resume_is_bit_identical(tmp_path):
    kills = int(os.environ.get("BITNET_KILL_POINTS", 6))
    lines = []
    stats = KL.kill_loop(tmp_path, kills, seed=int(os.environ.get("BITNET_KILL_SEED", 0)), log=lines.append)
    print(f"kill loop: {stats}")
    assert stats["kills"] + stats["finished_before_kill"] == kills
    assert stats["kills"] >= kills // 2
    assert stats["tmp_left"] >= 1, lines  # at least one kill really landed inside a checkpoint write
