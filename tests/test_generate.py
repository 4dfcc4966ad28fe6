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
