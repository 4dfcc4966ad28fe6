"""Generation (bitnet_ref/generate.py) on the torch model: KV cache vs full recompute, sampling under a seed,
argument checks, and the model's mode. The packed model through the same code is tests/test_packed.py."""

import pytest
import torch
from _decode_ckpt import trained_checkpoint

from bitnet_ref import generate as G
from bitnet_ref.checkpoint import build_model, load_checkpoint
from bitnet_ref.data.rebuild import reload
from bitnet_ref.diversity import probe_prompts
from bitnet_ref.generate import DecodeError
from bitnet_ref.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def trained():
    ckpt = load_checkpoint(trained_checkpoint())
    prompts = probe_prompts(reload(ckpt["data"]).val, 6, 16)
    return ckpt, prompts


def test_kv_cache_matches_recompute_for_torch_without_extension(trained):
    # the torch path does not need the extension; this runs everywhere
    ckpt, prompts = trained
    model = build_model(ckpt)
    assert G.generate(model, prompts[:2], 30).tokens == G.generate_reference(model, prompts[:2], 30)


def test_sampling_is_seeded_and_top_k_1_is_greedy(trained):
    ckpt, prompts = trained
    model = build_model(ckpt)
    a = G.generate(model, prompts[:2], 30, temperature=1.0, seed=3).tokens
    assert a == G.generate(model, prompts[:2], 30, temperature=1.0, seed=3).tokens
    assert a != G.generate(model, prompts[:2], 30, temperature=1.0, seed=4).tokens
    greedy = G.generate(model, prompts[:2], 30).tokens
    assert G.generate(model, prompts[:2], 30, temperature=0.7, top_k=1, seed=5).tokens == greedy


def test_generate_refuses_more_than_the_context(trained):
    ckpt, _ = trained
    model = build_model(ckpt)
    with pytest.raises(G.DecodeError, match="context"):
        G.generate(model, [[1] * 60], 10)


def test_one_decode_error_class_for_loading_and_decoding():
    assert DecodeError is G.DecodeError and issubclass(G.DecodeError, ValueError)


def test_generate_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    want = G.generate(model.eval(), [[1, 2, 3]], 4).tokens
    model.train()
    assert G.generate(model, [[1, 2, 3]], 4).tokens == want
    assert model.training and seen and not any(seen)


def rope_restarts_in_the_cache(monkeypatch):
    """A decode-path fault every cached path shares: decode steps through the KV cache get RoPE angles from 0."""
    forward = Transformer.forward

    def fwd(self, idx, targets=None, cache=None, **kw):
        if cache is None or cache.pos == 0:
            return forward(self, idx, targets, cache, **kw)
        cos, sin, p = self.rope_cos, self.rope_sin, cache.pos
        self.rope_cos, self.rope_sin = cos.roll(p, 0), sin.roll(p, 0)
        try:
            return forward(self, idx, targets, cache, **kw)
        finally:
            self.rope_cos, self.rope_sin = cos, sin

    monkeypatch.setattr(Transformer, "forward", fwd)


def test_recompute_check_agrees_on_a_sound_cache_and_not_on_a_broken_one(trained, monkeypatch):
    ckpt, prompts = trained
    model = build_model(ckpt)
    ok = G.recompute_check(model, prompts[:3], 24)
    assert ok["ok"] and ok["samples_identical"] == 3 and ok["disagreements"] == 0
    assert ok["max_rel_logit_diff"] <= G.RECOMPUTE_REL_TOL / 100  # the same arithmetic, another order
    rope_restarts_in_the_cache(monkeypatch)
    bad = G.recompute_check(model, prompts[:3], 24)
    assert not bad["ok"] and bad["disagreements"] > 0 and bad["max_rel_logit_diff"] > 0.05
    assert bad["first_disagreement"]["position"] >= 1  # the first token comes from the prefill: always right
