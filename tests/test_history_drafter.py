"""The history drafter: its index, and speculation with it staying exact (greedy equality, chi-square)."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter.history import HistoryConfig, HistoryDrafter, SuffixIndex
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.drafting import DraftSource, Proposer
from tests.conftest import tiny_llama
from tests.test_engine_greedy import RAGGED
from tests.test_engine_sampling import (
    ALPHA, LENGTH, VOCAB, chi_square_pvalue, exact_joint, residual_skipping_verifier, sampled_counts,
)


def test_the_longest_match_continues_by_majority():
    index = SuffixIndex(HistoryConfig(min_match=2, max_match=4))
    index.add([1, 2, 3, 4, 5])
    index.add([9, 2, 3, 4, 6])
    index.add([8, 2, 3, 4, 6])
    assert index.draft([0, 2, 3, 4], 2) == [6]  # two of three occurrences continue with 6, then stop
    assert index.draft([1, 2, 3, 4], 3) == [5]  # the longer match [1, 2, 3, 4] wins over the vote
    assert index.draft([7, 7], 3) == []
    assert index.draft([3], 3) == []  # shorter than min_match


def test_a_draft_goes_only_as_far_as_the_history_agrees():
    sequences = ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 7, 8], [1, 2, 9, 9, 9])
    drafts = {}
    for agreement in (0.0, 0.5, 0.7):
        index = SuffixIndex(HistoryConfig(min_match=2, max_match=2, min_agreement=agreement))
        for seq in sequences:
            index.add(seq)
        drafts[agreement] = index.draft([1, 2], 3)
    # after [1, 2]: 3 by 3 of 4 votes, then 4 by 2 of the 3 left, then 5 by 2 of 2
    assert drafts == {0.0: [3, 4, 5], 0.5: [3, 4, 5], 0.7: [3]}
    with pytest.raises(ValueError, match="min_agreement = 1.5 .* allowed: 0 <= min_agreement <= 1"):
        HistoryConfig(min_agreement=1.5)


def test_a_growing_sequence_is_searched_as_it_grows():
    index = SuffixIndex(HistoryConfig(min_match=2, max_match=3))
    seq = index.add([5, 6])
    index.extend(seq, [7, 8, 5, 6])
    assert index.draft([5, 6], 3) == [7, 8, 5]


def test_memory_stays_within_the_token_budget_and_evicts_the_oldest():
    index = SuffixIndex(HistoryConfig(min_match=2, max_match=3, max_tokens=30))
    index.add([1, 2, 3, 4])
    for i in range(20):
        index.add([100 + i, 200 + i, 300 + i])
    assert index.memory()["tokens"] <= 30
    assert index.draft([1, 2], 2) == []  # the first sequence is gone, and so are its n-grams
    assert index.memory()["occurrences"] == sum(2 * 1 + 1 for _ in range(index.memory()["sequences"]))


def test_bad_history_keys_name_the_allowed_values():
    with pytest.raises(ValueError, match="min_match/max_match = 5/3 .* allowed: 1 <= min_match <= max_match"):
        HistoryConfig(min_match=5, max_match=3)


def test_it_is_a_drafter_of_the_core_interface():
    drafter = HistoryDrafter()
    assert isinstance(drafter, DraftSource) and isinstance(drafter.new_proposer(10), Proposer)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_with_history_equals_plain_and_repeats_are_drafted(k):
    target = tiny_llama(97, seed=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    reference = SpeculativeEngine(target).generate(RAGGED, params)
    engine = SpeculativeEngine(target, HistoryDrafter(), FixedK(k))
    first = engine.generate(RAGGED, params)
    again = engine.generate(RAGGED, params)  # the same prompts: the first call's answers are the history
    assert first.token_ids == reference.token_ids == again.token_ids
    assert again.stats.acceptance_rate > 0.9 > first.stats.acceptance_rate


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=11, hidden=32, init_std=0.08)


def _seeded_history() -> HistoryDrafter:
    """History from an unrelated sampler, so that drafts are often wrong and the residual matters."""
    generator = torch.Generator().manual_seed(0)
    drafter = HistoryDrafter(HistoryConfig(min_match=1, max_match=3))
    for _ in range(200):
        drafter.index.add(torch.randint(VOCAB, (8,), generator=generator).tolist())
    return drafter


def test_sampled_sd_with_history_matches_the_target_distribution(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(target, _seeded_history(), FixedK(3))
    counts = sampled_counts(engine, params)
    assert 0.05 < engine.generate([[1, 4, 2]] * 200, params).stats.acceptance_rate < 0.95  # drafts really checked
    pvalue = chi_square_pvalue(counts, exact_joint(target, params))
    assert pvalue > ALPHA, f"history SD samples differ from the target's law (p={pvalue:.2e})"


def test_chi_square_rejects_history_sd_with_a_verifier_that_skips_the_residual(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(target, _seeded_history(), FixedK(3), verifier=residual_skipping_verifier)
    pvalue = chi_square_pvalue(sampled_counts(engine, params), exact_joint(target, params))
    assert pvalue < ALPHA, f"the test has no power against a broken verifier (p={pvalue:.2e})"


def test_steps_without_a_match_decode_plainly_and_drafts_are_as_long_as_the_longest_found():
    target = tiny_llama(97, seed=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    out = SpeculativeEngine(target, HistoryDrafter(), FixedK(6)).generate(RAGGED, params)
    assert out.token_ids == SpeculativeEngine(target).generate(RAGGED, params).token_ids
    ks = [s.k for s in out.stats.steps]
    assert 0 in ks  # nothing to draft anywhere: no verification of padding
    assert any(0 < k < 6 for k in ks)  # the longest draft found set the width
    assert any(s.k == 0 and s.draft_time_s > 0 for s in out.stats.steps)  # a lookup that found nothing is timed
