"""Health metrics: pure functions on hand-made tensors, then the tracker on a tiny model with each ablation."""

import json
import math

import pytest
import torch

from bitnet_ref import health as H
from bitnet_ref.model import ModelConfig, Transformer

# ---------------------------------------------------------------------------- pure functions


def test_code_fractions_counts_each_code():
    codes = torch.tensor([[-1, 0, 1, 1], [0, 0, 1, -1]], dtype=torch.int8)
    f = H.code_fractions(codes)
    assert f == {"frac_neg": 2 / 8, "frac_zero": 3 / 8, "frac_pos": 3 / 8}


def test_code_fractions_rejects_empty():
    with pytest.raises(ValueError):
        H.code_fractions(torch.zeros(0, dtype=torch.int8))


def test_flip_rate_is_share_of_changed_codes():
    a = torch.tensor([-1, 0, 1, 1, 0], dtype=torch.int8)
    b = torch.tensor([-1, 1, 1, 0, 0], dtype=torch.int8)
    assert H.flip_rate(a, b) == 2 / 5
    assert H.flip_rate(a, a) == 0.0
    with pytest.raises(ValueError):
        H.flip_rate(a, b[:4])


def test_threshold_share_counts_weights_near_half_and_clip():
    beta = 2.0
    # |w|/beta: 0.46 (near 0.5), 0.54 (near), 0.56 (not), 1.0 (not), 1.52 (near 1.5), -0.51 (near, sign ignored)
    w = torch.tensor([0.92, 1.08, 1.12, 2.0, 3.04, -1.02])
    assert H.threshold_share(w, beta) == pytest.approx(3 / 6)
    assert H.threshold_share(w, beta, threshold=1.5) == pytest.approx(1 / 6)
    assert H.threshold_share(w, beta, margin=0.07) == pytest.approx(4 / 6)


def test_grad_split_separates_zero_codes_saturated_codes_and_clip_region():
    beta = 1.0
    w = torch.tensor([0.1, -0.2, 0.9, -1.2, 2.0, -3.0])  # codes 0, 0, 1, -1, clip, clip
    g = torch.tensor([1.0, 1.0, 2.0, 2.0, 0.0, 0.0])
    s = H.grad_split(g, w, beta)
    assert s["grad_norm"] == pytest.approx(math.sqrt(1 + 1 + 4 + 4))
    assert s["grad_rms_zero"] == pytest.approx(1.0)
    assert s["grad_rms_sat"] == pytest.approx(math.sqrt(8 / 4))
    assert s["grad_dead_zero"] == 0.0
    assert s["grad_dead_sat"] == 0.5
    assert s["grad_dead_clip"] == 1.0


def test_grad_split_treats_a_missing_gradient_as_zero_and_empty_groups_as_none():
    w = torch.tensor([0.9, 1.1])  # no 0 codes, no clip region
    s = H.grad_split(None, w, 1.0)
    assert s["grad_norm"] == 0.0 and s["grad_dead_sat"] == 1.0
    assert s["grad_rms_zero"] is None and s["grad_dead_zero"] is None and s["grad_dead_clip"] is None


def test_update_ratio():
    before = torch.tensor([3.0, 4.0])
    assert H.update_ratio(before, torch.tensor([3.0, 4.5])) == pytest.approx(0.1)
    assert H.update_ratio(before, before.clone()) == 0.0
    assert H.update_ratio(torch.zeros(2), torch.zeros(2)) == 0.0
    assert H.update_ratio(torch.zeros(2), torch.ones(2)) == math.inf


def test_next_token_stats_uniform_and_peaked():
    ent, top = H.next_token_stats(torch.zeros(2, 3, 8))
    assert ent == pytest.approx(math.log(8)) and top == pytest.approx(1 / 8)
    peaked = torch.full((1, 1, 4), -1e4)
    peaked[..., 2] = 0
    ent, top = H.next_token_stats(peaked)
    assert ent == pytest.approx(0.0, abs=1e-6) and top == pytest.approx(1.0)


def test_distinct_levels_sees_ternary_rows_through_float_residue():
    beta = 0.0173
    ternary = torch.tensor([[-1, 0, 1, 1, 0, -1, 1, 1]]) * beta
    w = torch.randn(1, 8) * 0.02
    ste = w + (ternary - w).detach()  # equals the ternary row only up to rounding
    assert H.distinct_levels(ste) == 3
    assert H.distinct_levels(torch.randn(4, 64)) > 60


def test_lattice_share_separates_integer_products_from_real_logits():
    torch.manual_seed(0)
    ints = torch.randint(-3000, 3000, (16, 256)).double()
    unit = torch.rand(16, 1).double() * 1e-3 + 1e-4  # one lattice unit per row, like gamma_t * beta
    lattice = (ints * unit + 0.25).float()  # float32, like real logits
    assert H.lattice_share(lattice) > 0.95
    assert H.lattice_share(torch.randn(16, 256)) < 0.15
    assert H.lattice_share(torch.ones(3, 5)) is None  # constant rows say nothing


def test_mean_over_skips_missing_and_non_finite():
    layers = {"a": {"x": 1.0}, "b": {"x": None}, "c": {"x": 3.0}, "d": {"x": float("nan")}, "e": {}}
    assert H.mean_over(layers, "x") == 2.0
    assert H.mean_over(layers, "y") is None


def test_finite_or_none():
    assert H.finite_or_none({"a": [1.0, float("inf")], "b": {"c": float("nan")}, "d": 2}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": 2,
    }


# ---------------------------------------------------------------------------- the tracker on a real model


def _tracked(ablate=(), quant="ternary", steps=3):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", ablate=list(ablate), quant=quant))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker = H.HealthTracker()
    x = torch.randint(0, 256, (4, 32))  # (B, T)
    y = torch.randint(0, 256, (4, 32))
    first = tracker.evaluate(model, x, step=0)
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        tracker.after_backward(model)
        opt.step()
        tracker.after_step(model)
    return first, tracker.evaluate(model, x, step=steps)


def test_tracker_record_schema_and_json():
    first, rec = _tracked()
    names = [n for n, _ in Transformer(ModelConfig.preset("tiny")).bitlinears()]
    assert set(rec["layers"]) == set(names)
    layer = rec["layers"][names[0]]
    for k in (
        "frac_neg",
        "frac_zero",
        "frac_pos",
        "flip_rate",
        "flip_steps",
        "beta",
        "w_rms",
        "near_thr",
        "near_clip",
        "beyond_clip",
        *H.GRAD_FIELDS,
        "update_ratio",
        "act_in_rms",
        "out_ratio",
    ):
        assert k in layer, k
    assert layer["frac_neg"] + layer["frac_zero"] + layer["frac_pos"] == pytest.approx(1.0)
    assert layer["flip_steps"] == 3
    assert first["layers"][names[0]]["flip_rate"] is None  # nothing to compare with yet
    assert first["health_grad_norm"] is None  # no backward pass seen yet
    for k in (
        "health_frac_zero",
        "health_flip_rate",
        "health_grad_norm",
        "health_update_ratio",
        "health_act_in_rms",
        "health_out_ratio",
        "health_entropy",
        "health_top1",
        "health_embed_levels",
        "health_logit_lattice",
    ):
        assert isinstance(rec[k], float), k
    json.dumps(rec, allow_nan=False)  # what the trainer writes: strict JSON


def test_tracker_reference_model_values_are_in_healthy_ranges():
    _, rec = _tracked()
    assert 0.2 < rec["health_frac_zero"] < 0.45  # Gaussian init + absmean: ~31%
    assert rec["health_flip_rate"] > 0  # training moves codes
    assert rec["health_grad_norm"] > 0 and rec["health_grad_dead_clip"] < 0.5
    assert 0.5 < rec["health_act_in_rms"] < 2.0  # behind RMSNorm
    assert 0.4 < rec["health_out_ratio"] < 1.2
    assert rec["health_embed_levels"] > 30 and rec["health_logit_lattice"] < 0.2


@pytest.mark.parametrize(
    "ablate, key, check",
    [
        ("no-ste", "health_grad_norm", lambda v: v == 0.0),
        ("clamp-ste", "health_grad_dead_clip", lambda v: v == 1.0),
        ("no-subln", "health_act_in_rms", lambda v: v < 0.2),
        ("no-dequant", "health_out_ratio", lambda v: v > 50),
        ("quant-head", "health_embed_levels", lambda v: v <= 3),
        ("quant-head", "health_logit_lattice", lambda v: v > 0.9),
    ],
)
def test_tracker_shows_each_ablation_signature(ablate, key, check):
    _, rec = _tracked([ablate])
    assert check(rec[key]), (ablate, key, rec[key])


def test_no_ste_never_flips_codes():
    _, rec = _tracked(["no-ste"])
    assert rec["health_flip_rate"] == 0.0 and rec["health_update_ratio"] == 0.0


def test_tracker_restores_training_mode_and_leaves_no_hooks():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    model.train()
    H.HealthTracker().evaluate(model, torch.randint(0, 256, (2, 8)), step=0)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_float_grid_share_tells_coarse_float_rounding_from_fp32_and_int8_lattices():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * 3  # fp32 logits
    assert H.float_grid_share(x) < 0.01
    assert H.float_grid_share(x.to(torch.bfloat16).float()) == 1.0
    assert H.float_grid_share(x.to(torch.float16).float()) == 1.0
    assert H.float_grid_share(x.clamp(-448, 448).to(torch.float8_e4m3fn).float()) == 1.0
    ints = torch.randint(-5000, 5000, (64, 256)).float() * 0.0123457  # int8 x ternary: integers x an fp32 scale
    assert H.lattice_share(ints) > 0.9 and H.float_grid_share(ints) < 0.1
    assert H.float_grid_share(torch.zeros(3)) is None


def test_tracker_groups_show_where_gradient_flows():
    _, rec = _tracked()
    g = rec["groups"]
    assert set(g) == {"latent", "norm", "embed", "head"}
    for v in g.values():
        assert v["grad_norm"] > 0 and 0 <= v["grad_zero"] <= 1 and v["update_ratio"] > 0 and v["numel"] > 0
    assert rec["health_grad_zero"] < 0.5
    _, rec = _tracked(["no-ste"])
    assert rec["groups"]["latent"]["grad_norm"] == 0.0 and rec["groups"]["latent"]["grad_zero"] == 1.0
    assert rec["groups"]["norm"]["grad_norm"] > 0
