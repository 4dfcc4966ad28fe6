"""--init-from: a Hugging Face Llama (the real transformers) or a full-precision bitnet_ref run as the start of a
ternary fine-tune; the same logits as transformers before any quantization, the layouts, the tokenizer kept,
and every refusal in one line."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _decode_ckpt import needs_ext

from bitnet_ref.checkpoint import save_checkpoint
from bitnet_ref.data.corpus import get_batch, load_corpus
from bitnet_ref.data.tokenizer import tokenize_corpus
from bitnet_ref.doctor import command as doctor
from bitnet_ref.formats.hf import byte_tokenizer
from bitnet_ref.layouts import relayout
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.train import loop as T
from bitnet_ref.train.warm_start import read_warm_start

try:
    import transformers
except ImportError:  # the interop extra is not installed
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed (pip install -e .[interop])")


def llama_dir(root: Path, *, tie=False, vocab=256, tokenizer=True, seed=0) -> Path:
    """A tiny random LlamaForCausalLM (grouped-query attention, non-unit norm gains) written by save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # so a gain mapped to the wrong place shows
    d = root / f"llama-{'tied' if tie else 'untied'}-{vocab}"
    model.save_pretrained(d)
    if tokenizer:
        byte_tokenizer().save(str(d / "tokenizer.json"))
    return d


def hf_model(d: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def tiny_run(tmp_path, corpus_file, name, **over) -> T.TrainConfig:
    kw = dict(
        preset="tiny",
        steps=4,
        batch_size=2,
        warmup=1,
        eval_at="0,1",
        eval_batches=2,
        probe_prompts=1,
        probe_prompt_len=4,
        probe_tokens=4,
        data=corpus_file,
        out=str(tmp_path / name),
        threads=1,
        log_every=1,
    )
    return T.TrainConfig(**{**kw, **over})


# ---- a Llama, against transformers --------------------------------------------------------------------------


@needs_hf
@pytest.mark.parametrize("tie", [False, True])
def test_llama_logits_are_transformers_before_any_quantization(tmp_path, tie):
    d = llama_dir(tmp_path, tie=tie)
    ws = read_warm_start(d, "llama")
    assert ws.notes == () and ws.cfg.n_kv_heads == 2 and ws.cfg.tie_embeddings is tie
    ours = Transformer(ws.cfg).eval()
    ours.load_state_dict(ws.state)
    ternary = Transformer(ModelConfig.from_dict({**asdict(ws.cfg), "quant": "ternary"})).eval()
    ternary.load_state_dict(ws.state)
    ternary.set_quant_strength(0.0, 0.0)  # lambda 0: step 0 of a warmed run
    idx = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf_model(d)(idx).logits
        got = ours(idx)[0]
        assert torch.equal(ternary(idx)[0], got)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@needs_hf
def test_init_from_a_llama_in_the_trainer_keeps_its_tokenizer_and_loss(tmp_path, corpus_file, monkeypatch):
    monkeypatch.setenv("BITNET_REF_CACHE", str(tmp_path / "cache"))
    d = llama_dir(tmp_path)
    cfg = tiny_run(tmp_path, corpus_file, "run", init_from=str(d), layout="llama", quant_warmup=2)
    lines = []
    T.train(cfg, log=lines.append)
    run = Path(cfg.out)
    assert (run / "tokenizer.json").read_bytes() == (d / "tokenizer.json").read_bytes()
    header = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert header["config"]["d_model"] == 32 and header["config"]["norm_eps"] == 1e-6
    assert header["init"]["kind"] == "llama" and header["train_config"]["tokenizer"] == str(d / "tokenizer.json")
    # the trainer's own measurement of the start, on its validation batches, is transformers' loss on them
    corpus = tokenize_corpus(load_corpus(corpus_file), str(d / "tokenizer.json"))
    gen = torch.Generator().manual_seed(T.seed_for(cfg.seed, "val"))
    with torch.no_grad():
        hf = hf_model(d)
        losses = []
        for _ in range(cfg.eval_batches):
            x, y = get_batch(corpus.val, cfg.batch_size, 64, gen)
            losses.append(float(F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten())))
    assert header["init"]["val_loss_unquantized"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert any(line.startswith("warm start:") for line in lines)


@needs_hf
def test_official_layout_adds_unit_sub_norms_and_says_so(tmp_path):
    d = llama_dir(tmp_path)
    ws = read_warm_start(d, "official")
    src = read_warm_start(d, "llama").state
    assert torch.equal(ws.state["blocks.1.attn_norm.weight"], src["blocks.1.attn_norm.weight"])
    assert torch.equal(ws.state["blocks.1.ffn.sub_norm.weight"], torch.ones(80))
    assert any("attn_sub_norm" in n and "unit gain" in n for n in ws.notes)
    per = read_warm_start(d, "per-linear-norm")  # the extra RMSNorm before each linear
    assert torch.equal(per.state["blocks.0.attn.k_proj.norm.weight"], src["blocks.0.attn_norm.weight"])
    assert torch.equal(per.state["blocks.0.attn.o_proj.norm.weight"], torch.ones(32))


def test_relayout_keeps_every_gain_or_refuses():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", quant="none")
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    per_cfg, per, notes = relayout(cfg, model.state_dict(), "per-linear-norm")
    assert notes == []
    back_cfg, back, _ = relayout(per_cfg, per, "official")  # shared gains copied out and back: exact
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    idx = torch.randint(0, 256, (1, 16))
    twin = Transformer(per_cfg)
    twin.load_state_dict(per)
    assert torch.allclose(twin(idx)[0], model(idx)[0], atol=1e-5)
    with pytest.raises(ValueError, match="would be dropped"):
        relayout(cfg, model.state_dict(), "llama")
    per["blocks.0.attn.q_proj.norm.weight"] = per["blocks.0.attn.q_proj.norm.weight"] * 2
    with pytest.raises(ValueError, match="differ"):
        relayout(per_cfg, per, "official")


# ---- refusals, one line each ----------------------------------------------------------------------------------


def _ckpt(tmp_path, name, **cfg_over) -> Path:
    cfg = ModelConfig.preset("tiny", **cfg_over)
    path = tmp_path / name / "ckpt.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"config": asdict(cfg), "model": Transformer(cfg).state_dict(), "step": 10, "data": {}})
    return path


def _refused(capsys, argv, match):
    capsys.readouterr()  # what came before (transformers' progress bars)
    assert T.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err


def test_refusals_of_checkpoints(tmp_path, corpus_file, capsys):
    fp = _ckpt(tmp_path, "fp", quant="none")
    base = ["--preset", "tiny", "--steps", "2", "--data", corpus_file, "--threads", "1"]
    _refused(capsys, [*base, "--init-from", str(_ckpt(tmp_path, "t")), "--out", str(tmp_path / "a")], "ternary check")
    _refused(capsys, [*base, "--init-from", str(fp), "--d-model", "32", "--out", str(tmp_path / "b")], "does not fit")
    _refused(capsys, [*base, "--init-from", str(fp.parent), "--out", str(tmp_path / "c")], "pass " + str(fp))
    tok = tmp_path / "bytes.json"
    byte_tokenizer().save(str(tok))  # bytes again, but through a tokenizer.json: not what fp was trained on
    argv = [*base, "--init-from", str(fp), "--tokenizer", str(tok), "--out", str(tmp_path / "d")]
    _refused(capsys, argv, "is not the one")
    _refused(capsys, [*base, "--init-from", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e")], "no such")


@needs_hf
def test_refusals_of_hugging_face_directories(tmp_path, corpus_file, capsys):
    base = ["--steps", "2", "--data", corpus_file, "--threads", "1"]
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    _refused(capsys, [*base, "--init-from", str(gpt2), "--out", str(tmp_path / "a")], "not a Llama-family model")
    big = llama_dir(tmp_path, vocab=512, tokenizer=False)
    _refused(capsys, [*base, "--init-from", str(big), "--out", str(tmp_path / "b")], "tokenizer does not match")
    q = llama_dir(tmp_path, seed=1)
    c = json.loads((q / "config.json").read_text())
    (q / "config.json").write_text(json.dumps({**c, "quantization_config": {"quant_method": "bitnet"}}))
    _refused(capsys, [*base, "--init-from", str(q), "--out", str(tmp_path / "c")], "quantized")


# ---- the done-when path: an FP run, continued as ternary with a warmup; the probe and the doctor on it ----------


@needs_ext
def test_fp_run_continued_as_ternary_then_probed_and_doctored(tmp_path, corpus_file, capsys, monkeypatch):
    from bitnet_ref.decode import probe

    monkeypatch.setenv("BITNET_REF_CACHE", str(tmp_path / "cache"))
    tok = tmp_path / "bytes.json"
    byte_tokenizer().save(str(tok))
    fp = tiny_run(tmp_path, corpus_file, "fp", quant="none", steps=6, tokenizer=str(tok))
    T.train(fp, log=lambda *a: None)
    warm = tiny_run(tmp_path, corpus_file, "warm", init_from=str(Path(fp.out) / "ckpt.pt"), quant_warmup=3, steps=6)
    T.train(warm, log=lambda *a: None)
    assert (Path(warm.out) / "tokenizer.json").read_bytes() == tok.read_bytes()  # taken from beside the ckpt
    recs = [json.loads(line) for line in (Path(warm.out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["quant_lambda"] for r in recs if r["kind"] == "step"] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]
    init = recs[0]["init"]
    assert init["source_step"] == 6 and init["val_loss_unquantized"] > 0
    assert init["train_loss_unquantized"] > 0 and init["train_loss_steps"] == 6  # the batches of steps 1-6
    assert probe.main([str(Path(warm.out) / "ckpt.pt"), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["parity"]["ok"] is True
    assert doctor.main([warm.out]) == 0
    assert capsys.readouterr().out.startswith("verdict: ")
