"""bitnet_ref.watch in a plain PyTorch loop: it finds ternary layers by behaviour and by name, never changes the
training (losses and weights bit for bit with and without it), writes a run directory the doctor diagnoses with
health evidence (a missing STE named), survives its own failures, and refuses bad arguments in one line."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref import metrics_log as M
from bitnet_ref.doctor.run import load_run
from bitnet_ref.doctor.verdicts import diagnose
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.quant import act_fake_quant
from bitnet_ref.watch import WatchError, find_ternary, watch

TEXT = torch.tensor(list(open(__file__, "rb").read()) * 4)


class HomeMadeBitLinear(nn.Linear):
    """A user's own ternary layer (bias, absmax-median scale, STE): in no list, found by behaviour."""

    def forward(self, x):
        scale = self.weight.abs().median().clamp(min=1e-5)
        w = self.weight + ((self.weight / scale).round().clamp(-1, 1) * scale - self.weight).detach()
        return F.linear(act_fake_quant(x), w, self.bias)


class TinyLM(nn.Module):
    """A user's model: embedding, two home-made ternary layers, an FP head; returns logits only."""

    def __init__(self, ternary=HomeMadeBitLinear):
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.up, self.down = ternary(32, 64), ternary(64, 32)
        self.out = nn.Linear(32, 256)

    def forward(self, idx):
        return self.out(self.down(F.relu(self.up(self.emb(idx)))))


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", vocab_size=256, **kw))


def train(model, steps, w=None, lr=3e-3, seed=0):
    """A plain loop; ``w`` (a Watch or None) gets one call per step. Returns the losses as a tensor."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr) if w is None else w.optimizer
    g, losses = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        i = torch.randint(0, len(TEXT) - 33, (8,), generator=g)
        x = torch.stack([TEXT[j : j + 33] for j in i])  # (B, T+1)
        out = model(x[:, :-1])
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
        if w is not None:
            w.step(loss)
    return torch.stack(losses)


# ---------------------------------------------------------------------------------------------- finding layers


@pytest.mark.parametrize("layout", ["official", "per-linear-norm"])
def test_finds_every_bitlinear_and_nothing_else_by_behaviour(layout):
    m = tiny(layout=layout)
    assert [n for n, _ in find_ternary(m)] == [n for n, _ in m.bitlinears()]  # not the FP head


def test_finds_a_home_made_layer_and_not_plain_linears():
    assert [n for n, _ in find_ternary(TinyLM())] == ["up", "down"]
    with pytest.raises(WatchError, match=r"no ternary layers found in TinyLM: none of its 3 modules .*name them"):
        find_ternary(TinyLM(ternary=nn.Linear))


def test_layers_by_name_glob_class_and_predicate():
    m = TinyLM(ternary=nn.Linear)  # full precision: only naming finds them
    assert [n for n, _ in find_ternary(m, ["up", "down"])] == ["up", "down"]
    assert [n for n, _ in find_ternary(m, "*o*")] == ["down", "out"]
    assert [n for n, _ in find_ternary(m, lambda n, mod: n == "up")] == ["up"]
    assert [n for n, _ in find_ternary(TinyLM(), HomeMadeBitLinear)] == ["up", "down"]
    with pytest.raises(WatchError, match=r"'nope' is not a module of TinyLM"):
        find_ternary(m, ["nope"])
    with pytest.raises(WatchError, match=r"'emb' \(Embedding\) is no linear layer"):
        find_ternary(m, nn.Embedding)
    with pytest.raises(WatchError, match="matches no module"):
        find_ternary(m, "*.q_proj")


# ---------------------------------------------------------------------------------------------- never changes training


def test_training_is_bit_for_bit_the_same_with_and_without_the_watch(tmp_path):
    a = tiny()
    plain = train(a, 12)
    b = tiny()
    opt = torch.optim.AdamW(b.parameters(), lr=3e-3)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    w = watch(b, tmp_path / "run", optimizer=opt, data=TEXT[-1500:], every=2)  # evaluates every other step
    assert torch.equal(torch.get_rng_state(), rng_before)
    watched = train(b, 12, w)
    w.close()
    assert torch.equal(plain, watched)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert b.training and all(m.training for m in b.modules())


def test_a_failure_inside_the_watch_is_reported_once_and_training_goes_on(tmp_path):
    m = TinyLM()
    calls = []

    def broken_logits(model, idx):
        calls.append(1)
        raise RuntimeError("boom in the user's logits function")

    w = watch(
        m,
        tmp_path / "run",
        optimizer=torch.optim.AdamW(m.parameters()),
        data=TEXT[-800:],
        every=2,
        logits=broken_logits,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = train(m, 6, w)
    w.close()
    assert len(losses) == 6 and torch.isfinite(losses).all()
    msgs = [str(c.message) for c in caught if "bitnet_ref.watch" in str(c.message)]
    assert len(msgs) == 1 and "evaluation part failed (RuntimeError: boom" in msgs[0], msgs
    assert len(calls) == 1  # switched off after the first failure
    recs = M.read(tmp_path / "run" / M.FILE_NAME).records
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert recs[-1]["kind"] == "end" and "evaluation" in recs[-1]["watch_failures"]


# ---------------------------------------------------------------------------------------------- the doctor reads it


def watched_run(tmp_path, model, steps=24, every=4):
    w = watch(
        model,
        tmp_path,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0),
        data=TEXT[-1500:],
        every=every,
        steps=steps,
    )
    train(model, steps, w)
    w.close()
    run = load_run(tmp_path)
    return run, diagnose(run).as_dict(run)


def test_the_doctor_reads_a_watched_run_with_health_evidence(tmp_path):
    run, d = watched_run(tmp_path, TinyLM())
    ev = run.evals[-1]
    assert set(ev["layers"]) == {"up", "down"} and ev["samples"] and ev["unique_tokens"] >= 1
    assert ev["groups"]["latent"]["grad_norm"] > 0 and ev["groups"]["head"]["update_ratio"] > 0
    assert ev["layers"]["up"]["flip_rate"] is not None and run.header["unigram_entropy"] > 0
    assert d["cause"] is None, d
    assert run.complete


def test_the_doctor_names_a_missing_ste_in_a_watched_loop(tmp_path):
    run, d = watched_run(tmp_path, tiny(ablate=("no-ste",)))
    assert d["cause"] == "missing_ste", d
    assert any("gradient norm is 0 in all 14 BitLinears" in e for e in d["evidence"]), d


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"every": 0}, "every must be a positive number"),
        ({"data": [1, 2, 300]}, "token id 300, outside the model's vocabulary of 256"),
        ({"data": [0.5, 1.5]}, "integer token ids"),
        ({"data": []}, "no tokens"),
        ({"prompts": [[]]}, "non-empty lists"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, kw, match):
    with pytest.raises(WatchError, match=match) as e:
        watch(TinyLM(), tmp_path / "run", **kw)
    assert "\n" not in str(e.value)


def test_a_used_run_directory_is_refused(tmp_path):
    watch(TinyLM(), tmp_path, data=TEXT[-500:]).close()
    with pytest.raises(WatchError, match="already exists"):
        watch(TinyLM(), tmp_path, data=TEXT[-500:])


def test_checkpoint_needs_a_watched_run(tmp_path, capsys):
    from bitnet_ref.doctor.command import main as doctor_main

    (tmp_path / M.FILE_NAME).write_text(
        '{"kind": "header", "ln_vocab": 5.5}\n{"kind": "step", "step": 1, "loss": 5.0}\n'
        '{"kind": "eval", "step": 1, "val_loss": 5.0}\n'
    )
    assert doctor_main([str(tmp_path), "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "its metrics hold no loss windows" in err and err.count("\n") == 1, err
