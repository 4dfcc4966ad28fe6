"""The doctor on logs of runs trained elsewhere (bitnet_ref/doctor/foreign_logs.py): the debugging report's own
tables, other formats, column mapping, and bad logs."""

import json
import subprocess
import sys

import pytest

from bitnet_ref.doctor import foreign_logs as runlog
from bitnet_ref.doctor.command import main as doctor_main

# the debugging report's tables (docs/modules.md says what it was), as its author pasted them: vocab 50257
REPORT_STANDARD_LR = """\
| Step | Unique Tokens | Loss | LR | Notes |
|------|---------------|------|-----|-------|
| 1 | 20 | 11.02 | 0.000004 | Healthy start |
| 1,000 | 19 | 10.82 | 0.001479 | Minimal loss (-1 token) |
| 2,000 | 9 | 10.82 | 0.001444 | Major loss (-10 tokens, 53%) |
| 3,000 | 4 | 10.23 | 0.001410 | Severe (-5 tokens, 56%) |
| 4,000 | 2 | 10.25 | 0.001376 | **COLLAPSED** |
"""
REPORT_REDUCED_LR = """\
| Step | Unique Tokens | Loss | LR |
|------|---------------|------|-----|
| 1 | 20 | 10.98 | 0.000001 |
| 1,000 | 3 | 9.89 | 0.000477 | **Collapsed FASTER than standard LR** |
| 2,000 | 10 | 10.73 | 0.000441 | **Recovered to 10 tokens!** |
"""


def diagnose_log(tmp_path, text, name="log.md", *args):
    p = tmp_path / name
    p.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "bitnet_ref.doctor", "--log", str(p), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_report_standard_lr_run_with_only_the_vocabulary(tmp_path):
    # 0.947 ln V after 4000 steps, 3000 of them at the peak LR: it never left the uniform phase, whatever its
    # samples do (issue 28: what the step count and the vocabulary imply, said as an inference)
    d = diagnose_log(tmp_path, REPORT_STANDARD_LR, "report.md", "--vocab-size", "50257")
    assert d["verdict"] == "not_learning" and d["cause"] is None
    assert "unique tokens: 20@1, 19@1000, 9@2000, 4@3000, 2@4000" in d["evidence"][2]
    assert d["evidence"][0].startswith("final val loss 10.250 nats (ln(V) 10.825, unigram entropy n/a")
    assert d["evidence"][1].startswith("never left the uniform phase: the loss is still 0.947 x ln V")
    assert "after 3000 steps at a working LR" in d["evidence"][1]
    assert any(n.startswith("an inference (no unigram entropy given") for n in d["notes"])
    assert any(n.startswith("unigram entropy unknown") for n in d["notes"])
    assert any("need per-layer health metrics" in n for n in d["notes"])
    assert "no val_loss column: the train loss stands in for it" in d["notes"]


def test_report_standard_lr_run_is_stuck_at_unigram_level_once_its_unigram_entropy_is_known(tmp_path):
    # English GPT-2 tokens have a unigram entropy of several nats below ln V: a loss of 10.25 is far above it
    d = diagnose_log(tmp_path, REPORT_STANDARD_LR, "report.md", "--vocab-size", "50257", "--unigram-entropy", "7.5")
    assert d["verdict"] == "stuck_unigram"
    assert d["evidence"][0].startswith("final val loss 10.250 nats (ln(V) 10.825, unigram entropy 7.500")


def test_report_reduced_lr_run_is_not_learning(tmp_path):
    d = diagnose_log(tmp_path, REPORT_REDUCED_LR, "report-lr3.md", "--vocab-size", "50257")
    assert d["verdict"] == "not_learning"  # 10.73 >= NEAR_LN_V_FRAC x 10.825
    assert d["evidence"][0].startswith("final val loss 10.730 nats (ln(V) 10.825")


def test_a_short_log_near_ln_v_is_too_early_to_call(tmp_path):
    # the same numbers over 400 steps: healthy runs leave ln V within ~50 steps, but 400 is short of the
    # doctor's LN_V_EXIT_STEPS margin, so the step count implies nothing yet
    short = REPORT_STANDARD_LR.replace("1,000", "100").replace("2,000", "200").replace("3,000", "300")
    d = diagnose_log(tmp_path, short.replace("4,000", "400"), "short.md", "--vocab-size", "50257")
    assert d["verdict"] != "not_learning" and not any("uniform phase" in e for e in d["evidence"])


def test_formats_and_column_mapping_agree(tmp_path):
    rows = [(1, 20, 11.02), (1000, 19, 10.82), (2000, 9, 10.82), (3000, 4, 10.23), (4000, 2, 10.25)]
    csv_text = "iter,train_loss_avg,uniq\n" + "".join(f"{s},{l},{u}\n" for s, u, l in rows)
    tsv_text = "step\tloss\tunique_tokens\n" + "".join(f"{s}\t{l}\t{u}\n" for s, u, l in rows)
    jsonl = "".join(
        json.dumps({"train/global_step": s, "train/loss": l, "unique tokens": u}) + "\n" for s, u, l in rows
    )
    verdicts = [
        diagnose_log(
            tmp_path, csv_text, "a.csv", "--vocab-size", "50257", "--columns", "step=iter,loss=train_loss_avg"
        ),
        diagnose_log(tmp_path, tsv_text, "b.tsv", "--vocab-size", "50257"),
        diagnose_log(tmp_path, jsonl, "c.jsonl", "--vocab-size", "50257", "--columns", "step=train/global_step"),
    ]
    assert {d["verdict"] for d in verdicts} == {"not_learning"}
    assert len({tuple(d["evidence"]) for d in verdicts}) == 1


def test_val_loss_and_train_loss_are_kept_apart():
    recs = runlog._records(5, {"loss": 2.0, "val_loss": 2.5, "unique_tokens": 7.0}, True)
    assert recs == [
        {"kind": "step", "step": 5, "loss": 2.0},
        {"kind": "eval", "step": 5, "val_loss": 2.5, "unique_tokens": 7.0},
    ]


def test_a_nan_loss_is_diverged(tmp_path):
    d = diagnose_log(tmp_path, "step,loss\n1,5.0\n2,4.0\n3,nan\n", "n.csv", "--vocab-size", "256")
    assert d["verdict"] == "diverged"


def test_unigram_entropy_from_data(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("abcabcabd" * 200)
    d = diagnose_log(tmp_path, REPORT_STANDARD_LR, "report.md", "--vocab-size", "256", "--data", str(data))
    assert "unigram entropy 1.31" in d["evidence"][0]  # a, b: 1/3 each; c: 2/9; d: 1/9 -> 1.311 nats


@pytest.mark.parametrize(
    "text, name, args, match",
    [
        ("epoch,acc\n1,0.5\n", "x.csv", [], "no usable columns"),
        ("step,loss\n1,abc\n", "x.csv", [], "'abc' is not a number"),
        ("step,loss\n2,5.0\n1,4.0\n", "x.csv", [], "does not come after step 2"),
        ("step,loss\n1,5.0\n1,4.0\n", "x.csv", [], "does not come after step 1"),
        ("", "x.csv", [], "no usable columns"),
        ('{"step": 1, "loss": 2}\nnot json\n', "x.jsonl", [], "line 2 is not JSON"),
        ("step,loss\n1,5.0\n", "x.csv", ["--columns", "loss=nope"], "no such column"),
        ("step,loss\n1,5.0\n", "x.csv", ["--columns", "bogus=loss"], "--columns takes OURS=THEIRS"),
        ("step,loss\n1,5.0\n", "x.csv", ["--vocab-size", "1"], "--vocab-size must be at least 2"),
        ("step,loss\n1,5.0\n", "x.csv", ["--unigram-entropy", "nan"], "--unigram-entropy must be a positive"),
    ],
)
def test_bad_logs_get_one_line(tmp_path, capsys, text, name, args, match):
    p = tmp_path / name
    p.write_text(text)
    assert doctor_main(["--log", str(p), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and match in err, err


def test_missing_log_and_both_sources(tmp_path, capsys):
    assert doctor_main(["--log", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        doctor_main([str(tmp_path), "--log", str(tmp_path / "x.csv")])
    assert e.value.code == 2 and "one of them" in capsys.readouterr().err
