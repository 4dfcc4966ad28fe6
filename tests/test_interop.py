"""bitnet_ref <-> Hugging Face BitNet (formats/hf.py, formats/hf_read.py, formats/export.py), checked by
transformers itself.

(a) models trained here, exported in both forms, load in transformers and decode the same greedy tokens, logits
within tolerance; (b) a BitNetForCausalLM built and trained by transformers, saved in the latent form and in
both packed conventions, imports with the same greedy tokens, and our packed runtime matches our training
forward on it; (c) ours -> HF -> ours is exact; then every kind of bad input is one line (exit 2 from the CLIs)
and nothing is half-written. Tests that run transformers are skipped only when it cannot be imported.

Tolerance (transformers vs bitnet_ref logits): HF sums float products (x/s * code) and rescales; we sum the
integer products exactly, then scale. The float sums differ in the last bits (~1e-7 relative), which matters
only where an int8 activation sits on a rounding boundary: there the two round to neighbouring codes, and that
one flip moves later logits by up to ~1% of their range. So: most logits (TIGHT_SHARE) agree to TIGHT_REL, every
logit to LOOSE_REL of the largest, and greedy tokens are identical on the fixed prompts.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from _decode_ckpt import needs_ext, run_export, trained_checkpoint

import bitnet_ref
from bitnet_ref import generate as G
from bitnet_ref.checkpoint import build_model, load_checkpoint, save_checkpoint
from bitnet_ref.decode import loader as L
from bitnet_ref.decode import probe as DP
from bitnet_ref.files import umask
from bitnet_ref.formats import export as E
from bitnet_ref.formats import hf as H
from bitnet_ref.formats import hf_read as interop
from bitnet_ref.model import ModelConfig, Transformer

try:
    import transformers
except ImportError:  # the interop extra is not installed
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed (pip install -e .[interop])")

ROOT = Path(__file__).resolve().parents[1]
TIGHT_REL, TIGHT_SHARE, LOOSE_REL = 1e-5, 0.8, 5e-2
PROMPTS = [list(b"    def __init__(self, "), list(b"import os\nimport sys\n\n"), list(b"        return ")]
NEW = 20
FIGURES = {}  # printed at the end of the module (pytest -s): what transformers and bitnet_ref agreed on


@pytest.fixture(scope="module", autouse=True)
def no_dynamo():
    """transformers @torch.compile's its BitNet kernels; compiling on a CPU takes a minute, eager takes ms."""
    import torch._dynamo

    old, torch._dynamo.config.disable = torch._dynamo.config.disable, True
    yield
    torch._dynamo.config.disable = old
    for k, v in FIGURES.items():
        print(f"\n{k}: {v}", end="")


def compare(hf_model, ours, prompts=PROMPTS, new=NEW) -> dict:
    """Greedy tokens of transformers' generate and ours, then logits over prompt + continuation."""
    hf_model.eval()
    mine = G.generate(ours, prompts, new).tokens
    same, worst, tight, n = [], 0.0, 0, 0
    for p, t in zip(prompts, mine):
        x = torch.tensor([p])
        with torch.no_grad():
            theirs = hf_model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0, len(p) :]
            seq = torch.tensor([p + t])
            a, b = hf_model(seq).logits.float(), ours(seq)[0]  # (1, T, V) each
        same.append(theirs.tolist() == t)
        d, scale = (a - b).abs(), float(b.abs().max())
        worst, tight, n = max(worst, float(d.max()) / scale), tight + int((d <= TIGHT_REL * scale).sum()), n + d.numel()
    return {"greedy_identical": f"{sum(same)}/{len(same)}", "max_rel_logit_diff": worst, "tight_share": tight / n}


def assert_agree(r):
    assert r["greedy_identical"].split("/")[0] == r["greedy_identical"].split("/")[1], r
    assert r["max_rel_logit_diff"] <= LOOSE_REL and r["tight_share"] >= TIGHT_SHARE, r


def hf_load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def write_ckpt(path, cfg: ModelConfig, seed=0, **extra):
    torch.manual_seed(seed)
    model = Transformer(cfg)
    save_checkpoint(path, {"config": asdict(cfg), "model": model.state_dict(), "step": 0, **extra})
    return model.eval()


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory, corpus_file):
    """A tiny run with grouped-query attention, SwiGLU, a tied head and rope_theta 50000 (~10 s)."""
    from bitnet_ref.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("gqa") / "run"
    train(
        TrainConfig(
            preset="tiny",
            steps=60,
            n_kv_heads=1,
            ffn_act="swiglu",
            tie_embeddings=True,
            rope_theta=50000.0,
            data=corpus_file,
            out=str(out),
            device="cpu",
            threads=1,
            eval_at="end",
        ),
        log=lambda *a, **k: None,
    )
    return out / "ckpt.pt"


@pytest.fixture(scope="module")
def checkpoints(gqa_checkpoint):
    return {"mha": trained_checkpoint(), "gqa": gqa_checkpoint}


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    """A BitNetForCausalLM built by transformers, trained there 80 steps (online quantization, GQA 4/2 heads,
    untied), saved by save_pretrained; plus the same weights packed by transformers' own pack_weights in both
    linear classes. transformers 5.x cannot save_pretrained a loaded autobitlinear-offline model
    (revert_weight_conversion raises NotImplementedError), so that directory is written with safetensors."""
    from safetensors.torch import load_file, save_file
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import pack_weights

    root = tmp_path_factory.mktemp("hf")
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
    BitNetForCausalLM(cfg).save_pretrained(root / "plain")
    online = _requantized(root / "plain", root / "online-src", H.LATENT_QC)
    model = hf_load(online).train()
    text = torch.tensor(list((Path(__file__).parent / "test_packed.py").read_bytes()))
    opt, g = torch.optim.AdamW(model.parameters(), lr=3e-3), torch.Generator().manual_seed(0)
    for _ in range(80):
        x = torch.stack([text[i : i + 33] for i in torch.randint(0, len(text) - 33, (8,), generator=g)])
        model(input_ids=x, labels=x).loss.backward()
        opt.step(), opt.zero_grad()
    model.save_pretrained(root / "online")
    dirs = {"online": root / "online"}
    for lc in ("autobitlinear", "bitlinear"):
        tensors = {}
        for k, v in load_file(root / "online" / "model.safetensors").items():
            if k.endswith("_proj.weight"):  # transformers' WeightQuant arithmetic, then its pack_weights
                scale = 1.0 / v.float().abs().mean().clamp(min=1e-5)
                tensors[k] = pack_weights((v.float() * scale).round().clamp(-1, 1).to(torch.int8))
                tensors[k + "_scale"] = (1.0 / scale if lc == "autobitlinear" else scale).reshape(1)
            else:
                tensors[k] = v
        src = _requantized(root / "online", root / f"{lc}-src", {**H.PACKED_QC, "linear_class": lc})
        save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
        dirs[lc] = src
    hf_load(dirs["bitlinear"]).save_pretrained(root / "bitlinear")  # transformers' own writer, uint8 buffers
    dirs["bitlinear"] = root / "bitlinear"
    return dirs


def _requantized(src: Path, dst: Path, qc: dict) -> Path:
    shutil.copytree(src, dst)
    c = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**c, "quantization_config": qc}))
    return dst


# ---------------------------------------------------------------------------------------------- the format


@needs_hf
def test_names_and_shapes_match_both_models():
    from transformers import BitNetConfig, BitNetForCausalLM

    cfg = ModelConfig.preset("tiny", n_kv_heads=1)
    pairs = H.name_pairs(cfg)
    ours = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    assert ours == {o: s for o, _, s in pairs}
    theirs = BitNetForCausalLM(
        BitNetConfig(**{k: v for k, v in H.hf_config(cfg, "latent").items() if k != "quantization_config"})
    ).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {h: s for _, h, s in pairs}


@needs_hf
def test_pack_rows_is_transformers_pack_weights():
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    codes = torch.randint(-1, 2, (24, 10), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    packed = H.pack_rows(codes)
    assert torch.equal(packed, pack_weights(codes.clone()))
    assert torch.equal(H.unpack_rows(packed), codes)
    assert torch.equal(unpack_weights(packed, torch.float32), codes.float())


# ---------------------------------------------------------------------------------------------- (a) ours -> HF


@needs_hf
@pytest.mark.parametrize("which", ["mha", "gqa"])
@pytest.mark.parametrize("form", ["latent", "packed"])
def test_exported_model_runs_in_transformers(checkpoints, tmp_path, which, form):
    from transformers import AutoTokenizer

    ckpt = load_checkpoint(checkpoints[which])
    out = tmp_path / "hf"
    summary = E.export_hf(ckpt, out, form=form)
    assert (
        sorted(os.listdir(out))
        == summary["files"]
        == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )
    model = hf_load(out)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "AutoBitLinear" and q.online_quant == (form == "latent")
    assert type(model.lm_head).__name__ == "Linear"
    if which == "gqa":
        assert model.config.num_key_value_heads == 1 and model.config.hidden_act == "silu"
        assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    r = compare(model, build_model(ckpt))
    FIGURES[f"ours({which}) -> transformers, {form}"] = r
    assert_agree(r)
    tok = AutoTokenizer.from_pretrained(out)
    text = "déjà vu: 中文\n\tx = 1  # ok"
    assert tok(text)["input_ids"] == list(text.encode()) and tok.decode(list(text.encode())) == text


# ---------------------------------------------------------------------------------------------- (b) HF -> ours


@needs_hf
@needs_ext
@pytest.mark.parametrize("kind", ["online", "autobitlinear", "bitlinear"])
def test_transformers_model_imports(hf_trained, kind):
    path = hf_trained[kind]
    imp = interop.read(path)
    assert imp.form == ("latent" if kind == "online" else "packed") and imp.cfg.n_kv_heads == 2
    assert imp.cfg.rope_theta == 500000.0 and not imp.cfg.tie_embeddings
    model = hf_load(path)
    if kind != "online":  # the codes and scales transformers runs with are the ones we hold
        q = model.model.layers[1].mlp.down_proj
        codes, beta = imp.ternary["blocks.1.ffn.down_proj"]
        ws = q.weight_scale.reshape(())
        assert torch.equal(beta, ws if kind == "autobitlinear" else torch.tensor(1 / float(ws)).float())
        if kind == "autobitlinear":
            assert torch.equal(q.weight, codes.float())
        assert imp.inexact == []  # every beta fits a float32 latent here (see test_quant for the general case)
    r = compare(model, imp.model())
    FIGURES[f"transformers -> ours, {kind}"] = r
    assert_agree(r)
    loaded = L.load_for_decode(path, "packed")  # runtime: the stored codes and beta as they are (a packed directory
    par = G.parity(loaded.model, imp.model(), PROMPTS, NEW)  # is read without latents: the reference has them)
    FIGURES[f"packed runtime vs training forward, {kind}"] = {
        k: par[k] for k in ("ok", "bitwise", "max_rel_logit_diff")
    }
    assert par["ok"] and par["bitwise"]


def decode_probe(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "decode_probe.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@needs_ext
def test_decode_probe_reads_a_directory(checkpoints, tmp_path, capsys):
    out = tmp_path / "packed"
    E.export_hf(load_checkpoint(checkpoints["mha"]), out, form="packed")
    r = decode_probe(out, "--prompt", "def ", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["parity"]["ok"] and rep["parity"]["bitwise"] and rep["backend"] == "packed"
    rc = rep["recompute"]  # an imported model's cached paths against a full recompute, too (issue 28)
    assert rc["ok"] and rc["packed"]["samples_identical"] == rc["fake_quant"]["samples_identical"] == 1
    assert rep["samples"][0]["prompt"] == "def " and isinstance(rep["samples"][0]["output"], str)
    assert (out / "decode_probe.json").is_file()  # inside the directory, not beside it
    os.remove(out / "tokenizer.json")  # without a tokenizer, prompts and samples are token ids (in-process now)
    assert DP.main([str(out), "--prompt", "100 101 102 32", "--max-new-tokens", "4", "--json", "--no-save"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"][0]["prompt"] == "100 101 102 32"
    assert DP.main([str(out), "--prompt", "def ", "--no-save"]) == 2
    assert "space-separated token ids" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- (c) round trips


@needs_ext
def test_round_trip_is_exact(checkpoints, tmp_path):
    ckpt = load_checkpoint(checkpoints["gqa"])
    original = build_model(ckpt)
    x = torch.tensor([p[:12] for p in PROMPTS])
    with torch.no_grad():
        want = original(x)[0]
    E.export_hf(ckpt, tmp_path / "latent", form="latent")
    back = bitnet_ref.load(tmp_path / "latent")
    assert back.cfg == original.cfg
    sa, sb = original.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    E.export_hf(ckpt, tmp_path / "packed", form="packed")
    imp = interop.read(tmp_path / "packed")
    for name, m in original.bitlinears():  # the codes and beta themselves, not a re-quantization of codes * beta
        codes, beta = m.ternary_state()
        assert torch.equal(imp.ternary[name][0], codes) and float(imp.ternary[name][1]) == beta
    runtime = L.load_for_decode(tmp_path / "packed", "packed").model
    with torch.no_grad():
        assert torch.equal(back(x)[0], want) and torch.equal(runtime(x)[0], want)
        if not imp.inexact:
            assert torch.equal(imp.model()(x)[0], want)
    assert all(torch.equal(sa[k], imp.state[k]) for k in sa if not k.endswith("_proj.weight"))


def test_other_sources_load(tmp_path):
    """bitnet_ref.load on a checkpoint, a weights file, a plain .pt state dict and a sharded directory."""
    cfg = ModelConfig.preset("tiny")
    model = write_ckpt(tmp_path / "ckpt.pt", cfg)
    x = torch.tensor([PROMPTS[0]])
    want = model(x)[0]
    assert torch.equal(bitnet_ref.load(tmp_path / "ckpt.pt")(x)[0], want)
    d = tmp_path / "hf"
    E.export_hf(load_checkpoint(tmp_path / "ckpt.pt"), d, form="latent")
    assert torch.equal(bitnet_ref.load(d / "model.safetensors")(x)[0], want)
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(d / "config.json", plain)
    torch.save(tensors, plain / "weights.pt")
    assert torch.equal(bitnet_ref.load(plain / "weights.pt")(x)[0], want)
    assert torch.equal(bitnet_ref.load(plain)(x)[0], want)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(d / "config.json", sharded)
    names = sorted(tensors)
    wm = {}
    for i, part in enumerate((names[::2], names[1::2])):
        save_file(
            {k: tensors[k].to(torch.bfloat16) if "norm" in k else tensors[k] for k in part},
            sharded / f"model-0000{i + 1}-of-00002.safetensors",
            metadata={"format": "pt"},
        )
        wm.update({k: f"model-0000{i + 1}-of-00002.safetensors" for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    got = interop.read(sharded)  # bf16 norms: the ones here are exactly representable, so nothing changes
    assert torch.equal(got.model()(x)[0], want) and isinstance(got.tokenizer, H.IdCodec)


def test_per_linear_norm_exports_only_when_gains_are_shared(tmp_path):
    cfg = ModelConfig.preset("tiny", layout="per-linear-norm")
    model = write_ckpt(tmp_path / "a.pt", cfg)
    x = torch.tensor([PROMPTS[1]])
    E.export_hf(load_checkpoint(tmp_path / "a.pt"), tmp_path / "a", form="packed")
    back = bitnet_ref.load(tmp_path / "a")
    assert back.cfg.layout == "official" and torch.equal(back(x)[0], model(x)[0])
    state = model.state_dict()
    state["blocks.1.ffn.up_proj.norm.weight"] = state["blocks.1.ffn.up_proj.norm.weight"] * 1.5
    save_checkpoint(tmp_path / "b.pt", {"config": asdict(cfg), "model": state, "step": 0})
    with pytest.raises(H.FormatError, match="layer 1: the RMSNorm gains of gate_proj/up_proj differ"):
        E.export_hf(load_checkpoint(tmp_path / "b.pt"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


@needs_hf
def test_float_model_exports_without_quantization(tmp_path):
    cfg = ModelConfig.preset("tiny", quant="none")
    model = write_ckpt(tmp_path / "f.pt", cfg)
    E.export_hf(load_checkpoint(tmp_path / "f.pt"), tmp_path / "f")
    assert "quantization_config" not in json.loads((tmp_path / "f" / "config.json").read_text())
    theirs = hf_load(tmp_path / "f").eval()
    assert type(theirs.model.layers[0].mlp.up_proj).__name__ == "Linear"
    x = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, model(x)[0], rtol=0, atol=1e-5)
    assert bitnet_ref.load(tmp_path / "f").cfg.quant == "none"


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    """A small valid packed directory (bitlinear convention, hand-converted) to break in one way per test."""
    root = tmp_path_factory.mktemp("good")
    write_ckpt(root / "ckpt.pt", ModelConfig.preset("tiny", n_kv_heads=1))
    E.export_hf(load_checkpoint(root / "ckpt.pt"), root / "hf", form="packed")
    return root / "hf"


def _tensors(d):
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors")


def _save(d, tensors):
    from safetensors.torch import save_file

    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def _config(d, **changes):
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, **changes}))


Q_W = "model.layers.0.self_attn.q_proj.weight"


def _break(kind, d):
    t = _tensors(d)
    if kind == "no config":
        os.remove(d / "config.json")
    elif kind == "no weights":
        os.remove(d / "model.safetensors")
    elif kind == "other architecture":
        _config(d, model_type="llama", architectures=["LlamaForCausalLM"])
    elif kind == "missing tensor":
        del t[Q_W]
        _save(d, t)
    elif kind == "misshaped tensor":
        t[Q_W] = t[Q_W][:, :-1].contiguous()
        _save(d, t)
    elif kind in ("zero scale", "NaN scale"):
        t[Q_W + "_scale"] = torch.tensor([0.0 if kind == "zero scale" else float("nan")])
        _save(d, t)
    elif kind == "vocabulary":
        _config(d, vocab_size=300)
    elif kind == "tokenizer":
        (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nope"')
    elif kind == "huge config":
        _config(
            d,
            hidden_size=16384,
            num_hidden_layers=1000,
            intermediate_size=65536,
            num_attention_heads=128,
            num_key_value_heads=128,
            vocab_size=1 << 20,
            max_position_embeddings=1024,
        )
    elif kind == "code 3":
        t[Q_W] = t[Q_W] | 3
        _save(d, t)
    elif kind == "extra tensor":
        t["model.layers.0.self_attn.q_proj.rms_norm.weight"] = torch.ones(64)
        _save(d, t)
    elif kind == "not safetensors":
        (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    elif kind == "extra norm option":
        _config(d, quantization_config={**H.PACKED_QC, "use_rms_norm": True})
    elif kind == "bad shard index":
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {Q_W: "../elsewhere.safetensors"}}))


BAD = {
    "no config": "has no config.json",
    "no weights": "has a config.json but no weights",
    "other architecture": "not a Hugging Face BitNet model",
    "missing tensor": f"tensor '{Q_W}' is missing",
    "misshaped tensor": f"{Q_W} has shape [16, 63], expected [16, 64]",
    "zero scale": "_scale is 0.0: a scale must be a positive finite number",
    "NaN scale": "_scale is nan: a scale must be a positive finite number",
    "vocabulary": "has 256 rows but config.json says vocab_size 300: the vocabulary does not match the embedding",
    "tokenizer": "does not parse as a tokenizers tokenizer.json",
    "huge config": "parameters is over the 4,000,000,000 limit",
    "code 3": "holds the 2-bit value 3",
    "extra tensor": "unexpected tensor 'model.layers.0.self_attn.q_proj.rms_norm.weight'",
    "not safetensors": "is not a readable safetensors file",
    "extra norm option": "use_rms_norm adds a second RMSNorm",
    "bad shard index": "lists shard '../elsewhere.safetensors', which is not a file",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_directory_is_one_line(good_dir, tmp_path, kind):
    d = tmp_path / "bad"
    shutil.copytree(good_dir, d)
    _break(kind, d)
    with pytest.raises(H.FormatError) as e:
        interop.read(d)
    msg = str(e.value)
    assert BAD[kind] in msg and "\n" not in msg, msg
    with pytest.raises(H.FormatError):  # the decode loader says the same
        L.load_for_decode(d, "torch")


def test_bad_directory_exits_2_from_the_cli(good_dir, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(good_dir, d)
    _break("zero scale", d)
    r = decode_probe(d, "--prompt", "x", "--no-save")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and BAD["zero scale"] in r.stderr


def test_unsafe_pickle_is_refused(tmp_path, good_dir):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "ran"),))

    shutil.copy(good_dir / "config.json", tmp_path)
    (tmp_path / "w.pt").write_bytes(pickle.dumps({Q_W: Boom()}))
    with pytest.raises(H.FormatError, match="is not a weights_only PyTorch state dict"):
        interop.read(tmp_path / "w.pt")
    assert not (tmp_path / "ran").exists()


def export_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bitnet_ref.export", *map(str, args)],
        capture_output=True,
        cwd=cwd,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_export_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ckpt("ok.pt", ModelConfig.preset("tiny"), data={"kind": "tokens"})
    write_ckpt("ablated.pt", ModelConfig.preset("tiny", ablate=["no-subln"]))
    write_ckpt("float.pt", ModelConfig.preset("tiny", quant="none"))
    write_ckpt("odd.pt", ModelConfig.preset("tiny", ffn_hidden=190))
    Path("keep").mkdir()
    Path("keep/notes.txt").write_text("mine")
    Path("done").mkdir()
    Path("done/config.json").write_text("{}")
    cases = [
        (("ablated.pt", "--out", "x"), "ablation no-subln, whose forward is not BitNet's"),
        (("float.pt", "--out", "x", "--form", "packed"), "no ternary weights to pack; use --form latent"),
        (("odd.pt", "--out", "x", "--form", "packed"), "190 output rows: HF packs four rows a byte"),
        (("ok.pt", "--out", "done"), "done exists; pass --force to replace it"),
        (("ok.pt", "--out", "keep", "--force"), "is not a model directory (no config.json); not replacing it"),
        (("missing.pt", "--out", "x"), "no such checkpoint file"),
        (("ok.pt", "--out", "x", "--format", "xml"), "invalid choice: 'xml'"),
        (("ok.pt", "--out", "x", "--format", "hf", "--emb-type", "f32"), "apply to --format gguf only"),
    ]
    for args, needle in cases:
        code, out, err = run_export(capsys, *args)
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert needle in err, (args, err)
    assert not Path("x").exists() and sorted(os.listdir("keep")) == ["notes.txt"]
    assert Path("done/config.json").read_text() == "{}"
    code, out, err = run_export(capsys, "ok.pt", "--out", "done", "--force", "--form", "packed")
    assert code == 0 and "packed form" in out and "note: no tokenizer" in out, err
    assert sorted(os.listdir("done")) == ["config.json", "model.safetensors"]
    mode = 0o666 & ~umask()
    assert all((Path("done") / f).stat().st_mode & 0o777 == mode for f in os.listdir("done"))
    r = export_cli("ablated.pt", "--out", "y", cwd=tmp_path)  # the real command line: exit 2, one line, no traceback
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "ablation no-subln" in r.stderr


def test_export_is_all_or_nothing(tmp_path, monkeypatch):
    write_ckpt(tmp_path / "ok.pt", ModelConfig.preset("tiny"))
    ckpt = load_checkpoint(tmp_path / "ok.pt")
    E.export_hf(ckpt, tmp_path / "old", form="latent")
    before = {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")}

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(E, "_save_safetensors", crash)
    for target, force in ((tmp_path / "new", False), (tmp_path / "old", True)):
        with pytest.raises(OSError, match="disk full"):
            E.export_hf(ckpt, target, form="packed", force=force)
    assert not (tmp_path / "new").exists()
    assert {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pt", "old"]  # no temporary directory left
