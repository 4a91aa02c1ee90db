"""The hybrid drafter: per-row choice between history and model drafts, and speculation staying exact."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter import Drafter, HistoryConfig, HistoryDrafter, HybridDrafter, self_draft
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.drafting import DraftSource, Proposer
from tests.conftest import tiny_llama
from tests.test_engine_greedy import RAGGED
from tests.test_engine_sampling import (
    ALPHA, LENGTH, VOCAB, bad_drafter, chi_square_pvalue, exact_joint, residual_skipping_verifier, sampled_counts,
)

GREEDY = SamplingParams(temperature=0.0)


def _start(proposer, tokens: list[int]) -> None:
    ids = torch.tensor([tokens[:-1]])
    proposer.start(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([tokens[-1]]))


def test_the_model_proposer_follows_drafts_that_are_not_its_own():
    """After the target verifies another drafter's tokens, the model drafts as if it had read them itself."""
    drafter = Drafter(tiny_llama(97, seed=3, layers=1))
    prompt = [5, 6, 7, 8]
    followed = drafter.new_proposer(97)
    _start(followed, prompt)
    own, _ = followed.propose(3, GREEDY, [None])
    foreign = own.clone()
    foreign[0, 1] = (own[0, 1] + 1) % 97  # agrees with the model's first draft only
    followed.accept(foreign, torch.tensor([3]), torch.tensor([42]))
    after, _ = followed.propose(3, GREEDY, [None])

    fresh = drafter.new_proposer(97)
    _start(fresh, prompt + foreign[0].tolist() + [42])
    expected, _ = fresh.propose(3, GREEDY, [None])
    assert after.tolist() == expected.tolist()


def test_a_step_without_a_model_proposal_queues_what_the_target_kept():
    drafter = Drafter(tiny_llama(97, seed=3, layers=1))
    followed = drafter.new_proposer(97)
    _start(followed, [5, 6])
    followed.accept(torch.tensor([[9, 10, 11]]), torch.tensor([2]), torch.tensor([12]))  # the history drafted
    fresh = drafter.new_proposer(97)
    _start(fresh, [5, 6, 9, 10, 12])
    assert followed.propose(2, GREEDY, [None])[0].tolist() == fresh.propose(2, GREEDY, [None])[0].tolist()


def _hybrid(target, strong_match: int = 2) -> HybridDrafter:
    return HybridDrafter(HistoryDrafter(HistoryConfig(min_match=1, max_match=4)), self_draft(target, 1), strong_match)


def test_it_is_a_drafter_of_the_core_interface_versioned_by_its_model():
    target = tiny_llama(97, seed=1)
    hybrid = _hybrid(target)
    assert isinstance(hybrid, DraftSource) and isinstance(hybrid.new_proposer(97), Proposer)
    hybrid.model.version = 4
    assert hybrid.version == 4
    with pytest.raises(ValueError, match=r"strong_match = 0 .* allowed: an integer in \[1, 8\]"):
        HybridDrafter(HistoryDrafter(), self_draft(target, 1), strong_match=0)
    with pytest.raises(ValueError, match="strong_match = 9 .* max_match"):
        HybridDrafter(HistoryDrafter(), self_draft(target, 1), strong_match=9)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_with_the_hybrid_equals_plain_and_uses_both_drafters(k):
    target = tiny_llama(97, seed=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    reference = SpeculativeEngine(target).generate(RAGGED, params)
    hybrid = _hybrid(target, strong_match=3)
    engine = SpeculativeEngine(target, hybrid, FixedK(k))
    first = engine.generate(RAGGED, params)
    again = engine.generate(RAGGED, params)  # the first call's answers are now history
    assert first.token_ids == reference.token_ids == again.token_ids
    assert hybrid.choices.history_rows > 0 and hybrid.choices.model_rows > 0
    assert hybrid.choices.model_skipped_steps > 0  # repeats: every row matched, the model did not run
    assert again.stats.acceptance_rate > first.stats.acceptance_rate


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=11, hidden=32, init_std=0.08)


def _seeded_hybrid() -> HybridDrafter:
    """Wrong-ish history and a bad model, so that both drafters' drafts are often rejected."""
    generator = torch.Generator().manual_seed(0)
    history = HistoryDrafter(HistoryConfig(min_match=1, max_match=3))
    for _ in range(60):
        history.index.add(torch.randint(VOCAB, (8,), generator=generator).tolist())
    return HybridDrafter(history, bad_drafter(), strong_match=2)


def test_sampled_sd_with_the_hybrid_matches_the_target_distribution(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    hybrid = _seeded_hybrid()
    engine = SpeculativeEngine(target, hybrid, FixedK(3))
    counts = sampled_counts(engine, params)
    assert 0.2 < hybrid.choices.history_share < 0.8  # both drafters really drafted
    pvalue = chi_square_pvalue(counts, exact_joint(target, params))
    assert pvalue > ALPHA, f"hybrid SD samples differ from the target's law (p={pvalue:.2e})"


def test_chi_square_rejects_hybrid_sd_with_a_verifier_that_skips_the_residual(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(target, _seeded_hybrid(), FixedK(3), verifier=residual_skipping_verifier)
    pvalue = chi_square_pvalue(sampled_counts(engine, params), exact_joint(target, params))
    assert pvalue < ALPHA, f"the test has no power against a broken verifier (p={pvalue:.2e})"
