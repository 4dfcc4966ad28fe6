"""bitnet_ref.watch.hf.BitNetCallback on the real transformers Trainer (CPU, a tiny BitNetForCausalLM built from a
config and trained with online ternary quantization, 30 steps): the callback changes no loss; its run directory,
the run's trainer_state.json and its TensorBoard events each give the doctor a verdict; a home-made BitLinear that
quantizes its weight without a straight-through estimator is named missing_ste from all three."""

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bitnet_ref.doctor import foreign_logs
from bitnet_ref.doctor.run import Run, load_run
from bitnet_ref.doctor.verdicts import diagnose
from bitnet_ref.formats.hf import LATENT_QC

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[interop])")
pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[test])")
pytestmark = pytest.mark.slow

TEXT = torch.tensor(list((Path(__file__).resolve().parents[1] / "bitnet_ref" / "health.py").read_bytes()))
STEPS, EVERY = 30, 10


@pytest.fixture(scope="module", autouse=True)
def no_dynamo():
    """transformers @torch.compile's its BitNet kernels; compiling on a CPU takes a minute, eager takes ms."""
    import torch._dynamo

    old, torch._dynamo.config.disable = torch._dynamo.config.disable, True
    yield
    torch._dynamo.config.disable = old


def tiny_bitnet(root: Path):
    """BitNetForCausalLM from a config, saved, then loaded with online (trainable) ternary quantization."""
    from transformers import AutoModelForCausalLM, BitNetConfig, BitNetForCausalLM

    torch.manual_seed(0)
    cfg = BitNetConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
    )
    BitNetForCausalLM(cfg).save_pretrained(root / "init")
    c = json.loads((root / "init" / "config.json").read_text())
    (root / "init" / "config.json").write_text(json.dumps({**c, "quantization_config": LATENT_QC}))
    return AutoModelForCausalLM.from_pretrained(root / "init")


class Windows(torch.utils.data.Dataset):
    def __len__(self):
        return 512

    def __getitem__(self, i):
        s = (i * 97) % (len(TEXT) - 33)
        return {"input_ids": TEXT[s : s + 33], "labels": TEXT[s : s + 33]}


def no_ste_forward(self, x):
    """A home-made BitLinear's forward that quantizes its weight under no_grad: no gradient reaches the weight."""
    from transformers.integrations.bitnet import ActQuant

    with torch.no_grad():
        s = 1 / self.weight.abs().mean().clamp(min=1e-5)
        w = (self.weight * s).round().clamp(-1, 1) / s
    return F.linear(ActQuant.apply(x), w, self.bias)


def train(root: Path, *, callback: bool, fault: bool = False) -> dict:
    from transformers import Trainer, TrainingArguments

    from bitnet_ref.watch.hf import BitNetCallback

    torch.set_num_threads(1)
    model = tiny_bitnet(root)
    if fault:
        for m in model.modules():
            if type(m).__name__ == "AutoBitLinear":
                m.forward = types.MethodType(no_ste_forward, m)
    args = TrainingArguments(
        output_dir=str(root / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=["tensorboard"],
        save_strategy="steps",
        save_steps=STEPS,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Windows())
    if callback:
        BitNetCallback(root / "watch", data=TEXT[-2000:], every=EVERY).attach(trainer)
    trainer.train()
    state = root / "out" / f"checkpoint-{STEPS}" / "trainer_state.json"
    return {
        "watch": root / "watch",
        "state": state,
        "events": root / "out" / "runs",
        "history": json.loads(state.read_text())["log_history"],
    }


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return train(tmp_path_factory.mktemp("healthy"), callback=True)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    return train(tmp_path_factory.mktemp("faulty"), callback=True, fault=True)


def diagnosis_of(path: Path, log: bool) -> dict:
    if log:
        m, notes = foreign_logs.load(path)
        run = Run.from_metrics(m, path)
    else:
        run, notes = load_run(path), []
    d = diagnose(run)
    d.notes += notes
    return d.as_dict(run)


def train_losses(history) -> list:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in history if "loss" in r and "train_loss" not in r]


def test_the_callback_changes_no_loss(healthy, tmp_path):
    plain = train(tmp_path, callback=False)
    assert len(train_losses(plain["history"])) == STEPS
    assert train_losses(healthy["history"]) == train_losses(plain["history"])  # bit for bit, grad norms too


def test_figures_reach_the_trainers_logs_and_the_run_directory(healthy):
    rows = {r["step"]: r for r in healthy["history"]}
    for s in (EVERY, 2 * EVERY, STEPS):
        assert rows[s]["bitnet/unique_tokens"] >= 1 and "bitnet/health_frac_zero" in rows[s], rows[s]
    assert "bitnet/unique_tokens" not in rows[EVERY - 1]
    evals = [r for r in load_run(healthy["watch"]).evals]
    assert [r["step"] for r in evals] == [EVERY, 2 * EVERY, STEPS]
    layers = evals[-1]["layers"]
    assert len(layers) == 14 and all(k.endswith("_proj") for k in layers)  # 2 blocks x q k v o gate up down
    assert evals[-1]["groups"]["latent"]["grad_norm"] > 0 and evals[-1]["groups"]["embed"]["grad_norm"] > 0


@pytest.mark.parametrize("source", ["run_dir", "trainer_state", "tensorboard"])
def test_the_doctor_diagnoses_the_healthy_run_from_each_path(healthy, source):
    path = {"run_dir": healthy["watch"], "trainer_state": healthy["state"], "tensorboard": healthy["events"]}[source]
    d = diagnosis_of(path, log=source != "run_dir")
    assert d["verdict"] in ("healthy", "stuck_unigram") and d["cause"] is None, d  # 30 steps: near unigram level
    assert d["evidence"][0].startswith("final val loss") and "ln(V) 5.545" in d["evidence"][0]
    assert not any("need per-layer health metrics" in n for n in d["notes"]), d  # the causes were judged


@pytest.mark.parametrize("source", ["run_dir", "trainer_state", "tensorboard"])
def test_a_missing_ste_is_named_from_each_path(faulty, source):
    path = {"run_dir": faulty["watch"], "trainer_state": faulty["state"], "tensorboard": faulty["events"]}[source]
    d = diagnosis_of(path, log=source != "run_dir")
    assert d["cause"] == "missing_ste", d
    assert any("gradient norm" in e for e in d["evidence"]), d


def test_the_users_checkpoint_is_checked_against_the_log(healthy, capsys):
    from bitnet_ref.doctor.command import main as doctor_main

    ckpt = healthy["state"].parent  # the Trainer's checkpoint-30 directory
    assert doctor_main([str(healthy["watch"]), "--checkpoint", str(ckpt), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert any(n.startswith("the checkpoint's measured val loss") and "agrees with the log's" in n for n in d["notes"])
    assert doctor_main([str(healthy["watch"]), "--checkpoint", str(healthy["watch"].parent / "init"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)  # the untrained model is not the model the log describes
    assert d["verdict"] == "log_mismatch", d
    assert doctor_main([str(healthy["watch"]), "--checkpoint", str(healthy["watch"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint:") and err.count("\n") == 1, err


def test_evaluation_interval_follows_the_trainers_settings(tmp_path):
    from transformers import TrainerState, TrainingArguments

    from bitnet_ref.watch.hf import BitNetCallback

    cb = BitNetCallback(tmp_path)
    by_steps = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=7, use_cpu=True)
    assert cb.interval(by_steps, TrainerState(max_steps=100)) == 7
    no_eval = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert cb.interval(no_eval, TrainerState(max_steps=100)) == 5  # max_steps // 20
    assert BitNetCallback(tmp_path, every=3).interval(by_steps, TrainerState(max_steps=100)) == 3
