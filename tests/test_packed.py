"""The packed runtime (bitnet_ref/runtime/packed.py): exact parity with the fake-quant forward, the packed model through
the KV cache vs full recompute, ablation semantics, and the loader's choices. Generation itself (sampling, the
torch path, argument checks) is tests/test_generate.py."""

import copy
from dataclasses import asdict

import numpy as np
import pytest
import torch
from _decode_ckpt import needs_ext, trained_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_ref import generate as G
from bitnet_ref import quant as Q
from bitnet_ref.checkpoint import build_model, load_checkpoint, save_checkpoint
from bitnet_ref.data.rebuild import reload
from bitnet_ref.decode import loader as L
from bitnet_ref.diversity import probe_prompts
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P


@pytest.fixture(scope="module")
def trained():
    path = trained_checkpoint()
    ckpt = load_checkpoint(path)
    prompts = probe_prompts(reload(ckpt["data"]).val, 6, 16)
    return path, ckpt, prompts


@needs_ext
def test_packed_and_fake_quant_agree_on_a_trained_checkpoint(trained):
    path, ckpt, prompts = trained
    loaded = L.load_for_decode(path, "packed")
    assert loaded.backend == "packed" and loaded.reason is None
    assert not any(True for _ in loaded.model.bitlinears())  # every BitLinear was swapped
    reference = build_model(ckpt)
    rep = G.parity(loaded.model, reference, prompts, 48)
    assert rep["ok"] and rep["tokens_identical"] and rep["samples_identical"] == len(prompts)
    assert rep["max_rel_logit_diff"] <= 1e-4
    # and directly, on the logits of a teacher-forced forward over each prompt + its continuation
    gen = G.generate(loaded.model, prompts, 48)
    seqs = [p + t for p, t in zip(prompts, gen.tokens)]
    a, b = G.teacher_forced(loaded.model, seqs), G.teacher_forced(reference, seqs)  # (B, T, V)
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert torch.equal(a, b)  # the integer path reproduces the fake-quant forward bit for bit


@needs_ext
def test_kv_cache_gives_the_same_tokens_as_full_recompute(trained):
    path, ckpt, prompts = trained
    packed = L.load_for_decode(path, "packed").model
    reference = build_model(ckpt)
    for model in (packed, reference):
        cached = G.generate(model, prompts[:3], 40).tokens
        assert cached == G.generate_reference(model, prompts[:3], 40)


@needs_ext
def test_parity_reports_a_real_difference(trained):
    """The comparison can fail: flip the codes of one layer and parity must say so."""
    path, ckpt, prompts = trained
    reference = build_model(ckpt)
    broken = build_model(ckpt)
    state = P.packed_state(broken)
    name = "blocks.0.ffn.down_proj"
    codes = kernels.unpack_ternary(state[name].packed, state[name].n, state[name].k)
    state[name].packed = kernels.pack_ternary(-codes)
    P.swap_bitlinears(broken, state)
    rep = G.parity(broken, reference, prompts, 24)
    assert not rep["ok"] and rep["max_abs_logit_diff"] > 0.1


@st.composite
def activations(draw):
    m, k = draw(st.integers(1, 4)), draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["normal", "halves", "zeros", "tiny"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        x = torch.randn(m, k, generator=g) * 10.0 ** draw(st.integers(-6, 4))
    elif kind == "halves":  # exact .5 products: round-half-even ties
        x = torch.randint(-508, 509, (m, k), generator=g).float() / 4
    elif kind == "zeros":
        x = torch.zeros(m, k)
    else:
        x = torch.full((m, k), 3e-6) * torch.randn(m, k, generator=g).sign()
    return x.float()


@needs_ext
@given(activations())
def test_cpp_act_quant_equals_the_reference(x):
    q1, g1 = Q.act_quant(x)
    q2, g2 = kernels.act_quant(x.numpy())
    assert np.array_equal(q1.numpy(), q2) and np.array_equal(g1.numpy(), g2)


@needs_ext
def test_fast_act_quant_self_check_passes():
    assert P.fast_act_quant_ok()  # if this fails, the packed layer silently uses the slower reference path


def random_layer(n, k, seed, scaled=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)  # (N, K) latent weights
    codes, beta = Q.weight_quant(w)
    norm = torch.nn.RMSNorm(k, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(k, generator=g) + 0.5)
    return P.PackedBitLinear(P.PackedWeight(kernels.pack_ternary(codes), beta, n, k), norm, scaled=scaled), w


@needs_ext
@settings(deadline=None, max_examples=80)
@given(activations(), st.integers(1, 40), st.integers(0, 2**31 - 1), st.booleans())
def test_fused_forward_is_bit_identical_to_the_reference_forward(x, n, seed, scaled):
    layer, w = random_layer(n, x.shape[-1], seed, scaled)
    with torch.no_grad():
        fused, ref = layer(x), layer.forward_reference(x)  # (M, N) each
    assert fused.dtype == ref.dtype == torch.float32 and fused.shape == ref.shape
    assert torch.equal(fused.view(torch.int32), ref.view(torch.int32))  # bitwise, -0.0 included
    if scaled:  # and the training-time forward, which quantizes the same latent weights itself
        with torch.no_grad():
            assert torch.equal(fused, Q.fake_quant_linear(layer.norm(x), w))


@needs_ext
def test_fused_forward_refuses_non_finite_activations():
    layer, _ = random_layer(4, 16, 0)
    layer.norm = torch.nn.Identity()
    x = torch.ones(2, 16)
    x[1, 3] = float("nan")
    with pytest.raises(DecodeError, match="non-finite"):
        layer(x)


@needs_ext
@pytest.mark.parametrize("ablate", [[], ["no-dequant"], ["no-subln"], ["quant-head"]])
def test_packed_reproduces_ablation_forwards_exactly(ablate):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", ablate=ablate)).eval()
    packed = P.to_packed(copy.deepcopy(model))
    idx = torch.randint(256, (2, 20))
    with torch.no_grad():
        assert torch.equal(packed(idx)[0], model(idx)[0])
        layer = packed.blocks[0].attn.q_proj
        x = torch.randn(3, 5, 64)
        assert torch.equal(layer(x), layer.forward_reference(x))


@needs_ext
def test_weight_bytes_per_token_counts_two_bits_per_weight():
    model = Transformer(ModelConfig.preset("tiny")).eval()
    fp = P.weight_bytes_per_token(model)
    pk = P.weight_bytes_per_token(P.to_packed(copy.deepcopy(model)))
    n_lin = sum(m.weight.numel() for _, m in model.bitlinears())
    assert fp["linear"] == 4 * n_lin
    expected = sum(kernels.packed_nbytes(m.out_features, m.in_features) + 4 for _, m in model.bitlinears())
    assert pk["linear"] == expected and pk["other"] == fp["other"]


def test_quant_none_checkpoint_decodes_through_torch_with_a_reason(tmp_path):
    cfg = ModelConfig.preset("tiny", quant="none")
    model = Transformer(cfg)
    save_checkpoint(tmp_path / "ckpt.pt", {"config": asdict(cfg), "model": model.state_dict(), "step": 0})
    loaded = L.load_for_decode(tmp_path / "ckpt.pt", "packed")
    assert loaded.backend == "torch" and "quant='none'" in loaded.reason
    out = G.generate(loaded.model, [[1, 2, 3]], 5)
    assert len(out.tokens[0]) == 5


def test_loader_refuses_weights_that_do_not_fit_the_config(tmp_path):
    cfg = ModelConfig.preset("tiny")
    sd = Transformer(cfg).state_dict()
    sd["head.weight"] = torch.zeros(3, 3)
    save_checkpoint(tmp_path / "ckpt.pt", {"config": asdict(cfg), "model": sd, "step": 0})
    with pytest.raises(DecodeError, match="cannot build the model") as e:
        L.load_for_decode(tmp_path / "ckpt.pt", "torch")
    assert "\n" not in str(e.value)


def test_loader_refuses_unusable_devices_in_one_line(tmp_path):
    """dist.resolve_device parses --device; its DeviceError reaches decode callers as a one-line DecodeError."""
    cfg = ModelConfig.preset("tiny")
    save_checkpoint(tmp_path / "ckpt.pt", {"config": asdict(cfg), "model": Transformer(cfg).state_dict(), "step": 0})
    for device in ("auto", "mps", "tpu", "cuda:x"):  # no "auto" for decoding: the packed kernel is CPU-only
        with pytest.raises(DecodeError, match="device") as e:
            L.load_for_decode(tmp_path / "ckpt.pt", "torch", device)
        assert "\n" not in str(e.value)


@needs_ext
def test_the_1_6_bit_format_decodes_bit_identically():
    # five weights a byte instead of four: fewer bytes, the same integer products, so the same logits
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", d_model=320, ffn_hidden=320, n_kv_heads=1)).eval()  # K = 320
    ref = P.to_packed(copy.deepcopy(model))
    small = P.to_packed(copy.deepcopy(model), format="1.6")
    idx = torch.randint(0, 256, (2, 12))
    assert torch.equal(small(idx)[0], ref(idx)[0]) and torch.equal(small(idx)[0], model(idx)[0])
    assert P.weight_bytes_per_token(small)["linear"] < P.weight_bytes_per_token(ref)["linear"]
    assert {m.w.format for m in small.modules() if isinstance(m, P.PackedBitLinear)} == {"1.6"}
    with pytest.raises(DecodeError, match="unknown packed format"):
        P.to_packed(copy.deepcopy(model), format="3")
