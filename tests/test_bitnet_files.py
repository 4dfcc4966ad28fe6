"""Reading the BitNet files users have, exactly (formats/gguf_container.py, formats/ternary_blocks.py,
formats/gguf_model.py, formats/gguf_vocab.py, formats/gguf_write.py, hf_read.read_file_model), and the activation
modes of runtime/act_modes.py.

The block codecs are checked against gguf-py (llama.cpp's own Python quantizer) and against the layouts written out
by hand from ggml-quants.c and bitnet.cpp's quantize_i2_s; every file type is read back into logits bit-identical
with the source model's training forward; llama.cpp's per-block activation arithmetic against a transcription of
quantize_row_q8_K_ref; bad files are one FormatError line (and exit 2 from the decode probe, no traceback).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import numpy as np
import pytest
import torch
from _decode_ckpt import needs_ext
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_ref.formats import ternary_blocks as TB
from bitnet_ref.formats.file_model import from_checkpoint
from bitnet_ref.formats.gguf_container import GGUFFile, write_container
from bitnet_ref.formats.gguf_model import read_bitnet_gguf
from bitnet_ref.formats.gguf_vocab import SPMCodec
from bitnet_ref.formats.gguf_write import byte_vocab_metadata, write_bitnet_gguf
from bitnet_ref.formats.hf import FormatError, pack_rows
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime.act_modes import block_act_quant

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[gguf]')")

CFG = dict(d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=512, context=32, layout="official")


def model_and_file_model(ffn_act="swiglu", tied=True, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(**CFG, ffn_act=ffn_act, tie_embeddings=tied)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # gains that are not all 1, so a norm left out shows
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    fm = from_checkpoint({"config": asdict(cfg), "model": m.state_dict(), "step": 0})
    return m, fm


# ---------------------------------------------------------------------------------------------- block codecs


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 4), blocks=st.integers(1, 3))
def test_tq_blocks_are_gguf_py_blocks(seed, rows, blocks):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=(rows, 256 * blocks), dtype=np.int8)
    d = rng.uniform(0.01, 3, size=(rows, blocks)).astype(np.float16).astype(np.float32)
    d[codes.reshape(rows, blocks, 256).any(-1) == 0] = 0  # gguf-py's absmax of an all-zero block
    w = (codes.reshape(rows, blocks, 256) * d[:, :, None]).reshape(rows, -1)
    for qtype, ours in (
        (gguf.GGMLQuantizationType.TQ1_0, TB.tq1_0_blocks(codes, d)),
        (gguf.GGMLQuantizationType.TQ2_0, TB.tq2_0_join(TB.pack_codes(codes), rows, 256 * blocks, d)),
    ):
        assert np.array_equal(ours, gguf.quants.quantize(w, qtype))
    got, gd = TB.tq1_0_codes(TB.tq1_0_blocks(codes, d), rows, 256 * blocks)
    assert np.array_equal(got, codes) and np.array_equal(gd, d)
    packed, gd = TB.tq2_0_split(TB.tq2_0_join(TB.pack_codes(codes), rows, 256 * blocks, d), rows, 256 * blocks)
    assert np.array_equal(TB.unpack_codes(packed, rows, 256 * blocks), codes) and np.array_equal(gd, d)


def test_i2_s_layout_is_bitnet_cpp_s():
    """quantize_i2_s (src/ggml-bitnet-mad.cpp): code w+1 of element j of a block at bits 6-2*(j/32) of byte j%32
    (x86, 128-weight blocks) or 6-2*(j/16) of byte j%16 (ARM, 64), the float32 scale after the n/4 bytes."""
    for layout, q in (("x86", 128), ("arm", 64)):
        for j in (0, 1, 31, 32, 33, 63, 64, 96, 127):
            if j >= q:
                continue
            codes = np.zeros((1, 256), np.int8)
            codes[0, q + j] = 1  # second block
            raw = TB.i2_s_join(codes, 0.5, layout)
            g = q // 4
            expect = np.full(64, 0x55, np.uint8)
            expect[g + j % g] = (0x55 & ~(3 << (6 - 2 * (j // g)))) | (2 << (6 - 2 * (j // g)))
            assert np.array_equal(raw[:64], expect), (layout, j)
            assert raw.size == 64 + 32 and struct.unpack("<f", raw[64:68].tobytes())[0] == 0.5
            packed, scale = TB.i2_s_split(raw, 1, 256, layout)
            assert np.array_equal(TB.unpack_codes(packed, 1, 256), codes) and scale == 0.5


def test_hf_rows_go_straight_to_packed_rows():
    rng = np.random.default_rng(1)
    for k in (256, 200):
        codes = rng.integers(-1, 2, size=(8, k), dtype=np.int8)
        assert np.array_equal(TB.hf_rows_to_packed(pack_rows(torch.from_numpy(codes)).numpy()), TB.pack_codes(codes))


def test_code_3_is_refused():
    bad = np.full(64 + 32, 0xFF, np.uint8)
    with pytest.raises(FormatError, match="2-bit value 3"):
        TB.i2_s_split(bad, 1, 256)


def test_block_activation_quantization_is_llama_cpp_s():
    """block_act_quant against a line-by-line transcription of ggml's quantize_row_q8_K_ref."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 512)) * 3).astype(np.float32)
    x[1, :256] = 0  # an all-zero block: d = 0, codes 0
    x[2, 10], x[2, 20] = -4.0, 4.0  # equal magnitudes: the first one is the block's max
    x[3] = np.round(x[3] * 2) / 2  # exact halves: round half to even
    q, d = block_act_quant(torch.from_numpy(x))

    def ref_row(row):
        qs, ds = [], []
        for b in range(0, row.size, 256):
            blk = row[b : b + 256]
            amax, mx = np.float32(0), np.float32(0)
            for v in blk:
                if abs(v) > amax:
                    amax, mx = np.float32(abs(v)), v
            if amax == 0:
                qs += [0] * 256
                ds.append(0.0)
                continue
            iscale = np.float32(-127.0) / mx
            qs += [min(127, int(np.rint(np.float32(iscale * v)))) for v in blk]
            ds.append(np.float32(1) / iscale)
        return qs, ds

    for r in range(5):
        qs, ds = ref_row(x[r])
        assert q[r].tolist() == qs and np.array_equal(d[r].numpy(), np.array(ds, np.float32))


# ---------------------------------------------------------------------------------------------- files


@needs_ext
@pytest.mark.parametrize("arch,act", [("bitnet", "swiglu"), ("bitnet-b1.58", "relu2")])
def test_every_linear_type_reads_back_to_the_training_forward(tmp_path, arch, act):
    m, fm = model_and_file_model(act, tied=arch == "bitnet")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = m(ids)[0]
    for typ in ("TQ2_0", "TQ1_0", "I2_S", "F16", "BF16", "F32"):
        p = tmp_path / f"{typ}.gguf"
        write_bitnet_gguf(
            p, fm.cfg, fm.linears, fm.floats, arch=arch, linear_type=typ, emb_type="F32", vocab=byte_vocab_metadata()
        )
        r = read_bitnet_gguf(p)
        assert r.tensor_types["blocks.0.ffn.down_proj"] == typ and r.cfg == fm.cfg
        with torch.no_grad():
            got = r.model()(ids)[0]
        assert torch.equal(got, want), typ  # codes and beta exact: the same integers, the same scales
        native = {"TQ2_0": "block", "TQ1_0": "block", "I2_S": "token"}.get(typ, "none")
        assert r.linears["blocks.0.attn.q_proj"].act == native


@needs_ext
def test_any_block_scale_d(tmp_path):
    """A TQ2_0 file as llama.cpp's converter writes it (gguf-py: d = the block absmax, beta in fp16) reads with
    beta = that fp16 value; blocks with scales of their own keep them, and the file-mode product is llama.cpp's."""
    _, fm = model_and_file_model()
    spec = fm.linears["blocks.0.ffn.gate_proj"]
    codes = TB.unpack_codes(spec.weight.packed, spec.weight.n, spec.weight.k)
    w = codes.astype(np.float32) * float(spec.weight.beta)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.TQ2_0)
    p = tmp_path / "m.gguf"
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats, linear_type="TQ2_0", scale_in="block")
    f = GGUFFile(p)
    assert np.array_equal(f.raw("blk.0.ffn_gate.weight"), raw.reshape(-1))  # byte for byte the converter's
    r = read_bitnet_gguf(p).linears["blocks.0.ffn.gate_proj"]
    assert r.block_scales is None and float(r.weight.beta) == float(np.float16(float(spec.weight.beta)))

    rng = np.random.default_rng(3)
    spec.block_scales = rng.uniform(0.5, 2, (spec.weight.n, spec.weight.k // 256)).astype(np.float32)
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats, linear_type="TQ2_0", scale_in="block", force=True)
    r = read_bitnet_gguf(p)
    got = r.linears["blocks.0.ffn.gate_proj"]
    assert got.block_scales is not None
    x = torch.from_numpy(rng.standard_normal((3, 256)).astype(np.float32))
    from bitnet_ref.runtime.act_modes import ModeLinear

    lin = ModeLinear(got, torch.nn.Identity(), act="block")
    q, dx = block_act_quant(x)  # llama.cpp: sum over blocks of int dot * (d_x * d_w), all in float64 here
    raw = GGUFFile(p).raw("blk.0.ffn_gate.weight").reshape(spec.weight.n, -1)
    wd = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.TQ2_0).astype(np.float64)
    want = (q.double().numpy() * np.repeat(dx.double().numpy(), 256, 1)) @ wd.T
    assert np.allclose(lin.product(x).double().numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@needs_ext
def test_hf_packed_directory_reads_without_latents(tmp_path):
    from bitnet_ref.formats.export import export_hf
    from bitnet_ref.formats.hf_read import read, read_file_model

    m, fm = model_and_file_model("relu2", tied=False)
    ckpt = {"format": "bitnet_ref.ckpt", "version": 1, "config": asdict(fm.cfg), "model": m.state_dict(), "step": 3}
    export_hf(ckpt, tmp_path / "hf", form="packed")
    r = read_file_model(tmp_path / "hf")
    old = read(tmp_path / "hf")  # the latent-search import: the same codes and beta
    for name, (codes, beta) in old.ternary.items():
        w = r.linears[name].weight
        assert np.array_equal(TB.unpack_codes(w.packed, w.n, w.k), codes.numpy()) and torch.equal(w.beta, beta)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(r.model()(ids)[0], m(ids)[0])
        assert torch.equal(r.reference()(ids)[0], m(ids)[0])  # the plain-torch reference of the codes


@needs_ext
def test_decode_probe_reads_a_gguf(tmp_path, capsys):
    from bitnet_ref.decode.probe import main

    _, fm = model_and_file_model()
    p = tmp_path / "m.gguf"
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats, vocab=byte_vocab_metadata())
    assert main([str(p), "--prompt", "def f(", "--max-new-tokens", "4", "--no-save", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["parity"]["ok"] and r["parity"]["bitwise"] and r["tokenizer"].startswith("the file's BPE")


# ---------------------------------------------------------------------------------------------- vocabularies


def test_byte_vocabulary_round_trips():
    from bitnet_ref.formats.gguf_vocab import codec_of

    meta = {k: (v[1] if t == 9 else v) for k, t, v in byte_vocab_metadata()}
    c = codec_of(meta, 256)
    text = "def f(x):\n    return x  # é"
    assert c.encode(text) == list(text.encode()) and c.decode(c.encode(text)) == text


def test_spm_merges_by_score_with_byte_fallback():
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "h", "e", "l", "o", "\u2581h", "he", "ll", "\u2581he", "llo", "lo"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    for t, s in (("\u2581h", -3), ("he", -1), ("ll", -2), ("\u2581he", -1.5), ("llo", -1), ("lo", -4)):
        scores[tokens.index(t)] = s
    types = [2, 3, 3] + [1] * 11 + [6] * 256
    c = SPMCodec(tokens, scores, types, add_space_prefix=True, bos=1, add_bos=False, unk=0)
    # "▁hello!": he (-1), then ▁he (-1.5), then ll (-2), then llo (-1); "!" is no token: its byte
    ids = c.encode("hello!")
    assert [tokens[i] for i in ids] == ["\u2581he", "llo", "<0x21>"]
    assert c.decode(ids) == "hello!"


# ---------------------------------------------------------------------------------------------- bad files


def _good(tmp_path):
    _, fm = model_and_file_model()
    p = tmp_path / "good.gguf"
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats)
    return p, fm


def test_bad_files_are_one_line(tmp_path):
    p, fm = _good(tmp_path)
    data = p.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "header": (data[:30], "truncated GGUF header"),
        "foreign": (b"PK\x03\x04" + data[4:], "not a GGUF file"),
        "version": (data[:4] + struct.pack("<I", 1) + data[8:], "version 1"),
        "counts": (data[:8] + struct.pack("<Q", 1 << 40) + data[16:], "damaged"),
    }
    for name, (blob, words) in cases.items():
        q = tmp_path / f"{name}.gguf"
        q.write_bytes(blob)
        with pytest.raises(FormatError, match=words) as e:
            read_bitnet_gguf(q)
        assert "\n" not in str(e.value)


def test_foreign_architecture_type_and_shape_are_named(tmp_path):
    from bitnet_ref.formats.gguf_container import STRING

    _, fm = model_and_file_model()
    p = tmp_path / "llama.gguf"
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats, metadata=[("general.architecture", STRING, "llama")])
    with pytest.raises(FormatError, match="architecture 'llama', not a BitNet one"):
        read_bitnet_gguf(p)
    good, _ = _good(tmp_path)
    f = GGUFFile(good)
    tensors, meta = [], [(k, *_typed(v)) for k, v in f.metadata.items() if k != "general.alignment"]
    for t in f.tensors.values():
        raw = f.raw(t.name)
        if t.name == "blk.0.ffn_up.weight":  # Q8_0 bytes of the right size: a quantized, not ternary, linear
            tensors.append((t.name, t.shape, 8, np.zeros(t.n_elements // 32 * 34, np.uint8)))
        elif t.name == "blk.0.ffn_down.weight":  # (N, K) where ggml wants (K, N): transposed
            tensors.append((t.name, t.shape[::-1], t.type_id, raw))
        else:
            tensors.append((t.name, t.shape, t.type_id, raw))
    q = tmp_path / "bad.gguf"
    write_container(q, meta, tensors)
    with pytest.raises(FormatError, match="blk.0.ffn_up.weight has type Q8_0; a BitNet linear is one of"):
        read_bitnet_gguf(q)
    tensors = [t if t[0] != "blk.0.ffn_up.weight" else (t[0], t[1], 35, f.raw(t[0])) for t in tensors]
    write_container(q, meta, tensors)
    with pytest.raises(FormatError, match="ffn_down.weight has shape .* transposed"):
        read_bitnet_gguf(q)


def _typed(v):
    from bitnet_ref.formats.gguf_container import ARRAY, F32, I32, STRING, U32

    if isinstance(v, str):
        return STRING, v
    if isinstance(v, bool):
        return 7, v
    if isinstance(v, int):
        return U32, v
    if isinstance(v, float):
        return F32, v
    if isinstance(v, list):
        return ARRAY, (STRING, v)
    return ARRAY, (I32, list(v))


def test_not_ternary_float_linear_is_refused(tmp_path):
    _, fm = model_and_file_model()
    spec = fm.linears["blocks.0.attn.k_proj"]
    spec.block_scales = np.linspace(0.5, 1.5, spec.weight.n * 1).reshape(spec.weight.n, 1).astype(np.float32)
    p = tmp_path / "f16.gguf"
    write_bitnet_gguf(p, fm.cfg, fm.linears, fm.floats, linear_type="F16", scale_in="block")
    with pytest.raises(FormatError, match="different nonzero magnitudes: not ternary"):
        read_bitnet_gguf(p)


@needs_ext
def test_decode_probe_bad_file_exits_2_without_traceback(tmp_path, capsys):
    from bitnet_ref.decode.probe import main

    q = tmp_path / "t.gguf"
    q.write_bytes(_good(tmp_path)[0].read_bytes()[:5000])
    assert main([str(q), "--prompt", "x", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "truncated" in err and err.count("\n") == 1


def test_bpe_vocabulary_with_merges_tokenizes_as_its_tokenizer():
    """A GGUF gpt2 vocabulary (tokens in id order, merges) made from a trained byte-level BPE tokenizes text as the
    tokenizer itself does, and decodes back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from bitnet_ref.formats.gguf_vocab import codec_of

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "def f(x):\n    return x + 1\n" * 50 + "class Point:\n    def __init__(self, x, y):\n" * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([text], trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": [t for t, _ in vocab],
        "tokenizer.ggml.merges": merges,
    }
    c = codec_of(meta, len(vocab))
    probe = "def g(y):\n    return y + 2  # new"
    assert c.encode(probe) == tok.encode(probe).ids and len(c.encode(probe)) < len(probe.encode())
    assert c.decode(c.encode(probe)) == probe
