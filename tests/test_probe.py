"""The diversity probe: metrics on hand-made sequences, fixed prompts, greedy decoding through the KV cache."""

import math

import numpy as np
import pytest
import torch

from bitnet_ref.diversity import (
    distinct_n,
    diversity,
    greedy_decode,
    max_repeat_run,
    probe_prompts,
    token_entropy,
    top_token_share,
    unique_tokens,
)
from bitnet_ref.model import ModelConfig, Transformer

COLLAPSED = [[7] * 10, [7] * 10]  # the debugging report's failure: one token forever
HEALTHY = [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9]]


def test_unique_tokens_counts_across_samples():
    assert unique_tokens(COLLAPSED) == 1
    assert unique_tokens(HEALTHY) == 9
    assert unique_tokens([]) == 0
    assert unique_tokens([np.array([3, 3, 4]), torch.tensor([4, 5])]) == 3  # arrays and tensors too


def test_distinct_n_hand_cases():
    assert distinct_n(COLLAPSED, 1) == pytest.approx(1 / 20)
    assert distinct_n(COLLAPSED, 2) == pytest.approx(1 / 18)
    assert distinct_n(HEALTHY, 1) == pytest.approx(9 / 10)  # 5 appears twice
    assert distinct_n(HEALTHY, 2) == 1.0
    # n-grams do not cross sample boundaries: [1,2] + [2,1] has bigrams (1,2) and (2,1) only
    assert distinct_n([[1, 2], [2, 1]], 2) == 1.0
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5
    assert distinct_n([[1]], 2) == 0.0  # no bigrams at all
    with pytest.raises(ValueError):
        distinct_n(HEALTHY, 0)


def test_max_repeat_run():
    assert max_repeat_run(COLLAPSED) == 10
    assert max_repeat_run(HEALTHY) == 1
    assert max_repeat_run([[1, 1, 2, 2, 2, 1], [3, 3]]) == 3
    assert max_repeat_run([[5], [5]]) == 1  # runs do not continue across samples
    assert max_repeat_run([[]]) == 0


def test_top_token_share_and_entropy():
    assert top_token_share(COLLAPSED) == 1.0
    assert token_entropy(COLLAPSED) == 0.0
    assert top_token_share([[1, 1, 1, 2]]) == 0.75
    assert token_entropy([[1, 2, 3, 4]]) == pytest.approx(math.log(4))
    assert token_entropy([[1, 1, 1, 2]]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert top_token_share([]) == 0.0 and token_entropy([]) == 0.0


def test_diversity_keys_and_ordering():
    bad, good = diversity(COLLAPSED), diversity(HEALTHY)
    assert set(bad) == {
        "unique_tokens",
        "distinct_1",
        "distinct_2",
        "max_repeat_run",
        "top_token_share",
        "token_entropy",
        "min_sample_top_share",
    }
    assert good["unique_tokens"] > bad["unique_tokens"]
    assert good["min_sample_top_share"] < bad["min_sample_top_share"]
    assert good["distinct_2"] > bad["distinct_2"]
    assert good["token_entropy"] > bad["token_entropy"]
    assert good["max_repeat_run"] < bad["max_repeat_run"]


def test_probe_prompts_are_fixed_and_evenly_spaced():
    val = np.arange(1000) % 256
    ps = probe_prompts(val, n=4, length=16)
    assert [p[0] for p in ps] == [0, 328 % 256, 656 % 256, 984 % 256]
    assert all(len(p) == 16 for p in ps)
    assert ps[-1] == [int(t) for t in val[-16:]]  # the last prompt ends at the end of the data
    assert probe_prompts(val, n=4, length=16) == ps
    assert probe_prompts(val, n=1, length=5) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError):
        probe_prompts(val[:10], n=2, length=16)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny"))


def test_greedy_decode_matches_full_forward_argmax(tiny_model):
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6]]
    out = greedy_decode(tiny_model, prompts, 10)
    assert [len(o) for o in out] == [10, 10]
    # oracle: no cache, recompute the whole sequence; each chosen token must be the full forward's argmax
    # (up to float noise, so that a near-tie on another CPU's kernels cannot make this flaky)
    with torch.no_grad():
        for p, o in zip(prompts, out):
            seq = list(p)
            for tok in o:
                logits, _ = tiny_model(torch.tensor([seq]))
                last = logits[0, -1]  # (V,)
                assert last[tok] >= last.max() - 1e-4
                seq.append(tok)


def test_greedy_decode_mixed_lengths_restores_mode_and_no_grad(tiny_model):
    tiny_model.train()
    out = greedy_decode(tiny_model, [[1, 2, 3], [4, 5]], 5)
    assert tiny_model.training
    assert out[0] == greedy_decode(tiny_model, [[1, 2, 3]], 5)[0]
    assert out[1] == greedy_decode(tiny_model, [[4, 5]], 5)[0]
    assert all(p.grad is None for p in tiny_model.parameters())
    assert greedy_decode(tiny_model, [[1]], 0) == [[]]
    with pytest.raises(ValueError):
        greedy_decode(tiny_model, [[1] * 60], 10)  # 70 positions > context 64


def test_min_sample_top_share_sees_each_sample_repeat_its_own_token():
    from bitnet_ref.diversity import min_sample_top_share, top_token_share

    loops = [[1] * 10, [2] * 10, [3] * 10, [4] * 9 + [5]]  # four prompts, four different repeated tokens
    assert top_token_share(loops) == 0.25 and min_sample_top_share(loops) == 0.9
    assert min_sample_top_share([[1, 2, 1, 2], [3] * 4]) == 0.5
