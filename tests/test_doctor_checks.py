"""The doctor's checks of principle (issue 28): the optimizer against its own configuration, the log reproduced
from the checkpoint (on the log's own windows and batches, with the measurement's error), train against
validation, the decode path against a full recompute, "gets no gradient" followed upstream, and a run that
ended early. Synthetic records where a rule only reads records; the real short run of _decode_ckpt.py (copied,
then edited) where it measures; one small real run each for a crash and for memorisation."""

import json
import math
import shutil

import pytest
import torch
from _decode_ckpt import trained_checkpoint
from test_doctor import HEALTHY_LAYER, as_run, diag, make_records

from bitnet_ref import metrics_log as M
from bitnet_ref.doctor import verdicts as D
from bitnet_ref.doctor.reproduce import measurements, reading
from bitnet_ref.doctor.run import load_run
from bitnet_ref.thresholds import MEASURE_SE_TARGET, REPRO_TOL_FP32
from bitnet_ref.train.schedule import ScheduleConfig, lr_at

TC = dict(steps=100, lr=1.5e-3, lr2=1e-3, warmup=10, wd=0.1, stage2_wd=0.0, stage_split=0.5, grad_clip=1.0)
SCH = ScheduleConfig(steps=100, lr=1.5e-3, lr2=1e-3, warmup=10)


def configured(recs, optimizer=None, **tc):
    """Records whose header carries the configuration the trainer records (and every step a gradient norm)."""
    recs[0]["train_config"] = {**TC, **tc}
    recs[0]["optimizer"] = optimizer or {"name": "AdamW", "betas": [0.9, 0.95], "eps": 1e-8}
    for r in recs:
        if r.get("kind") == "step":
            r["grad_norm"] = 1.0
    return recs


# ---------------------------------------------------------------------------- the optimizer


def test_an_lr_on_its_schedule_is_quiet_and_a_scaled_one_is_named():
    assert diag(configured(make_records(lr=lambda s: lr_at(s - 1, SCH)))).cause is None
    d = diag(configured(make_records(lr=lambda s: 0.01 * lr_at(s - 1, SCH))))
    assert d.cause == "lr_schedule", d.findings
    assert any("never comes near the configured peak" in e for e in d.evidence)
    assert any("the schedule times a constant 0.01" in e for e in d.evidence)


def test_a_warmup_that_never_ends_is_said_as_such():
    d = diag(configured(make_records(lr=lambda s: 1.5e-3 * s / 3000)))
    assert d.cause == "lr_schedule" and any("a warmup that never ends" in e for e in d.evidence), d.evidence


def test_adam_steps_far_below_the_lr_name_what_holds_them_back():
    layer = lambda s: dict(update_ratio=1e-6, grad_rms_zero=1e-4, grad_rms_sat=1e-4) if s else {}  # noqa: E731
    eps = diag(configured(make_records(layer=layer), optimizer={"betas": [0.9, 0.95], "eps": 0.1}))
    assert eps.cause == "optimizer_step" and any("below its eps 0.1" in e for e in eps.evidence), eps.evidence
    clip = diag(configured(make_records(layer=layer), grad_clip=1e-9))  # 1e-4 x 1e-9 per element, eps 1e-8
    assert any("clipping to --grad-clip 1e-09 scales the gradient" in e for e in clip.evidence), clip.evidence
    none = diag(configured(make_records(layer=layer)))
    assert any("nothing in its settings explains it" in e for e in none.evidence), none.evidence
    assert diag(configured(make_records())).cause is None  # healthy: RMS(dw)/lr ~0.13-0.5 here


# ---------------------------------------------------------------------------- root causes


NAMES = ["blocks.0.attn.q_proj", "blocks.0.attn.o_proj", "blocks.1.ffn.gate_proj", "blocks.1.ffn.down_proj"]


def starved(layers: dict, state: dict):
    recs = make_records()
    for r in recs:
        if r.get("kind") == "eval":
            r["layers"] = {n: {**HEALTHY_LAYER, **(layers.get(n, {}) if r["step"] else {})} for n in NAMES}
    run = as_run(recs)
    run.ckpt = {"model": state, "step": 100}
    d = D.diagnose(run)
    assert d.cause == "grad_flow", d.findings
    return [e for e in d.evidence if e.startswith("chain:")]


def test_a_starved_ffn_is_followed_to_its_zero_norm_gain():
    dead = dict(grad_norm=0.0)
    chains = starved(
        {"blocks.1.ffn.gate_proj": dead, "blocks.1.ffn.down_proj": {**dead, "act_in_rms": 0.0}},
        {"blocks.1.ffn.sub_norm.weight": torch.zeros(8)},
    )
    assert any(
        e.startswith("chain: blocks.1.ffn.down_proj gets no gradient (since step 20") and "its input is zero" in e
        for e in chains
    ), chains
    assert any("gate_proj" in e and "through blocks.1.ffn.sub_norm.weight, which is exactly 0" in e for e in chains)


def test_q_proj_starved_by_an_all_zero_o_proj_and_a_layer_cut_at_itself():
    chains = starved(
        {"blocks.0.attn.q_proj": dict(grad_norm=0.0), "blocks.0.attn.o_proj": dict(frac_zero=1.0)},
        {"blocks.0.attn.o_proj.weight": torch.zeros(4, 4)},
    )
    assert any(
        "feeds blocks.0.attn.o_proj, whose ternary codes are all 0 (its weights are exactly 0" in e for e in chains
    )
    chains = starved({"blocks.1.ffn.down_proj": dict(grad_norm=0.0)}, {})
    assert any("the gradient is cut at the layer itself" in e for e in chains), chains


# ---------------------------------------------------------------------------- a run that ended early


def test_a_run_that_crashes_records_its_error_and_the_doctor_says_it_ended_early(tmp_path, monkeypatch):
    from bitnet_ref.train import loop as train

    step = train.TrainingRun.step

    def crash(self, s, *a, **k):
        if s + 1 == 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return step(self, s, *a, **k)

    monkeypatch.setattr(train.TrainingRun, "step", crash)
    argv = ["--preset", "tiny", "--steps", "20", "--batch-size", "4", "--eval-every", "10", "--threads", "1"]
    with pytest.raises(RuntimeError):
        train.main(argv + ["--probe-tokens", "4", "--log-every", "1000", "--out", str(tmp_path / "run")])
    recs = M.read(tmp_path / "run" / "metrics.jsonl").records
    assert recs[0]["optimizer"] == {"name": "AdamW", "adam": True, "betas": [0.9, 0.95], "eps": 1e-8}
    assert recs[-1] == {
        "kind": "stop",
        "step": 4,
        "reason": "error: RuntimeError: CUDA error: an illegal memory access was encountered",
    }
    d = D.diagnose(load_run(tmp_path / "run"))
    assert d.verdict == "incomplete" and "last logged step 3 of 20 planned" in d.evidence[0]
    assert "error: RuntimeError: CUDA error" in d.evidence[0] and "no checkpoint" in d.evidence[0]


# ---------------------------------------------------------------------------- the log against the checkpoint


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    return trained_checkpoint().parent, tmp_path_factory.mktemp("doctor_checks")


def edited(trained_dir, name, edit=None):
    """A copy of the trained run (no decode_probe.json), its metrics.jsonl records passed through ``edit``."""
    src, root = trained_dir
    dst = root / name
    shutil.copytree(src, dst)
    (dst / "decode_probe.json").unlink(missing_ok=True)
    if edit is not None:
        recs = M.read(dst / "metrics.jsonl").records
        edit(recs)
        (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return dst


def last_eval(recs):
    return [r for r in recs if r.get("kind") == "eval"][-1]


def test_the_log_is_reproduced_on_its_own_windows_and_batches(trained_dir):
    run = load_run(edited(trained_dir, "as-is"))
    d = D.diagnose(run)
    assert (d.verdict, d.cause) == ("healthy", None), (d.evidence, d.findings)
    m = d.measurements
    assert m["log_repro_gap"] < REPRO_TOL_FP32 / 100 and abs(m["train_repro_gap"]) < 0.1
    assert m["val_fresh_se"] <= MEASURE_SE_TARGET * 1.2 and m["recompute_rel"] < 1e-5
    assert m["sample_mismatches"] == 0 and any(
        "reproduces the logged val loss on the same windows" in n for n in d.notes
    )


def test_a_log_off_by_a_hundredth_is_seen_on_the_same_windows(trained_dir):
    # 0.01 nats is below the fresh windows' standard error (~0.02): only the paired measurement sees it
    run = load_run(
        edited(trained_dir, "off", lambda recs: last_eval(recs).update(val_loss=last_eval(recs)["val_loss"] + 0.01))
    )
    d = D.diagnose(run)
    assert d.verdict == "log_mismatch" and "on the same windows its evaluation used at step 200" in d.evidence[0]
    assert "difference -0.010" in d.evidence[0] and "No other reading of those windows gives it" in d.evidence[0]


def test_an_evaluation_of_the_training_split_is_named(trained_dir):
    probe = load_run(edited(trained_dir, "probe"))
    on_train = reading(probe, "val", "train").mean
    run = load_run(edited(trained_dir, "on-train", lambda recs: last_eval(recs).update(val_loss=on_train)))
    d = D.diagnose(run)
    assert d.verdict == "log_mismatch" and d.cause == "wrong_split", d.findings
    assert any("evaluation reads the training split" in e for e in d.evidence)


def test_a_logged_training_loss_no_reading_reproduces_is_a_repeating_stream(trained_dir):
    def low(recs):
        for r in [r for r in recs if r.get("kind") == "step"][-40:]:
            r["loss"] = 0.05

    d = D.diagnose(load_run(edited(trained_dir, "low-train", low)))
    assert d.cause == "memorisation", d.findings
    assert any("a pipeline that repeats a small part of the data" in e for e in d.evidence)


def test_logged_samples_that_are_not_the_models_greedy_decode_are_a_decode_mismatch(trained_dir):
    def rotate(recs):
        ev = last_eval(recs)
        ev["samples"] = [s[1:] + s[:1] for s in ev["samples"]]

    d = D.diagnose(load_run(edited(trained_dir, "samples", rotate)))
    assert d.verdict == "decode_mismatch" and d.cause == "cache_mismatch", d.findings
    assert any("the greedy samples the log holds for step 200 are not this checkpoint's" in e for e in d.evidence)


@pytest.mark.slow
def test_a_model_that_memorises_a_small_split_is_told(tmp_path):
    # random letters: the training files can be learned by heart, the validation files not at all
    from bitnet_ref.train import loop as train

    rng = torch.Generator().manual_seed(0)
    data = tmp_path / "letters"
    data.mkdir()
    for i in range(10):
        (data / f"f{i}.txt").write_text("".join(chr(97 + j) for j in torch.randint(26, (150,), generator=rng).tolist()))
    argv = ["--preset", "tiny", "--steps", "200", "--batch-size", "16", "--eval-at", "end", "--threads", "1"]
    assert train.main(argv + ["--data", str(data), "--log-every", "1000", "--out", str(tmp_path / "run")]) == 0
    d = D.diagnose(load_run(tmp_path / "run"))
    assert d.cause == "memorisation" and any("it memorises its training data" in e for e in d.evidence), d.findings
    assert measurements(load_run(tmp_path / "run"))["epochs"] > 10
    assert math.isfinite(d.measurements["train_over_val"])
