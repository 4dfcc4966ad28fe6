"""The doctor: rules on synthetic metric records, the CLI on bad input, and real short runs (one per ablation)."""

import json
import math
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from bitnet_ref import metrics_log as metrics
from bitnet_ref.doctor import verdicts as D
from bitnet_ref.doctor.command import main as doctor_main
from bitnet_ref.doctor.run import Run, load_run
from bitnet_ref.thresholds import MEASURE_MAX_TOKENS, MEASURE_SE_TARGET, REPETITIVE_TOP_SHARE

LN_V, UNI = math.log(256), 3.23

HEALTHY_LAYER = dict(
    frac_neg=0.35,
    frac_zero=0.31,
    frac_pos=0.34,
    beta=0.016,
    w_rms=0.02,
    near_thr=0.06,
    grad_norm=0.1,
    grad_dead_zero=0.05,
    grad_dead_sat=0.05,
    grad_dead_clip=0.05,
    update_ratio=0.01,
    act_in_rms=1.0,
    out_ratio=0.62,
)


def make_records(
    steps=100, every=20, val=None, unique=None, layer=None, flips=None, wd=None, lr=None, top_share=None, extra=None
):
    """A header, one step record per step and an eval record every `every` steps, like the trainer writes.

    val(step), unique(step), layer(step) -> dict of per-layer fields, flips(step) -> flip rate (share since
    the previous eval), wd(step), lr(step) override the healthy defaults.
    """
    val = val or (lambda s: 5.5 - 2.7 * (1 - math.exp(-s / 25)))  # 5.5 -> ~2.85
    unique = unique or (lambda s: 20 if s == 0 else 8)
    layer = layer or (lambda s: {})
    flips = flips or (lambda s: 0.3 * math.exp(-s / 30))
    lr = lr or (lambda s: 1.5e-3 if s <= steps // 2 else 1e-3 * (steps - s) / (steps / 2))
    wd = wd or (lambda s: 0.1 * 0.5 * (1 + math.cos(math.pi * s / (steps / 2))) if s <= steps // 2 else 0.0)
    recs = [
        {
            "kind": "header",
            "config": {"d_model": 64, "vocab_size": 256},
            "train_config": {"steps": steps},
            "ln_vocab": LN_V,
            "unigram_entropy": UNI,
        }
    ]
    for s in range(0, steps + 1):
        if s > 0:
            recs.append({"kind": "step", "step": s, "loss": val(s) + 0.05, "lr": lr(s), "wd": wd(s), "tok_s": 1e4})
        if s % every == 0:
            lay = {
                **HEALTHY_LAYER,
                "flip_rate": flips(s) if s else None,
                "flip_steps": every if s else None,
                **layer(s),
            }
            if s == 0:
                lay.update(
                    dict.fromkeys(("grad_norm", "grad_dead_zero", "grad_dead_sat", "grad_dead_clip", "update_ratio"))
                )
            rec = {
                "kind": "eval",
                "step": s,
                "val_loss": val(s),
                "unique_tokens": unique(s),
                "top_token_share": (top_share or (lambda s: 0.3))(s),
                "layers": {"l0": lay, "l1": dict(lay)},
            }
            for k, v in lay.items():
                if k != "flip_steps":
                    rec[f"health_{k}"] = v
            rec.update({"health_embed_levels": 63.0, "health_logit_lattice": 0.05, **(extra or {})})
            recs.append(rec)
    recs.append({"kind": "end", "step": steps, "val_loss": val(steps)})
    return recs


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def as_run(records) -> Run:
    """The Run that load_run makes of a metrics.jsonl holding these records (no checkpoint, no probe report)."""
    return Run.from_metrics(metrics.parse(jsonl(records).encode()), "<records>")


def diag(records, baseline=None, probe=None):
    run = as_run(records)
    run.probe = probe
    base = as_run(baseline) if baseline is not None else None
    return D.diagnose(run, base)


# ---------------------------------------------------------------------------- verdicts


def test_healthy_run():
    d = diag(make_records())
    assert (d.verdict, d.cause, d.findings) == ("healthy", None, [])


def test_not_learning_when_loss_stays_near_ln_vocab():
    d = diag(make_records(val=lambda s: 5.5))
    assert d.verdict == "not_learning"


def test_stuck_at_unigram_without_baseline_says_so():
    d = diag(make_records(val=lambda s: 5.5 - 2.3 * (1 - math.exp(-s / 10))))  # ends ~3.2
    assert d.verdict == "stuck_unigram"
    assert any("no FP baseline" in n for n in d.notes)


def test_stuck_at_unigram_needs_the_baseline_to_do_better():
    stuck = make_records(val=lambda s: 5.5 - 2.3 * (1 - math.exp(-s / 10)))
    assert diag(stuck, baseline=make_records()).verdict == "stuck_unigram"  # baseline reaches ~2.85
    assert diag(stuck, baseline=stuck).verdict != "stuck_unigram"  # FP does no better: not the ternary layers


def test_diversity_collapse_past_the_unigram_phase():
    d = diag(make_records(unique=lambda s: {0: 20, 20: 9, 40: 12, 60: 6, 80: 3, 100: 2}[s], top_share=lambda s: 0.9))
    assert d.verdict == "diversity_collapse"


def test_a_fall_between_tiny_counts_is_noise():
    d = diag(make_records(unique=lambda s: {0: 20, 20: 3, 40: 2, 60: 3, 80: 1, 100: 3}[s]))
    assert d.verdict == "healthy"


def test_transient_dip_recovered():
    d = diag(make_records(unique=lambda s: {0: 20, 20: 3, 40: 8, 60: 12, 80: 4, 100: 11}[s]))
    assert d.verdict == "transient_dip"


def test_a_dip_within_the_probe_counting_noise_is_no_dip():
    # 8 -> 4 -> 7 (a healthy tiny run probed with 96 tokens): half, but (8 - 4) / sqrt(12) = 1.15 < DIP_Z
    d = diag(make_records(unique=lambda s: {0: 20, 20: 3, 40: 5, 60: 8, 80: 4, 100: 7}[s]))
    assert d.verdict == "healthy"


def test_dip_during_the_unigram_phase_is_a_note_not_a_verdict():
    # the debugging report's pattern at small scale: random init is "diverse", the unigram phase repeats one token
    val = lambda s: {0: 5.6, 20: 3.5, 40: 2.95, 60: 2.85, 80: 2.82, 100: 2.8}[s] if s % 20 == 0 else 3.0
    d = diag(make_records(val=val, unique=lambda s: {0: 20, 20: 1, 40: 2, 60: 3, 80: 4, 100: 5}[s]))
    assert d.verdict == "healthy"
    assert any("unigram phase" in n for n in d.notes)


def test_incomplete_run_is_said_and_judged_only_on_its_records():
    recs = [
        r
        for r in make_records(val=lambda s: 5.5 - 2.7 * (1 - math.exp(-s / 10)))
        if r.get("kind") != "end" and (r.get("kind") != "eval" or r["step"] == 0) and r.get("step", 0) <= 60
    ]
    d = diag(recs)  # only the step-0 eval (5.5) is there; the train loss has long fallen below unigram level
    assert d.verdict == "incomplete" and d.evidence[0].startswith("the run ended early: last logged step 60 of 100")
    assert any("judged only on what its records hold" in n and "it was learning when it ended" in n for n in d.notes)


def test_a_crash_after_the_first_eval_is_incomplete_with_its_error_not_not_learning():
    recs = [r for r in make_records() if r.get("kind") == "header" or (r.get("step", 99) <= 2 and r["kind"] != "end")]
    recs.append({"kind": "stop", "step": 3, "reason": "error: RuntimeError: CUDA error: an illegal memory access"})
    d = diag(recs)
    assert d.verdict == "incomplete" and "error: RuntimeError: CUDA error" in d.evidence[0], d.evidence
    assert any("too early to say whether it learns" in n for n in d.notes)


def test_repetitive_greedy_output_is_a_note_not_a_verdict():
    d = diag(make_records(top_share=lambda s: REPETITIVE_TOP_SHARE))
    assert d.verdict == "healthy" and any("repetitive" in n for n in d.notes)
    d = diag(make_records(top_share=lambda s: REPETITIVE_TOP_SHARE - 0.01))
    assert not any("repetitive" in n for n in d.notes)


def test_diverged_on_nonfinite_loss():
    recs = make_records()
    recs[30]["loss"] = None  # the trainer writes non-finite values as null, then a stop record
    recs.append({"kind": "stop", "step": 30, "reason": "non-finite loss"})
    d = diag(recs)
    assert d.verdict == "diverged" and "non-finite" in d.evidence[0]


def test_diverged_on_blow_up():
    d = diag(make_records(val=lambda s: 3.0 if s < 70 else 3.0 + (s - 70) * 0.2))
    assert d.verdict == "diverged"


# ---------------------------------------------------------------------------- causes


@pytest.mark.parametrize(
    "layer, cause",
    [
        (
            lambda s: dict(grad_norm=0.0, grad_dead_zero=1.0, grad_dead_sat=1.0, grad_dead_clip=1.0) if s else {},
            "missing_ste",
        ),
        (lambda s: dict(grad_dead_clip=1.0, grad_dead_sat=0.4, grad_dead_zero=0.15) if s else {}, "clamp_ste"),
        (lambda s: dict(out_ratio=1800.0), "missing_dequant"),
        (lambda s: dict(out_ratio=0.016), "missing_dequant"),
        (lambda s: dict(act_in_rms=0.03), "no_subln"),
        (lambda s: dict(frac_zero=0.7, frac_neg=0.15, frac_pos=0.15), "zero_drift"),
        (lambda s: dict(frac_zero=0.02, frac_neg=0.49, frac_pos=0.49), "zero_drift"),
    ],
)
def test_cause_from_layer_stats(layer, cause):
    d = diag(make_records(layer=layer))
    assert d.cause == cause, d.evidence
    assert d.verdict == "faulty"  # the loss itself looks fine here


def test_clamp_rule_needs_a_contrast_with_zero_codes():
    # dead gradients everywhere alike (all-zero input columns) are not the clamp bug
    d = diag(
        make_records(layer=lambda s: dict(grad_dead_clip=0.95, grad_dead_zero=0.9, grad_dead_sat=0.9) if s else {})
    )
    assert d.cause != "clamp_ste"


def test_quant_head_from_embedding_levels_or_logit_lattice():
    assert diag(make_records(extra=dict(health_embed_levels=3.0))).cause == "quant_head"
    assert diag(make_records(extra=dict(health_logit_lattice=0.97))).cause == "quant_head"


def test_const_wd_from_weight_decay_in_stage_two():
    d = diag(make_records(wd=lambda s: 0.1))
    assert d.cause == "const_wd"
    assert any("stage-2" in e for e in d.evidence)


def test_const_wd_without_a_stage_two():
    lr = lambda s: 1.5e-3 * (1 - s / 200)  # stage 1 only: no drop
    assert diag(make_records(lr=lr, wd=lambda s: 0.1)).cause == "const_wd"
    assert diag(make_records(lr=lr, wd=lambda s: 0.05 * (1 + math.cos(math.pi * s / 100)))).cause is None


def test_flip_rate_that_rises_is_a_cause_a_plateau_only_a_note():
    rising = diag(make_records(every=10, flips=lambda s: 0.05 + 0.002 * s))
    assert rising.cause == "flip_not_falling"
    plateau = diag(make_records(every=10, flips=lambda s: 0.3 if s < 30 else 0.1))
    assert plateau.cause is None and any("plateaus" in n for n in plateau.notes)
    falling = diag(make_records(every=10, flips=lambda s: 0.3 * math.exp(-s / 30)))
    assert falling.cause is None and not any("plateaus" in n for n in falling.notes)
    assert diag(make_records(every=20, flips=lambda s: 0.05 + 0.002 * s)).cause is None  # 5 intervals: too few


def test_parity_failure_from_decode_probe():
    probe = {"parity": {"ok": False, "tokens_identical": False, "max_rel_logit_diff": 0.4, "rel_tol": 1e-3}}
    d = diag(make_records(), probe=probe)
    assert d.cause == "parity_mismatch"
    assert diag(make_records(), probe={"parity": {"ok": True}}).cause is None


def test_all_causes_are_listed_and_the_first_is_the_cause():
    d = diag(make_records(layer=lambda s: dict(act_in_rms=0.03, out_ratio=1800.0)))
    assert [f["cause"] for f in d.findings] == ["missing_dequant", "no_subln"]
    assert d.cause == "missing_dequant"


# ---------------------------------------------------------------------------- CLI and input handling


def write_run(tmp_path, records, tail=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "metrics.jsonl").write_text(jsonl(records) + tail)
    return tmp_path


def test_cli_text_and_json_agree(tmp_path, capsys):
    run = write_run(tmp_path / "run", make_records(layer=lambda s: dict(act_in_rms=0.03)))
    assert doctor_main([str(run)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("verdict: faulty") and "cause:   no_subln" in text and "0.030" in text
    assert doctor_main([str(run), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == "faulty" and obj["cause"] == "no_subln" and obj["evidence"]


def test_cli_tolerates_a_torn_last_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", make_records(), tail='{"kind": "step", "step": 101, "lo')
    assert doctor_main([str(run), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == "healthy" and any("torn" in n for n in obj["notes"])


def test_cli_with_baseline(tmp_path, capsys):
    stuck = write_run(tmp_path / "stuck", make_records(val=lambda s: 5.5 - 2.3 * (1 - math.exp(-s / 10))))
    base = write_run(tmp_path / "fp", make_records())
    assert doctor_main([str(stuck), "--baseline", str(base), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "stuck_unigram"


@pytest.mark.parametrize(
    "name, content, msg",
    [
        ("nope", None, "no such run directory"),
        ("file", "x", "not a directory"),
        ("empty_dir", {}, "no metrics.jsonl"),
        ("empty_file", {"metrics.jsonl": ""}, "no training records"),
        ("garbage", {"metrics.jsonl": 'garbage\n[1,2]\n{"a": 1}\n'}, "no training records"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, name, content, msg):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        path.mkdir()
        for f, text in content.items():
            (path / f).write_text(text)
    assert doctor_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_cli_bad_baseline_is_exit_2(tmp_path, capsys):
    run = write_run(tmp_path / "run", make_records())
    assert doctor_main([str(run), "--baseline", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_cli_piped_into_a_reader_that_stops_early_is_quiet(tmp_path):
    # `python -m bitnet_ref.doctor RUN | head -1`: a config line far larger than a pipe's buffer (64 KiB), so the
    # doctor is still writing when the reader goes away
    recs = make_records()
    recs[0]["config"]["note"] = "x" * (1 << 20)
    run = write_run(tmp_path / "run", recs)
    p = subprocess.Popen(
        [sys.executable, "-m", "bitnet_ref.doctor", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0 and err == b"", err.decode()
    assert first.startswith(b"verdict: healthy")


# ---------------------------------------------------------------------------- real short runs

# Tiny model, 80 steps: every ablation's signature is there from the first evaluation; the reference run's
# val loss ends well under the unigram entropy. Runs go two at a time in fresh processes (the trainer's CLI).
REAL_ARGS = (
    "--preset tiny --steps 80 --batch-size 16 --warmup 8 --eval-every 20 "
    "--eval-batches 2 --probe-prompts 2 --probe-tokens 24 --threads 1 --log-every "
    "1000000"
).split()
ABLATION_CAUSES = {
    "no-ste": "missing_ste",
    "clamp-ste": "clamp_ste",
    "quant-head": "quant_head",
    "no-subln": "no_subln",
    "no-dequant": "missing_dequant",
    "const-wd": "const_wd",
}


def _train_quietly(argv):
    import contextlib
    import io

    from bitnet_ref.train import loop as train

    with contextlib.redirect_stdout(io.StringIO()):
        return train.main(argv)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor_runs")
    arms = {"ref": [], **{a: ["--ablate", a] for a in ABLATION_CAUSES}}
    jobs = {name: REAL_ARGS + extra + ["--out", str(root / name)] for name, extra in arms.items()}
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        codes = dict(zip(jobs, pool.map(_train_quietly, jobs.values())))
    assert all(c == 0 for c in codes.values()), codes
    return {name: D.diagnose(load_run(root / name)) for name in arms}


@pytest.mark.slow
def test_real_reference_run_is_healthy(real_runs):
    d = real_runs["ref"]
    assert (d.verdict, d.cause) == ("healthy", None), d.evidence


@pytest.mark.slow
@pytest.mark.parametrize("ablation", sorted(ABLATION_CAUSES))
def test_real_ablation_cause_is_named(real_runs, ablation):
    d = real_runs[ablation]
    assert d.cause == ABLATION_CAUSES[ablation], (d.verdict, d.findings)
    assert d.verdict != "healthy"


def test_zero_drift_from_the_checkpoint_when_metrics_have_no_health(tmp_path, capsys):
    import dataclasses

    import torch

    from bitnet_ref.checkpoint import save_checkpoint
    from bitnet_ref.model import ModelConfig, Transformer

    plain = [{k: v for k, v in r.items() if k != "layers" and not k.startswith("health_")} for r in make_records()]
    run = write_run(tmp_path / "run", plain)
    cfg = ModelConfig.preset("tiny")
    state = Transformer(cfg).state_dict()
    for name, t in state.items():
        if t.dim() == 2 and t.shape[0] != cfg.vocab_size:  # block matrices: 90% tiny, 10% large -> ~90% zeros
            mask = torch.rand(t.shape) < 0.1
            state[name] = torch.where(mask, torch.full_like(t, 1.0), torch.full_like(t, 1e-4))
    save_checkpoint(run / "ckpt.pt", {"config": dataclasses.asdict(cfg), "model": state, "step": 100})
    assert doctor_main([str(run), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["cause"] == "zero_drift" and any("ckpt.pt" in e for e in obj["evidence"])


# ---------------------------------------------------------------------------- issue 13: log, gradient, numbers


def _groups(**over):
    g = {
        k: {"grad_norm": 0.5, "grad_zero": 0.01, "update_ratio": r, "numel": 1000}
        for k, r in (("latent", 3e-3), ("norm", 1e-4), ("embed", 2e-3), ("head", 2e-3))
    }
    for k, v in over.items():
        g[k] = {**g[k], **v}
    return g


def test_implausibly_good_logged_loss_is_its_own_verdict():
    d = diag(make_records(val=lambda s: 5.5 * math.exp(-s / 10) + 0.02))
    assert d.verdict == "implausible_loss" and "implausibly good" in d.evidence[0]


def test_decode_probe_measured_loss_far_from_the_log_is_log_mismatch():
    probe = {"context": {"step": 100, "val_loss_measured": 8.35}, "verdict": {"verdict": "not learning"}}
    d = diag(make_records(), probe=probe)
    assert d.verdict == "log_mismatch" and "8.350" in d.evidence[0] and "2.8" in d.evidence[0]
    ok = {"context": {"step": 100, "val_loss_measured": 2.9}}
    assert diag(make_records(), probe=ok).verdict == "healthy"


def test_every_sample_repeating_its_own_token_with_top1_near_one_is_collapse():
    d = diag(make_records(extra=dict(min_sample_top_share=1.0, health_top1=0.99)))
    assert d.verdict == "diversity_collapse" and any("every greedy sample" in e for e in d.evidence)
    # a weak model's greedy loops (unigram phase, "te te te") are not: its top-1 is low
    assert diag(make_records(extra=dict(min_sample_top_share=1.0, health_top1=0.4))).verdict == "healthy"
    assert (
        diag(make_records(), probe={"verdict": {"verdict": "collapsed", "reason": "x"}}).verdict == "diversity_collapse"
    )


@pytest.mark.parametrize(
    "layer, groups, needle",
    [
        (None, _groups(norm=dict(grad_norm=0.0, grad_zero=1.0, update_ratio=0.0)), "group norm gets no gradient"),
        (None, _groups(latent=dict(update_ratio=0.0)), "group latent: update ratio"),
        (lambda s: dict(grad_zero=0.71) if s else {}, _groups(), "exactly zero"),
    ],
)
def test_grad_flow_says_where_the_flow_stops(layer, groups, needle):
    d = diag(make_records(layer=layer, extra={"groups": groups}))
    assert d.cause == "grad_flow", d.findings
    assert any(needle in e for e in d.evidence), d.evidence


def test_grad_flow_quiet_on_healthy_groups_and_one_layer_of_dead_relus():
    rec = make_records(extra={"groups": _groups()})
    rec[-2]["layers"]["l1"]["grad_zero"] = 0.4  # one FFN layer with dead ReLU^2 units
    assert diag(rec).cause is None


def test_grad_flow_against_the_fp_twin():
    base = make_records(extra={"groups": _groups(latent=dict(update_ratio=8e-3))})
    low = make_records(
        extra={
            "groups": _groups(
                latent=dict(update_ratio=2e-6),
                norm=dict(update_ratio=1e-6),
                embed=dict(update_ratio=1e-6),
                head=dict(update_ratio=1e-6),
            )
        }
    )
    assert diag(low).cause is None  # every group equally slow: no contrast inside the run
    d = diag(low, baseline=base)
    assert d.cause == "grad_flow" and any("FP twin" in e for e in d.evidence)


def test_coarse_float_logits_are_not_a_quantized_head():
    d = diag(make_records(extra=dict(health_logit_lattice=0.81, health_logit_float_grid=0.97)))
    assert d.cause == "coarse_logits" and "quant_head" not in [f["cause"] for f in d.findings]
    d = diag(make_records(extra=dict(health_logit_lattice=0.97, health_logit_float_grid=0.0)))
    assert d.cause == "quant_head"


def _ckpt_run(tmp_path, logged, dtype=None):
    """A run directory with a real (untrained) tiny checkpoint on a small text corpus, logging ``logged``."""
    import dataclasses

    import torch

    from bitnet_ref.checkpoint import save_checkpoint
    from bitnet_ref.data.corpus import load_corpus
    from bitnet_ref.model import ModelConfig, Transformer

    text = tmp_path / "corpus"
    text.mkdir(parents=True)
    for i in range(10):
        (text / f"f{i}.txt").write_text(f"the quick brown fox jumps over the lazy dog {i}\n" * 40)
    corpus = load_corpus(str(text))
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    recs = make_records(val=lambda s: logged if s == 100 else 5.5 - 2.7 * (1 - math.exp(-s / 25)))
    run = write_run(tmp_path / "run", recs)
    save_checkpoint(
        run / "ckpt.pt", {"config": dataclasses.asdict(cfg), "model": state, "step": 100, "data": corpus.info()}
    )
    return run


def test_checkpoint_loss_far_from_the_log_is_log_mismatch(tmp_path, capsys):
    run = _ckpt_run(tmp_path, logged=0.02)  # an untrained model measures ~ln V = 5.5
    assert doctor_main([str(run), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["verdict"] == "log_mismatch" and "ckpt.pt measured by the doctor" in obj["evidence"][0]


def test_checkpoint_loss_that_agrees_with_the_log_within_its_error_is_no_mismatch(tmp_path):
    # this log's evaluation windows cannot be reproduced (its train_config records no seed): fresh windows, with
    # their standard error and the log's own, are all the doctor has
    from bitnet_ref.doctor.reproduce import measurements

    probe = load_run(_ckpt_run(tmp_path / "a", logged=5.5))
    fresh = measurements(probe)["val_fresh"]
    assert fresh.se <= MEASURE_SE_TARGET or fresh.tokens >= MEASURE_MAX_TOKENS - fresh.tokens // fresh.windows
    assert measurements(probe)["val_same"] is None
    run = load_run(_ckpt_run(tmp_path / "b", logged=fresh.mean + 0.05))
    assert D.diagnose(run).verdict != "log_mismatch"


def test_missing_data_degrades_to_a_note(tmp_path):
    import shutil

    run = _ckpt_run(tmp_path, logged=0.02)
    shutil.rmtree(tmp_path / "corpus")
    d = D.diagnose(load_run(run))
    assert any("validation data unavailable" in n for n in d.notes)


def test_low_precision_master_weights_from_the_checkpoint(tmp_path):
    import torch

    d = D.diagnose(load_run(_ckpt_run(tmp_path, logged=5.5, dtype=torch.bfloat16)))
    assert "low_precision" in [f["cause"] for f in d.findings]
