"""BitLinear against a hand-computed case, the Transformer's shapes/causality/KV cache, config validation, ablations."""

import dataclasses

import pytest
import torch

from bitnet_ref.model import ABLATIONS, PRESETS, BitLinear, ModelConfig, Transformer


def tiny(**kw):
    return ModelConfig.preset("tiny", **kw)


def build(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(tiny(**kw))


# ---- BitLinear -------------------------------------------------------------------------------------------------


def _hand_layer(quant):
    layer = BitLinear(3, 2, quant=quant)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 0.0], [0.1, 0.3, -0.7]]))
    return layer


X = torch.tensor([[5.0, 1.0, -1.0]])  # RMS = sqrt((25 + 1 + 1) / 3) = 3, so RMSNorm(x) = [5/3, 1/3, -1/3]


def test_bitlinear_hand_computed_ternary():
    # weight: beta = mean|W| = 1.8 / 6 = 0.3; W / beta = [[1.67, -0.67, 0], [0.33, 1, -2.33]] -> codes
    #         [[1, -1, 0], [0, 1, -1]]
    # input:  absmax 5/3, q = round([5/3, 1/3, -1/3] * 127 / (5/3)) = round([127, 25.4, -25.4]) = [127, 25, -25],
    #         gamma = (5/3) / 127
    # y = gamma * beta * q @ codes.T = (0.5 / 127) * [127 - 25, 25 + 25] = [51/127, 25/127]
    y = _hand_layer("ternary")(X)
    assert y.shape == (1, 2)
    assert y[0].tolist() == pytest.approx([51 / 127, 25 / 127], abs=1e-6)
    codes, beta = _hand_layer("ternary").ternary_state()
    assert codes.tolist() == [[1, -1, 0], [0, 1, -1]] and beta == pytest.approx(0.3)


def test_bitlinear_hand_computed_fp():
    # y = [5/3 * 0.5 - 1/3 * 0.2, 5/3 * 0.1 + 1/3 * 0.3 + 1/3 * 0.7] = [23/30, 1/2]
    y = _hand_layer("none")(X)
    assert y[0].tolist() == pytest.approx([23 / 30, 1 / 2], abs=1e-6)


def test_bitlinear_no_dequant_is_off_by_the_scales():
    layer = BitLinear(3, 2, ablate=("no-dequant",))
    with torch.no_grad():
        layer.weight.copy_(_hand_layer("ternary").weight)
    assert layer(X)[0].tolist() == pytest.approx([102.0, 50.0], abs=1e-4)  # q @ codes.T, no gamma * beta


def test_bitlinear_gradient_reaches_every_weight_and_the_input():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad.ne(0).all() and x.grad.ne(0).any() and layer.norm.weight.grad.ne(0).any()


# ---- the Transformer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["ternary", "none"])
@pytest.mark.parametrize("act", ["relu2", "swiglu"])
def test_shapes_and_finite_loss(quant, act):
    model = build(quant=quant, ffn_act=act)
    idx = torch.randint(0, 256, (2, 10))
    logits, loss = model(idx, targets=idx)
    assert logits.shape == (2, 10, 256) and logits.dtype == torch.float32
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.5
    assert model(idx)[1] is None


def test_causal():
    model = build()
    idx = torch.randint(0, 256, (1, 12))
    idx2 = idx.clone()
    idx2[0, 7:] = (idx2[0, 7:] + 1) % 256
    a, b = model(idx)[0], model(idx2)[0]
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("quant,dtype", [("ternary", torch.float64), ("none", torch.float64), ("none", torch.float32)])
def test_kv_cache_matches_full_recompute(quant, dtype):
    # Ternary runs in float64: in float32 the attention's summation order differs between the two paths by
    # ~1e-7, and round() in the next BitLinear occasionally turns that into a code flip (a real, if rare,
    # ~1e-2 logit difference). float64 makes flips vanishingly unlikely, so this tests the cache logic.
    model = build(quant=quant).to(dtype).eval()
    idx = torch.randint(0, 256, (2, 20))
    full = model(idx)[0]
    cache = model.new_cache(2, 32)
    parts = [model(idx[:, :5], cache=cache)[0]]  # causal prefill of 5 tokens
    for t in range(5, 20):
        parts.append(model(idx[:, t : t + 1], cache=cache)[0])
    assert cache.pos == 20
    assert torch.allclose(torch.cat(parts, dim=1).to(full.dtype), full, atol=1e-5, rtol=0)


def test_last_only_is_the_last_position_of_the_full_forward():
    model = build()
    idx = torch.randint(0, 256, (2, 9))
    full = model(idx)[0]
    # the head's matmul on one row may round differently from the same row inside nine (BLAS blocking)
    assert torch.allclose(model(idx, last_only=True)[0], full[:, -1:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="last_only"):
        model(idx, idx, last_only=True)


def test_cache_and_context_limits():
    model = build()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 65, dtype=torch.long))  # tiny context is 64
    with pytest.raises(ValueError):
        model.new_cache(1, 65)
    cache = model.new_cache(1, 4)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_bf16_autocast_forward_backward():
    model = build()
    idx = torch.randint(0, 256, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets=idx)
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(m.weight.grad is not None for _, m in model.bitlinears())


def test_quant_none_has_the_same_parameters():
    a, b = build(quant="ternary"), build(quant="none")
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes(a) == shapes(b)
    assert sum(p.numel() for p in a.parameters()) == a.cfg.num_params()
    assert len(list(a.bitlinears())) == 7 * a.cfg.n_layers
    b.load_state_dict(a.state_dict())  # a checkpoint moves between the two


def test_tied_embeddings():
    m = build(tie_embeddings=True)
    assert m.head.weight is m.tok_emb.weight
    assert sum(p.numel() for p in m.parameters()) == m.cfg.num_params()


def test_reference_gradient_reaches_every_bitlinear():
    model = build()
    idx = torch.randint(0, 256, (2, 16))
    model(idx, targets=idx)[1].backward()
    for name, m in model.bitlinears():
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, name


def test_no_ste_gives_no_latent_weight_gradient():
    model = build(ablate=["no-ste"])
    idx = torch.randint(0, 256, (2, 16))
    model(idx, targets=idx)[1].backward()
    for name, m in model.bitlinears():
        assert m.weight.grad is None or not m.weight.grad.any(), name
    assert model.head.weight.grad.abs().sum() > 0  # the full-precision path still learns


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_runs_forward_and_backward(name):
    model = build(ablate=[name])
    idx = torch.randint(0, 256, (2, 8))
    logits, loss = model(idx, targets=idx)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.tok_emb.weight.grad is not None
    if name == "no-subln":
        assert all(isinstance(m.norm, torch.nn.Identity) for _, m in model.bitlinears())


def test_quant_head_makes_head_and_embedding_ternary():
    model = build(ablate=["quant-head"])
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    idx = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        a = model(idx)[0]
        # the embedding rows the first block sees are ternary codes times one beta (up to the STE's rounding)
        r = seen[0].abs() / seen[0].abs().max()
        assert torch.allclose(r, r.round(), atol=1e-5) and r.round().eq(0).any()
        # scaling the head by 2 keeps its codes and doubles its beta, so the logits double exactly
        model.head.weight.mul_(2)
        assert torch.allclose(model(idx)[0], 2 * a, rtol=1e-5, atol=1e-6)


# ---- config ----------------------------------------------------------------------------------------------------


def test_presets_and_round_trip():
    for d in PRESETS.values():
        cfg = ModelConfig.from_dict(d)
        assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert ModelConfig.preset("default").d_model == 256
    assert ModelConfig.preset("wide").d_model == 2048
    assert ModelConfig(d_model=256).ffn_hidden == 704  # 8/3 * 256 rounded up to a multiple of 64
    assert ModelConfig.from_dict({"rope_theta": 10000}).rope_theta == 10000.0  # an int is a fine float


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": 1},
        {"d_model": "256"},
        {"d_model": 256.0},
        {"n_layers": True},
        {"tie_embeddings": 1},
        {"ablate": "no-ste"},
        {"ablate": [3]},
        {"ablate": ["not-an-ablation"]},
        {"ablate": ["no-ste", "no-ste"]},
        {"ablate": ["no-ste", "clamp-ste"]},
        {"quant": "none", "ablate": ["no-ste"]},
        {"quant": "int4"},
        {"ffn_act": "gelu"},
        {"d_model": 250, "n_heads": 4},
        {"d_model": 60, "n_heads": 4},  # head_dim 15 is odd: RoPE needs pairs
        {"n_layers": 0},
        {"context": -1},
        {"norm_eps": float("nan")},
        {"rope_theta": 0.0},
        {"d_model": 32768, "n_heads": 8},
        {"vocab_size": (1 << 20) + 1},
        {"d_model": 8192, "n_heads": 64, "n_layers": 64},  # ~ 51e9 parameters
        {"vocab_size": 1 << 20, "d_model": 2048, "n_heads": 16},  # huge embedding + head
        {"d_model": 16384, "n_heads": 1, "n_layers": 1, "ffn_hidden": 1, "context": 1 << 17},  # 17 GB RoPE tables
    ],
)
def test_from_dict_rejects(bad):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_dict(bad)
    assert "\n" not in str(e.value)


def test_from_dict_rejects_non_dict():
    with pytest.raises(ValueError):
        ModelConfig.from_dict(["d_model", 256])


@pytest.mark.parametrize("name", ["no-ste", "clamp-ste"])
def test_broken_ste_ablations_keep_the_reference_forward_value(name):
    # they change only the latent-weight gradient, so their models decode through the packed path with exact
    # parity; the weights here are spread so that some are clipped, where clamp-ste's gradient differs
    ref, abl = build(seed=3), build(seed=3, ablate=[name])
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(ref(idx)[0], abl(idx)[0])
    ref(idx, targets=idx)[1].backward()
    abl(idx, targets=idx)[1].backward()
    norms = [(n, p, dict(abl.named_parameters())[n]) for n, p in ref.named_parameters() if "norm" in n]
    assert len(norms) >= 4 and all(torch.equal(r.grad, a.grad) for _, r, a in norms)  # same gradient to the norms
    (_, r), (_, a) = next(iter(ref.bitlinears())), next(iter(abl.bitlinears()))
    assert a.weight.grad is None or not torch.equal(r.weight.grad, a.weight.grad)  # a different (broken) one
