"""The doctor on the files trainers write (--log, format detected): trainer_state.json, TensorBoard event files
written by the real tensorboard writer, W&B history CSVs; what a log without unique-token figures cannot tell and
the nearest evidence it holds. Bad trainer logs: test_hostile.py."""

import json

import pytest

from bitnet_ref.doctor import foreign_logs
from bitnet_ref.doctor.run import Run
from bitnet_ref.doctor.verdicts import diagnose


def diagnosis(path, **kw) -> dict:
    m, notes = foreign_logs.load(path, **kw)
    run = Run.from_metrics(m, path)
    d = diagnose(run)
    d.notes += notes
    return d.as_dict(run)


def trl_history(n=40, collapse=False):
    """A TRL SFTTrainer's log_history: train rows with entropy and token accuracy, eval rows every 10 steps."""
    rows = []
    for s in range(1, n + 1):
        loss = 4.0 - 2.0 * s / n
        ent = 0.3 if collapse and s > n // 2 else loss * 0.95
        rows.append(
            {
                "loss": loss,
                "grad_norm": 1.0,
                "learning_rate": 1e-4,
                "entropy": ent,
                "mean_token_accuracy": 0.2 + 0.4 * s / n,
                "num_tokens": 512.0 * s,
                "epoch": s / n,
                "step": s,
            }
        )
        if s % 10 == 0:
            rows.append({"eval_loss": loss + 0.1, "eval_runtime": 1.0, "epoch": s / n, "step": s})
    return rows


def write_state(tmp_path, history, config=None, name="trainer_state.json"):
    d = tmp_path / "checkpoint-40"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps({"global_step": 40, "log_history": history, "best_metric": None}))
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d / name


def test_trainer_state_with_trl_figures(tmp_path):
    p = write_state(tmp_path, trl_history(), config={"model_type": "bitnet", "vocab_size": 32000})
    d = diagnosis(p)
    assert d["verdict"] == "healthy" and d["evidence"][0].startswith("final val loss 2.100 nats (ln(V) 10.373")
    assert any("eval_loss stands in for the val loss" in n for n in d["notes"])
    assert any(
        n.startswith("no unique-token figures: diversity_collapse and transient_dip cannot be judged")
        for n in d["notes"]
    )
    assert any("TRL's entropy) went 3.752 -> 1.900 nats" in n for n in d["notes"]), d["notes"]
    assert not any("far sharper than they are right" in n for n in d["notes"])
    assert any("mean token accuracy (TRL) went 0.210 -> 0.600" in n for n in d["notes"])
    assert diagnosis(p.parent)["evidence"] == d["evidence"]  # the checkpoint directory works too


def test_overconfident_predictions_are_nearest_evidence_not_a_verdict(tmp_path):
    d = diagnosis(write_state(tmp_path, trl_history(collapse=True)), vocab_size=32000)
    assert d["verdict"] == "healthy"  # the loss alone supports no other verdict
    assert any(
        "far sharper than they are right (entropy 0.300 nats < 0.5 x the train loss 2.000)" in n for n in d["notes"]
    ), d["notes"]


def test_tensorboard_events_from_the_real_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "runs" / "a"))
    w.add_text("model_config", json.dumps({"vocab_size": 256}), 0)
    for s in range(1, 41):
        w.add_scalar("train/loss", 5.0 - 0.05 * s, s)
        w.add_scalar("train/learning_rate", 1e-3, s)
        if s % 10 == 0:
            w.add_scalar("train/bitnet/val_loss", 5.1 - 0.05 * s, s)
            w.add_scalar("train/bitnet/unique_tokens", {10: 20, 20: 18, 30: 6, 40: 2}[s], s)
            w.add_scalar("train/bitnet/unigram_entropy", 4.5, s)
    w.close()
    d = diagnosis(tmp_path / "runs")
    assert d["verdict"] == "diversity_collapse", d
    assert "unique tokens: 20@10, 18@20, 6@30, 2@40" in d["evidence"]
    assert d["evidence"][0].startswith("final val loss 3.100 nats (ln(V) 5.545, unigram entropy 4.500")
    assert any("unigram entropy 4.500 nats as bitnet_ref.watch measured it" in n for n in d["notes"])


WANDB_HISTORY = """_step,_runtime,_timestamp,train/global_step,train/loss,train/learning_rate,eval/loss,train/epoch
0,1.0,1700000000,1,4.0,0.001,,0.1
1,2.0,1700000001,2,3.9,0.001,,0.2
2,3.0,1700000002,2,,,3.95,0.2
3,4.0,1700000003,3,3.8,0.001,,0.3
4,5.0,1700000004,4,3.7,0.001,,0.4
5,6.0,1700000005,4,,,3.75,0.4
"""
WANDB_CHART = """Step,fancy-run-3 - train/loss,fancy-run-3 - train/loss__MIN,fancy-run-3 - train/loss__MAX
1,4.0,4.0,4.0
2,3.9,3.9,3.9
3,3.8,3.8,3.8
"""


@pytest.mark.parametrize("text, val", [(WANDB_HISTORY, "3.750"), (WANDB_CHART, "3.800")])
def test_wandb_exports(tmp_path, text, val):
    p = tmp_path / "wandb_export.csv"
    p.write_text(text)
    d = diagnosis(p, vocab_size=256)
    assert d["evidence"][0].startswith(f"final val loss {val} nats"), d
    assert any("as a W&B export" in n for n in d["notes"])
