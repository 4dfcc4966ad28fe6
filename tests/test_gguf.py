"""GGUF export (formats/gguf_file.py, export --format gguf): the bytes, the names llama.cpp loads, exact round trips,
refusals.

Needs the gguf package (in the ``test`` extra). llama.cpp itself decoding the file is tests/test_llama_cpp.py.
"""

import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from _decode_ckpt import run_export
from hypothesis import given
from hypothesis import strategies as st

from bitnet_ref import generate as G
from bitnet_ref import quant as Q
from bitnet_ref.checkpoint import save_checkpoint
from bitnet_ref.formats import gguf_file as GF
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime.packed import PackedWeight

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")

# llama.cpp-runnable: SwiGLU, tied head, official layout, every linear input width a multiple of 256; GQA
CFG = dict(
    d_model=256,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    ffn_hidden=512,
    context=64,
    ffn_act="swiglu",
    tie_embeddings=True,
    layout="official",
)
PROMPT = list(b"def f(x):\n    return ")


def write_ckpt(path, cfg: ModelConfig, seed=0, **extra):
    torch.manual_seed(seed)
    model = Transformer(cfg)
    save_checkpoint(path, {"config": asdict(cfg), "model": model.state_dict(), "step": 7, **extra})
    return model.eval()


# ---------------------------------------------------------------------------------------------- bytes


@given(n=st.integers(1, 5), k=st.integers(1, 600), seed=st.integers(0, 2**31 - 1))
def test_numpy_packing_is_the_kernel_packing(n, k, seed):
    codes = np.random.default_rng(seed).integers(-1, 2, size=(n, k), dtype=np.int8)
    packed = GF.pack_codes(codes)
    if kernels.available():
        assert np.array_equal(packed, kernels.pack_ternary(codes))
    assert np.array_equal(GF.unpack_codes(packed, n, k), codes)


def test_packed_rows_are_tq2_0_blocks():
    """Our packed rows + d = 1 are TQ2_0 as gguf-py (ggml's reference) quantizes and dequantizes it."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, size=(6, 768), dtype=np.int8)
    codes[0, :256] = 0  # an all-zero block: gguf-py stores d = 0 there, we store 1; the qs bytes agree
    ours = GF.tq2_0_rows(GF.pack_codes(codes), 6, 768)  # (6, 3 * 66)
    theirs = gguf.quants.quantize(codes.astype(np.float32), gguf.GGMLQuantizationType.TQ2_0)
    assert ours.shape == theirs.shape == (6, 3 * 66)
    assert np.array_equal(ours.reshape(-1, 66)[:, :64], theirs.reshape(-1, 66)[:, :64])
    assert np.all(ours.reshape(-1, 66)[:, 64:].view("<f2") == 1.0)
    assert np.array_equal(gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.TQ2_0), codes.astype(np.float32))
    assert np.array_equal(GF.packed_from_tq2_0(ours, 6, 768, "w"), GF.pack_codes(codes))


# ---------------------------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    cfg = ModelConfig(**CFG)
    model = write_ckpt(d / "ckpt.pt", cfg)
    ckpt = {"config": asdict(cfg), "model": model.state_dict(), "step": 7}
    GF.export_gguf(ckpt, d / "f32.gguf", emb_type="f32")
    GF.export_gguf(ckpt, d / "f16.gguf")
    return d, model


def test_tensors_are_what_llama_cpp_loads(exported):
    """Names, ggml shapes and types of llama.cpp's bitnet load_arch_tensors; its hparams; the byte vocabulary."""
    d, model = exported
    cfg = model.cfg
    r = gguf.GGUFReader(str(d / "f16.gguf"))
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == "bitnet"
    assert (
        field("bitnet.embedding_length"),
        field("bitnet.block_count"),
        field("bitnet.feed_forward_length"),
        field("bitnet.attention.head_count"),
        field("bitnet.attention.head_count_kv"),
    ) == (256, 2, 512, 4, 2)
    assert field("bitnet.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field("bitnet.rope.freq_base") == cfg.rope_theta
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.add_bos_token") is False
    from bitnet_ref.formats.hf import byte_tokenizer

    vocab = byte_tokenizer().get_vocab()  # the Hugging Face export's byte tokenizer: the same 256 token strings
    assert field("tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    assert set(field("tokenizer.ggml.token_type")) == {int(gguf.TokenType.NORMAL)}
    T = gguf.GGMLQuantizationType
    d_, kv, h = 256, cfg.kv_dim, 512
    want = {"token_embd.weight": ((d_, 256), T.F16), "output_norm.weight": ((d_,), T.F32)}
    for i in range(2):
        b = f"blk.{i}."
        want.update(
            {
                b + n + ".weight": ((s,), T.F32)
                for n, s in (("attn_norm", d_), ("attn_sub_norm", d_), ("ffn_norm", d_), ("ffn_sub_norm", h))
            }
        )
        for n, shape in (
            ("attn_q", (d_, d_)),
            ("attn_k", (d_, kv)),
            ("attn_v", (d_, kv)),
            ("attn_output", (d_, d_)),
            ("ffn_gate", (d_, h)),
            ("ffn_up", (d_, h)),
            ("ffn_down", (h, d_)),
        ):
            want[b + n + ".weight"] = (shape, T.TQ2_0)  # ggml order: (in, out)
            want[b + n + ".scale"] = ((1,), T.F32)
    got = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type) for t in r.tensors}
    assert got == want
    q = next(t for t in r.tensors if t.name == "blk.1.attn_q.scale")
    assert float(q.data[0]) == float(Q.weight_quant(model.blocks[1].attn.q_proj.weight.detach())[1])  # beta exact


def test_round_trip_decodes_bit_for_bit(exported):
    """F32 embedding: the file read back (no latents) computes our fake-quant forward's logits exactly. F16: the
    same as the model whose embedding is rounded to fp16 (what llama.cpp holds)."""
    d, model = exported
    for name, emb in (
        ("f32.gguf", model.tok_emb.weight.detach()),
        ("f16.gguf", model.tok_emb.weight.detach().half().float()),
    ):
        cfg, packed, floats = GF.read_gguf(d / name)
        assert cfg == model.cfg
        runtime = GF.packed_model(cfg, packed, floats)
        ref = Transformer(model.cfg).eval()
        ref.load_state_dict({**model.state_dict(), "tok_emb.weight": emb, "head.weight": emb})
        with torch.no_grad():
            a, _ = runtime(torch.tensor([PROMPT]))
            b, _ = ref(torch.tensor([PROMPT]))
        assert torch.equal(a, b), name
        assert G.generate(runtime, [PROMPT], 12).tokens == G.generate(ref, [PROMPT], 12).tokens


@pytest.mark.skipif(not kernels.available(), reason="the int8 head needs the C++ extension")
def test_int8_head_read_from_the_file_equals_the_one_made_from_float32(exported):
    """read_gguf(head="int8") quantizes the embedding from the file mapping, chunk by chunk: the same rows as
    quantize_rows of the float32 embedding read_gguf returns by default, and packed_model's int8 tied head and
    embedding compute what to_int8_head makes of the float32 model. No float32 (V, d) tensor is in the model."""
    from bitnet_ref.runtime.int8_head import Int8Embedding, Int8Head, quantize_rows, to_int8_head

    d, _ = exported
    for name in ("f16.gguf", "f32.gguf"):
        cfg, packed, floats = GF.read_gguf(d / name)
        cfg8, packed8, floats8 = GF.read_gguf(d / name, head="int8")
        rows, want = floats8["tok_emb.weight"], quantize_rows(floats["tok_emb.weight"])
        assert torch.equal(rows.q, want.q) and torch.equal(rows.scale, want.scale), name
        int8 = GF.packed_model(cfg8, packed8, floats8)
        assert isinstance(int8.head, Int8Head) and isinstance(int8.tok_emb, Int8Embedding)
        assert int8.head.rows is int8.tok_emb.rows
        assert all(p.numel() < cfg.vocab_size * cfg.d_model for p in int8.parameters())
        ref = to_int8_head(GF.packed_model(cfg, packed, floats))
        with torch.no_grad():
            a, _ = int8(torch.tensor([PROMPT]))
            b, _ = ref(torch.tensor([PROMPT]))
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="head must be one of"):
        GF.read_gguf(d / "f16.gguf", head="bf16")


def test_write_from_a_packed_state(tmp_path):
    """write_gguf takes packed codes directly (random presets never have latents); read back equal."""
    cfg = ModelConfig(**{**CFG, "vocab_size": 1000})
    rng = np.random.default_rng(1)
    shapes = {
        "q_proj": (256, 256),
        "k_proj": (128, 256),
        "v_proj": (128, 256),
        "o_proj": (256, 256),
        "gate_proj": (512, 256),
        "up_proj": (512, 256),
        "down_proj": (256, 512),
    }
    packed = {}
    for ours, _ in GF.linear_names(cfg):
        n, k = shapes[ours.rsplit(".", 1)[1]]
        packed[ours] = PackedWeight(
            GF.pack_codes(rng.integers(-1, 2, (n, k), dtype=np.int8)),
            torch.tensor(rng.uniform(0.001, 0.1), dtype=torch.float32),
            n,
            k,
        )
    floats = {}
    for ours, _ in GF.float_names(cfg):  # the embedding, then norms of width d (256) or ffn_hidden (512)
        shape = (1000, 256) if ours == "tok_emb.weight" else (512,) if ours.endswith("ffn.sub_norm.weight") else (256,)
        floats[ours] = torch.randn(shape)
    s = GF.write_gguf(tmp_path / "r.gguf", cfg, packed, floats, emb_type="f32")
    assert s["vocab"] == "no_vocab" and s["tq2_0"] == 14
    cfg2, packed2, floats2 = GF.read_gguf(tmp_path / "r.gguf")
    assert cfg2 == cfg
    for name, pw in packed.items():
        assert np.array_equal(packed2[name].packed, pw.packed) and torch.equal(packed2[name].beta, pw.beta)
    assert all(torch.equal(floats2[k], v) for k, v in floats.items())
    assert gguf.GGUFReader(str(tmp_path / "r.gguf")).fields["bitnet.vocab_size"].contents() == 1000


def test_approximate_writes_narrow_linears_as_f16_codes(tmp_path, capsys):
    cfg = ModelConfig(**{**CFG, "ffn_hidden": 320})  # down_proj K = 320: no TQ2_0
    model = write_ckpt(tmp_path / "c.pt", cfg)
    code, out, err = run_export(
        capsys,
        tmp_path / "c.pt",
        "--format",
        "gguf",
        "--out",
        tmp_path / "a.gguf",
        "--approximate",
        "--emb-type",
        "f32",
    )
    assert code == 0, err
    assert "approximate: linears of input width 320" in out and "2 F16 linears" in out
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    assert "width 320" in r.fields["bitnet_ref.approximate"].contents()
    assert next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight").tensor_type == gguf.GGMLQuantizationType.F16
    cfg2, packed, floats = GF.read_gguf(tmp_path / "a.gguf")  # the codes are exact: our decode is unchanged
    with torch.no_grad():
        a, _ = GF.packed_model(cfg2, packed, floats)(torch.tensor([PROMPT]))
        b, _ = model(torch.tensor([PROMPT]))
    assert torch.equal(a, b)


def test_per_linear_norm_with_shared_gains_exports(tmp_path, capsys):
    cfg = ModelConfig(**{**CFG, "layout": "per-linear-norm"})
    write_ckpt(tmp_path / "p.pt", cfg)  # gains all start at 1: equal, so the block norms represent them
    code, out, err = run_export(capsys, tmp_path / "p.pt", "--format", "gguf", "--out", tmp_path / "p.gguf")
    assert code == 0, err
    assert "per-linear-norm layout" in out and "token_embd (also llama.cpp's output head) is F16" in out


# ---------------------------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ckpt("ok.pt", ModelConfig(**CFG))
    write_ckpt("relu2.pt", ModelConfig(**{**CFG, "ffn_act": "relu2"}))
    write_ckpt("untied.pt", ModelConfig(**{**CFG, "tie_embeddings": False}))
    write_ckpt("narrow.pt", ModelConfig(**{**CFG, "ffn_hidden": 320}))
    write_ckpt("float.pt", ModelConfig(**{**CFG, "quant": "none"}))
    write_ckpt("ablated.pt", ModelConfig(**{**CFG, "ablate": ["no-subln"]}))
    m = write_ckpt("gains.pt", ModelConfig(**{**CFG, "layout": "per-linear-norm"}))
    sd = m.state_dict()
    sd["blocks.0.attn.k_proj.norm.weight"] = sd["blocks.0.attn.k_proj.norm.weight"] * 2
    save_checkpoint("gains.pt", {"config": asdict(m.cfg), "model": sd, "step": 0})
    write_ckpt(
        "bpe.pt",
        ModelConfig(**{**CFG, "vocab_size": 512}),
        data={"kind": "text", "tokenizer": {"spec": "bpe:512", "sha256": "0" * 64, "vocab_size": 512}},
    )
    Path("notes.txt").write_text("mine")
    assert run_export(capsys, "ok.pt", "--format", "gguf", "--out", "done.gguf")[0] == 0
    cases = [
        (("relu2.pt",), "computes a SiLU-gated FFN only, and this model's is relu2"),
        (("untied.pt",), "this model's head is untied; train with --tie-embeddings"),
        (("narrow.pt",), "multiples of 256, and this model has 320; pass --approximate"),
        (("float.pt",), "a quant='none' model has no ternary weights"),
        (("ablated.pt",), "ablation no-subln"),
        (("gains.pt",), "the RMSNorm gains of q_proj/k_proj/v_proj differ"),
        (("ok.pt", "--out", "done.gguf"), "done.gguf exists; pass --force to replace it"),
        (("ok.pt", "--out", "notes.txt", "--force"), "is not a GGUF file; not replacing it"),
        (("ok.pt", "--form", "packed"), "--form applies to --format hf only"),
        (("missing.pt",), "no such checkpoint file"),
        (("bpe.pt",), "trained with a subword tokenizer (tokenizer.json)"),
    ]
    for args, msg in cases:
        if "--out" not in args:
            args = (*args, "--out", "x.gguf")
        code, out, err = run_export(capsys, *args[:1], "--format", "gguf", *args[1:])
        assert code == 2 and out == "" and msg in err and err.count("\n") == 1, (args, err)
    assert sorted(os.listdir()) == sorted(
        [
            "ok.pt",
            "relu2.pt",
            "untied.pt",
            "narrow.pt",
            "float.pt",
            "ablated.pt",
            "gains.pt",
            "bpe.pt",
            "notes.txt",
            "done.gguf",
        ]
    )  # no x.gguf, no temp
    assert Path("notes.txt").read_text() == "mine"
    code, _, err = run_export(capsys, "ok.pt", "--format", "hf", "--out", "y", "--ids-only")
    assert code == 2 and "--ids-only apply to --format gguf only" in err
    code, out, _ = run_export(capsys, "bpe.pt", "--format", "gguf", "--out", "ids.gguf", "--ids-only")
    assert code == 0 and "vocabulary no_vocab" in out
    assert run_export(capsys, "ok.pt", "--format", "gguf", "--out", "done.gguf", "--force")[0] == 0


def test_missing_gguf_package_is_one_line(tmp_path, capsys, monkeypatch):
    write_ckpt(tmp_path / "ok.pt", ModelConfig(**CFG))
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError, as when not installed
    code, out, err = run_export(capsys, tmp_path / "ok.pt", "--format", "gguf", "--out", tmp_path / "x.gguf")
    assert code == 2 and 'pip install "bitnet_ref[gguf]"' in err and err.count("\n") == 1
    assert not (tmp_path / "x.gguf").exists()


def test_read_refuses_foreign_files(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GF.FormatError, match="not a GGUF written by bitnet_ref"):
        GF.read_gguf(tmp_path / "other.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not gguf at all")
    with pytest.raises(GF.FormatError, match="not a readable GGUF file"):
        GF.read_gguf(tmp_path / "junk.gguf")
