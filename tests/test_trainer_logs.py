"""The doctor on the files trainers write (--log, format detected): trainer_state.json, TensorBoard event files
written by the real tensorboard writer, W&B history CSVs; what a log without unique-token figures cannot tell and
the nearest evidence it holds; and every kind of bad file as one line, exit 2 (docs/reliability.md's table)."""

import json
import os

import pytest

from bitnet_ref.doctor import foreign_logs
from bitnet_ref.doctor.command import main as doctor_main
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


# ---------------------------------------------------------------------------------------------- bad files


def bad_files(tmp_path):
    """{what: path} for every kind of bad trainer log."""
    from torch.utils.tensorboard import SummaryWriter

    out = {}
    out["no log_history"] = write_state(tmp_path / "a", [])
    json.loads(out["no log_history"].read_text())
    out["no log_history"].write_text(json.dumps({"global_step": 3}))
    out["state not JSON"] = write_state(tmp_path / "b", [])
    out["state not JSON"].write_text("{not json")
    out["state steps go back"] = write_state(tmp_path / "c", [{"loss": 1.0, "step": 5}, {"loss": 1.0, "step": 2}])
    out["state without a loss"] = write_state(tmp_path / "d", [{"train_runtime": 3.0, "step": 5}])
    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(50):
        w.add_scalar("train/loss", 1.0, s)
    w.close()
    [good] = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    data = good.read_bytes()
    out["truncated events"] = tmp_path / "cut" / good.name
    out["truncated events"].parent.mkdir()
    out["truncated events"].write_bytes(data[: len(data) // 2 + 5])
    out["events from another tool"] = tmp_path / "other" / "events.out.tfevents.123.host"
    out["events from another tool"].parent.mkdir()
    out["events from another tool"].write_bytes(os.urandom(2000))
    out["events damaged"] = tmp_path / "dmg" / good.name
    out["events damaged"].parent.mkdir()
    out["events damaged"].write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    out["no event files"] = tmp_path / "empty"
    out["no event files"].mkdir()
    out["two runs"] = tmp_path / "two"
    for r in ("x", "y"):
        SummaryWriter(str(tmp_path / "two" / r)).close()
    out["wandb no usable column"] = tmp_path / "w.csv"
    out["wandb no usable column"].write_text("_step,_runtime,system/gpu\n0,1.0,3\n1,2.0,4\n")
    return out


EXPECT = {
    "no log_history": "no log_history list",
    "state not JSON": "not a JSON file",
    "state steps go back": "goes back from step 5 to step 2",
    "state without a loss": "no step with a loss",
    "truncated events": "truncated",
    "events from another tool": "not a TensorBoard event file",
    "events damaged": "damaged",
    "no event files": "no TensorBoard event files",
    "two runs": "holds the event files of 2 runs",
    "wandb no usable column": "a W&B export with no usable column",
}


def test_bad_trainer_logs_are_one_line_exit_2(tmp_path, capsys):
    files = bad_files(tmp_path)
    assert set(files) == set(EXPECT)
    for what, path in files.items():
        rc = doctor_main(["--log", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (what, err)
        assert EXPECT[what] in err and "Traceback" not in err, (what, err)
