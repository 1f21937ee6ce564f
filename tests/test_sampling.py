"""Sampling filters against brute-force definitions, and the penalty's direction."""

import random

import pytest
import torch

from xldemo.engine import GenerationSettings
from xldemo.sampling import (choose_tokens, choose_tokens_apart, exponential_noise, filter_logits, filter_logits_apart,
                             penalize_repeats, race)

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])


def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def test_top_k_keeps_the_k_largest():
    assert kept(filter_logits(LOGITS, top_k=2)) == {0, 1}
    assert kept(filter_logits(LOGITS, top_k=0)) == set(range(6))


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.6, 0.8, 0.95, 0.999])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p):
    probs = LOGITS.softmax(-1)[0].tolist()  # already sorted, largest first
    total, expected = 0.0, set()
    for i, p in enumerate(probs):
        expected.add(i)
        total += p
        if total >= top_p:
            break
    assert kept(filter_logits(LOGITS, top_p=top_p)) == expected


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = LOGITS.softmax(-1)[0]
    expected = {i for i, p in enumerate(probs.tolist()) if p >= 0.2 * probs.max().item()}
    assert kept(filter_logits(LOGITS, min_p=0.2)) == expected


def test_repetition_penalty_lowers_seen_tokens_either_sign():
    seen = torch.tensor([[True, False, False, False, True, False]])
    out = penalize_repeats(LOGITS, seen, 2.0)
    assert out[0, 0] == 1.0 and out[0, 4] == -2.0 and torch.equal(out[0, 1:4], LOGITS[0, 1:4])


def test_greedy_is_argmax_after_penalty_and_sampling_respects_filters():
    seen = torch.zeros(1, 6, dtype=torch.bool)
    seen[0, 0] = True
    greedy = choose_tokens(LOGITS, seen, GenerationSettings(temperature=0, repetition_penalty=3.0), None)
    assert greedy.item() == 1
    generator = torch.Generator().manual_seed(0)
    draws = {choose_tokens(LOGITS, seen, GenerationSettings(top_k=3), generator).item() for _ in range(200)}
    assert draws == {0, 1, 2}


@pytest.mark.parametrize("settings", [GenerationSettings(temperature=1.0, top_p=0.9, repetition_penalty=1.3),
                                      GenerationSettings(temperature=0.7, top_k=3, min_p=0.05),
                                      GenerationSettings(temperature=0)])
def test_rows_drawn_apart_are_what_each_row_draws_alone(settings):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    seen = torch.rand(4, 50, generator=torch.Generator().manual_seed(1)) < 0.2
    for draw in range(20):
        together = choose_tokens_apart(logits, seen, [settings] * 4, [torch.Generator().manual_seed(draw * 4 + i)
                                                                      for i in range(4)])
        alone = [choose_tokens(logits[i:i + 1], seen[i:i + 1], settings, torch.Generator().manual_seed(draw * 4 + i))
                 for i in range(4)]
        assert together.tolist() == torch.cat(alone).tolist()


def test_rows_with_settings_of_their_own_draw_together_as_each_alone():
    nucleus = GenerationSettings(temperature=1.0, top_p=0.9, repetition_penalty=1.3)
    settings = [nucleus, GenerationSettings(temperature=0), GenerationSettings(temperature=0.7, top_k=3, min_p=0.05),
                nucleus]
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2)) * 3
    seen = torch.rand(4, 50, generator=torch.Generator().manual_seed(3)) < 0.2
    for draw in range(20):
        together = choose_tokens_apart(logits, seen, settings, [torch.Generator().manual_seed(draw * 4 + i)
                                                                for i in range(4)])
        alone = [choose_tokens(logits[i:i + 1], seen[i:i + 1], settings[i], torch.Generator().manual_seed(draw * 4 + i))
                 for i in range(4)]
        assert together.tolist() == torch.cat(alone).tolist()


def test_rows_filtered_apart_in_one_pass_are_each_row_filtered_alone_to_the_bit():
    rng = random.Random(0)
    for trial in range(200):
        settings = [GenerationSettings(top_k=rng.choice([0, 1, 3, 20, 50]), top_p=rng.choice([1.0, 0.95, 0.9, 0.5]),
                                       min_p=rng.choice([0.0, 0.05, 0.2])) for _ in range(rng.randint(2, 8))]
        logits = torch.randn(len(settings), 50, generator=torch.Generator().manual_seed(trial)) * rng.choice([1, 3, 8])
        together = filter_logits_apart(logits, settings)
        for i, s in enumerate(settings):  # top_p 1.0 rows included: a cumsum that rounds above 1 must drop nothing
            assert torch.equal(together[i], filter_logits(logits[i:i + 1], s.top_k, s.top_p, s.min_p)[0]), (trial, s)


def test_the_race_draws_each_token_with_its_probability():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([race(probs, exponential_noise(probs, [generator])) for _ in range(40_000)]),
                            minlength=5)
    # 40,000 draws: the standard error of a share is at most 0.0025, so 0.01 is four of them
    torch.testing.assert_close(counts / counts.sum(), probs[0], atol=0.01, rtol=0)
    assert counts[1] == 0


def test_a_zero_draw_never_lets_a_ruled_out_token_win():
    probs = torch.tensor([[0.6, 0.0, 0.4]])
    assert race(probs, torch.tensor([[1.0, 0.0, 1.0]])).item() == 0  # 0 / 0 would be NaN, which argmax picks
    assert race(probs, torch.tensor([[1.0, 1.0, 0.0]])).item() == 2  # a zero draw for a possible token: it wins
