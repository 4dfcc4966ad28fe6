"""bitnet_ref.watch.lightning.BitNetCallback with real PyTorch Lightning (CPU, bitnet_ref's tiny model in a
LightningModule, 12 updates): the same losses and weights with and without it, its figures in Lightning's
logger, and a run directory the doctor reads (a missing STE named)."""

import csv

import pytest
import torch

from bitnet_ref.doctor.run import load_run
from bitnet_ref.doctor.verdicts import diagnose
from bitnet_ref.model import ModelConfig, Transformer

L = pytest.importorskip("lightning", reason="lightning is not installed (pip install -e .[lightning])")
pytestmark = pytest.mark.slow

TEXT = torch.tensor(list(open(__file__, "rb").read()) * 8)
STEPS = 12


class LitLM(L.LightningModule):
    def __init__(self, **cfg):
        super().__init__()
        torch.manual_seed(0)
        self.model = Transformer(ModelConfig.preset("tiny", vocab_size=256, **cfg))
        self.losses = []

    def forward(self, idx):
        return self.model(idx)[0]

    def training_step(self, batch, batch_idx):
        _, loss = self.model(batch[:, :-1], batch[:, 1:])
        self.losses.append(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.0)


def fit(tmp_path, callback: bool, **cfg):
    from lightning.pytorch.loggers import CSVLogger

    from bitnet_ref.watch.lightning import BitNetCallback

    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(TEXT) - 33, (STEPS * 8,), generator=g)
    batches = [torch.stack([TEXT[s : s + 33] for s in starts[i * 8 : i * 8 + 8]]) for i in range(STEPS)]
    lit = LitLM(**cfg)
    cbs = [BitNetCallback(tmp_path / "watch", data=TEXT[-1500:], every=4)] if callback else []
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path / "logs", name="", version=""),
        callbacks=cbs,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        deterministic=True,
    )
    trainer.fit(lit, torch.utils.data.DataLoader(batches, batch_size=None))
    return lit, tmp_path


def test_same_training_with_and_without_the_callback(tmp_path):
    a, _ = fit(tmp_path / "a", callback=False)
    b, out = fit(tmp_path / "b", callback=True)
    assert torch.equal(torch.stack(a.losses), torch.stack(b.losses)) and len(a.losses) == STEPS
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    logged = [r for r in rows if r.get("bitnet/unique_tokens")]
    assert [int(r["step"]) for r in logged] == [4, 8, 12]
    assert all(float(r["bitnet/health_frac_zero"]) > 0 for r in logged)
    run = load_run(out / "watch")
    assert [r["step"] for r in run.evals] == [4, 8, 12] and len(run.evals[-1]["layers"]) == 14
    assert diagnose(run).cause is None


def test_a_missing_ste_is_named(tmp_path):
    _, out = fit(tmp_path, callback=True, ablate=("no-ste",))
    d = diagnose(load_run(out / "watch"))
    assert d.cause == "missing_ste", d
