"""The fused path (bitnet_ref/runtime/fused.py, cpp/decode_step.cpp) against the exact packed path, its oracle:
identical greedy tokens on fixed prompts (generate: a prompt in one call, then a batch of sequences a step at a
time) and logits within FUSED_REL_TOL (the float glue rounds differently from torch's, so not bit for bit); among
its own calls bit for bit (a prompt in one call or a token at a time, sequences batched or alone, at different
positions); and the FusedDecoder binding refusing bad input before it reads anything."""

import copy

import numpy as np
import pytest
import torch
from _decode_ckpt import needs_ext, trained_checkpoint

from bitnet_ref import generate as G
from bitnet_ref.checkpoint import load_checkpoint
from bitnet_ref.data.rebuild import reload
from bitnet_ref.decode import loader as L
from bitnet_ref.diversity import probe_prompts
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.fused import FUSED_REL_TOL, FusedTransformer
from bitnet_ref.runtime.int8_head import to_int8_head


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def trained():
    path = trained_checkpoint()
    prompts = probe_prompts(reload(load_checkpoint(path)["data"]).val, 6, 16)
    return path, prompts


@needs_ext
@pytest.mark.parametrize("head", ["fp32", "int8"])
def test_fused_matches_the_exact_packed_path_on_a_trained_checkpoint(trained, head):
    path, prompts = trained
    exact = L.load_for_decode(path, "packed", head=head).model
    fused = L.load_for_decode(path, "packed", head=head, fused=True).model
    assert isinstance(fused, FusedTransformer)
    # the six prompts as one batch: each group's prompt in one call, then batched decode steps
    a, b = G.generate(exact, prompts, 48, keep_logits=True), G.generate(fused, prompts, 48, keep_logits=True)
    assert a.tokens == b.tokens
    assert a.logits is not None and b.logits is not None
    assert rel_diff(torch.stack(b.logits), torch.stack(a.logits)) <= FUSED_REL_TOL  # the logits each token came from
    seqs = [p + t for p, t in zip(prompts, a.tokens)]
    la, lb = G.teacher_forced(exact, seqs), G.teacher_forced(fused, seqs)  # (B, T, V)
    assert rel_diff(lb, la) <= FUSED_REL_TOL
    assert not torch.equal(la, torch.zeros_like(la))


@needs_ext
@pytest.mark.parametrize("over", [dict(), dict(n_kv_heads=1, ffn_act="swiglu", tie_embeddings=True)])
def test_fused_forward_is_close_to_the_exact_forward_on_random_models(over):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", **over)).eval()
    exact = to_int8_head(P.to_packed(copy.deepcopy(model))) if over else P.to_packed(copy.deepcopy(model))
    fused = FusedTransformer(exact)
    idx = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert rel_diff(fused(idx)[0], exact(idx)[0]) <= FUSED_REL_TOL
    # through the cache, a position at a time, after a prompt: the same as one full forward; and every position a
    # step of its own; and the prompt's last logits alone
    whole = fused(idx)[0]
    cache = fused.new_cache(2, 20)
    steps = [fused(idx[:, :12], cache=cache)[0]] + [fused(idx[:, t : t + 1], cache=cache)[0] for t in range(12, 20)]
    assert torch.equal(torch.cat(steps, 1), whole)
    cache = fused.new_cache(2, 20)
    assert torch.equal(torch.cat([fused(idx[:, t : t + 1], cache=cache)[0] for t in range(20)], 1), whole)
    assert torch.equal(fused(idx, cache=fused.new_cache(2, 20), last_only=True)[0], whole[:, -1:])


@needs_ext
def test_fused_batch_at_different_positions_equals_each_sequence_alone():
    torch.manual_seed(0)
    exact = P.to_packed(Transformer(ModelConfig.preset("tiny", n_kv_heads=1)).eval())
    fused = FusedTransformer(exact)
    seqs = [torch.randint(0, 256, (1, n + 2)) for n in (3, 7, 5)]
    cache = fused.new_cache(3, 16)
    for i, s in enumerate(seqs):  # each prompt alone into its own slice of one cache
        fused(s[:, :-2], cache=cache.sequences(i, i + 1), last_only=True)
    assert cache.pos.tolist() == [3, 7, 5]
    got = fused(torch.cat([s[:, -2:] for s in seqs]), cache=cache)[0]  # (3, 2, V): one call, three positions
    assert cache.pos.tolist() == [5, 9, 7]
    for i, s in enumerate(seqs):
        assert torch.equal(got[i : i + 1], fused(s)[0][:, -2:])
        with torch.no_grad():
            assert rel_diff(got[i : i + 1], exact(s)[0][:, -2:]) <= FUSED_REL_TOL


@needs_ext
def test_generate_batches_through_the_fused_path_as_each_prompt_alone():
    torch.manual_seed(0)
    fused = FusedTransformer(P.to_packed(Transformer(ModelConfig.preset("tiny")).eval()))
    prompts = [[(5 * i + j) % 256 for j in range(6)] for i in range(4)] + [[9, 8, 7]]
    batched = G.generate(fused, prompts, 10).tokens  # a batch of four (length 6) and one of one (length 3)
    assert batched == [G.generate(fused, [p], 10).tokens[0] for p in prompts]

    class Recorder:  # the decoder's calls, as the (B, T) of the tokens each one was handed
        def __init__(self, decoder):
            self.decoder, self.calls = decoder, []

        def forward(self, ids, *args):
            self.calls.append(ids.shape)
            return self.decoder.forward(ids, *args)

    fused.decoder = rec = Recorder(fused.decoder)
    assert G.generate(fused, prompts, 10).tokens == batched
    # each group's prompt in one call, then one call a step for the whole group (batched decoding)
    assert rec.calls == [(4, 6)] + [(4, 1)] * 9 + [(1, 3)] + [(1, 1)] * 9


@needs_ext
def test_fused_runs_the_1_6_bit_format_to_the_same_logits():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", d_model=320, ffn_hidden=320, n_kv_heads=1)).eval()
    two = FusedTransformer(P.to_packed(copy.deepcopy(model)))
    small = FusedTransformer(P.to_packed(copy.deepcopy(model), format="1.6"))
    idx = torch.randint(0, 256, (1, 10))
    assert torch.equal(two(idx)[0], small(idx)[0])  # the same integer products, the same float glue


@needs_ext
def test_fused_refuses_what_it_cannot_run():
    model = Transformer(ModelConfig.preset("tiny", layout="per-linear-norm")).eval()
    with pytest.raises(G.DecodeError, match="official layout"):
        FusedTransformer(P.to_packed(model))
    with pytest.raises(G.DecodeError, match="packed model"):
        FusedTransformer(Transformer(ModelConfig.preset("tiny")).eval())


@needs_ext
def test_fused_decoder_checks_its_arguments_first():
    torch.manual_seed(0)
    fused = FusedTransformer(P.to_packed(Transformer(ModelConfig.preset("tiny")).eval()))
    dec, cache = fused.decoder, fused.new_cache(1, 8)
    tok = np.array([3], np.int64)
    bad = [
        ((np.array([256], np.int64), 0, cache.k, cache.v), ValueError, "vocabulary"),
        ((np.array([-1], np.int64), 0, cache.k, cache.v), ValueError, "vocabulary"),
        ((tok, 8, cache.k, cache.v), ValueError, "outside the cache"),
        ((tok, -1, cache.k, cache.v), ValueError, "outside the cache"),
        ((tok.astype(np.int32), 0, cache.k, cache.v), TypeError, "int64"),
        ((tok, 0, np.zeros(cache.k.shape[:-1] + (3,), np.float32), cache.v), ValueError, "shape"),
        ((tok, 0, cache.k.astype(np.float64), cache.v), TypeError, "float32"),
        ((tok, 0, np.asfortranarray(cache.k), cache.v), ValueError, "contiguous"),
        ((tok, 0, [0.0], cache.v), TypeError, "numpy array"),
        ((np.array([3, 4], np.int64), 0, cache.k, cache.v), ValueError, "shape"),
        ((tok, np.array([0, 0], np.int64), cache.k, cache.v), ValueError, "shape"),
        ((tok, np.array([9], np.int64), cache.k, cache.v), ValueError, "outside the cache"),
        ((tok, np.array([0], np.int32), cache.k, cache.v), TypeError, "int64"),
        ((tok, 0.0, cache.k, cache.v), TypeError, "pos must be"),
        ((tok, 0, cache.k, cache.k), ValueError, "overlap"),
    ]
    for args, exc, msg in bad:
        with pytest.raises(exc, match=msg) as e:
            dec.step(*args)
        assert "\n" not in str(e.value)
    bad_forward = [
        ((tok, 0, cache.k, cache.v), ValueError, "2-D"),
        ((np.zeros((1, 0), np.int64), 0, cache.k, cache.v), ValueError, "at least one position"),
        ((np.zeros((1, 9), np.int64), 0, cache.k, cache.v), ValueError, "outside the cache"),
        ((np.zeros((1, 4), np.int64), 5, cache.k, cache.v), ValueError, "outside the cache"),
        ((np.full((1, 3), 256, np.int64), 0, cache.k, cache.v), ValueError, "vocabulary"),
        ((np.zeros((2, 3), np.int64), 0, cache.k, cache.v), ValueError, "shape"),
        ((np.zeros((1, 3), np.int64)[:, ::2], 0, cache.k, cache.v), ValueError, "contiguous"),
    ]
    for args, exc, msg in bad_forward:
        with pytest.raises(exc, match=msg) as e:
            dec.forward(*args)
        assert "\n" not in str(e.value)
    assert np.all(cache.k == 0)  # nothing was written by a refused call
    assert dec.step(tok, 0, cache.k, cache.v).shape == (1, 256)
    assert dec.forward(np.zeros((1, 3), np.int64), 1, cache.k, cache.v).shape == (1, 3, 256)
    assert dec.forward(np.zeros((1, 3), np.int64), np.array([4]), cache.k, cache.v, True).shape == (1, 256)
    core = kernels._load()
    with pytest.raises(ValueError, match="7 \\(packed, beta\\) pairs"):
        core.FusedDecoder(
            dict(
                d_model=64,
                n_heads=2,
                n_kv_heads=2,
                ffn_hidden=192,
                vocab_size=256,
                context=64,
                n_layers=1,
                swiglu=False,
                eps=1e-5,
            ),
            [],
            [],
            np.ones(64, np.float32),
            (None, None, None),
            (None, None, None),
            np.ones((64, 32), np.float32),
            np.ones((64, 32), np.float32),
        )


@needs_ext
def test_fused_reports_non_finite_activations_in_one_line():
    torch.manual_seed(0)
    model = P.to_packed(Transformer(ModelConfig.preset("tiny")).eval())
    with torch.no_grad():
        model.tok_emb.weight[7] = float("inf")
    with pytest.raises(G.DecodeError, match="non-finite") as e:
        FusedTransformer(model)(torch.tensor([[7]]))
    assert "\n" not in str(e.value)
