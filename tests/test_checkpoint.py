"""Checkpoints: atomic save, round trip, and one clear CheckpointError for every kind of bad file."""

import os
import pickle
from dataclasses import asdict

import pytest
import torch

from bitnet_ref.checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint, save_checkpoint
from bitnet_ref.model import ModelConfig, Transformer


def payload(**over):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(256, (2, 8)), torch.randint(256, (2, 8)))[1].backward()
    opt.step()
    p = {
        "config": asdict(cfg),
        "train_config": {"steps": 10},
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 3,
        "rng": {"torch": torch.get_rng_state()},
        "last_val_loss": 4.5,
        "unigram_entropy": 3.2,
        "ln_vocab": 5.5,
        "data": {"fingerprint": "abc"},
    }
    p.update(over)
    return p


def one_line_error(path, match):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def test_round_trip(tmp_path):
    p = payload()
    save_checkpoint(tmp_path / "ckpt.pt", p)
    got = load_checkpoint(tmp_path / "ckpt.pt")
    assert got["format"] == FORMAT and got["version"] == VERSION
    assert got["step"] == 3 and got["last_val_loss"] == 4.5
    assert got["config"] == p["config"]
    for k, v in p["model"].items():
        assert torch.equal(got["model"][k], v)
    assert torch.equal(got["rng"]["torch"], p["rng"]["torch"])
    model = Transformer(ModelConfig.from_dict(got["config"]))
    model.load_state_dict(got["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.load_state_dict(got["optimizer"])
    # the plain torch loader with weights_only=True reads it too (no custom classes inside)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 3


def test_save_is_atomic_replace_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, payload(step=1))
    save_checkpoint(path, payload(step=2))
    assert load_checkpoint(path)["step"] == 2
    (tmp_path / ".ckpt.pt.stale.tmp").write_bytes(b"left by a killed save")
    save_checkpoint(path, payload(step=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # like open(), not mkstemp's 0600


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, payload(step=1))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, payload(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_refuses_to_save_nonfinite(tmp_path):
    p = payload()
    name = next(iter(p["model"]))
    p["model"][name] = p["model"][name].clone()
    p["model"][name].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(tmp_path / "ckpt.pt", p)
    assert not (tmp_path / "ckpt.pt").exists()
    q = payload()
    state = next(iter(q["optimizer"]["state"].values()))
    state["exp_avg"].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_checkpoint(tmp_path / "ckpt.pt", q)


# ---------------------------------------------------------------------------------------------- bad files


def test_missing_and_directory(tmp_path):
    one_line_error(tmp_path / "nope.pt", "no such checkpoint")
    one_line_error(tmp_path, "is a directory")


def test_empty(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    one_line_error(tmp_path / "e.pt", "empty")


def test_truncated(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pt", payload())
    raw = (tmp_path / "ckpt.pt").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 10):
        (tmp_path / "t.pt").write_bytes(raw[:cut])
        one_line_error(tmp_path / "t.pt", "truncated, corrupt or not a PyTorch file")


def test_random_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((1, 100, 5000)):
        (tmp_path / f"r{i}.pt").write_bytes(bytes(torch.randint(256, (n,), generator=g, dtype=torch.uint8).tolist()))
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / f"r{i}.pt")
        assert "\n" not in str(e.value)
        assert "corrupt or not a PyTorch file" in str(e.value)  # garbage, not "would run code"


def test_foreign_torch_files(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    one_line_error(tmp_path / "other.pt", "not a bitnet_ref checkpoint")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    one_line_error(tmp_path / "tensor.pt", "not a bitnet_ref checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    one_line_error(tmp_path / "list.pt", "not a bitnet_ref checkpoint")


def test_wrong_version_and_damaged_keys(tmp_path):
    p = payload()
    torch.save({**p, "format": FORMAT, "version": 99}, tmp_path / "v.pt")
    one_line_error(tmp_path / "v.pt", "version 99")
    torch.save({**p, "format": FORMAT, "version": VERSION, "model": "weights"}, tmp_path / "m.pt")
    one_line_error(tmp_path / "m.pt", "'model' is missing")


class _Evil:
    """Unpickling this runs os.system: creates the marker file named in the class attribute."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    # sanity: the payload really would run code under a plain unpickler
    pickle.loads(pickle.dumps(_Evil()))
    assert marker.exists()
    marker.unlink()
    # zip-format torch file with the object inside a checkpoint-looking dict
    torch.save({"format": FORMAT, "version": VERSION, "evil": _Evil()}, tmp_path / "evil.pt")
    one_line_error(tmp_path / "evil.pt", "would run code")
    # a bare (legacy, non-zip) pickle
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil.pkl")
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_huge_config_is_refused_before_allocating(tmp_path):
    p = payload()
    p["config"] = {**p["config"], "d_model": 10**9, "n_layers": 10**6}
    torch.save({**p, "format": FORMAT, "version": VERSION}, tmp_path / "huge.pt")
    one_line_error(tmp_path / "huge.pt", "unusable model config")
    p["config"] = {**payload()["config"], "not_a_key": 1}
    torch.save({**p, "format": FORMAT, "version": VERSION}, tmp_path / "key.pt")
    one_line_error(tmp_path / "key.pt", "unusable model config")


def test_nan_weights_are_refused(tmp_path):
    p = payload()
    name = next(iter(p["model"]))
    p["model"][name] = torch.full_like(p["model"][name], float("nan"))
    torch.save({**p, "format": FORMAT, "version": VERSION}, tmp_path / "nan.pt")  # bypasses save_checkpoint's guard
    one_line_error(tmp_path / "nan.pt", "NaN or inf")
