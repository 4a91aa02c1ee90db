"""Greedy speculative decoding must reproduce plain greedy decoding token for token."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter import Drafter, self_draft
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from tests.conftest import tiny_llama

RAGGED = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16], [3], [20, 21, 22]]


def plain(target, prompts, params):
    return SpeculativeEngine(target).generate(prompts, params)


@pytest.mark.parametrize("vocab_size,hidden", [(97, 64), (256, 48), (31, 40)])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_greedy_sd_equals_plain_ragged(vocab_size, hidden, k):
    target = tiny_llama(vocab_size, seed=1, hidden=hidden)
    prompts = [[t % vocab_size for t in p] for p in RAGGED]
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    reference = plain(target, prompts, params)
    for drafter in (self_draft(target, 2), Drafter(tiny_llama(vocab_size, seed=2, layers=1, hidden=hidden))):
        out = SpeculativeEngine(target, drafter, FixedK(k)).generate(prompts, params)
        assert out.token_ids == reference.token_ids
        assert out.stats.spec_steps > 0  # speculation really ran


def test_greedy_batch_equals_each_prompt_alone():
    """Left padding and holes must not leak into other rows: batched == one prompt at a time."""
    target = tiny_llama(seed=3)
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    batched = SpeculativeEngine(target, self_draft(target, 1), FixedK(3)).generate(RAGGED, params)
    for prompt, tokens in zip(RAGGED, batched.token_ids):
        assert plain(target, [prompt], params).token_ids[0] == tokens


def test_greedy_with_eos_inside_batch():
    target = tiny_llama(seed=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    free = plain(target, RAGGED, params).token_ids
    eos = free[1][3]  # a token that one row emits early: that row must stop there, others go on
    params_eos = SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=(eos,))
    reference = plain(target, RAGGED, params_eos).token_ids
    assert reference[1] == free[1][: free[1].index(eos) + 1]
    assert any(len(r) == 30 for r in reference)
    for k in (2, 5):
        out = SpeculativeEngine(target, self_draft(target, 2), FixedK(k)).generate(RAGGED, params_eos)
        assert out.token_ids == reference


def test_greedy_reduced_vocab_drafter():
    target = tiny_llama(seed=5)
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    reference = plain(target, RAGGED, params).token_ids
    seen = sorted({t for row in reference for t in row})
    drafter = self_draft(target, 2, draft_vocab=seen[: len(seen) // 2])
    out = SpeculativeEngine(target, drafter, FixedK(3)).generate(RAGGED, params)
    assert out.token_ids == reference
    assert drafter.draft_vocab_size == len(seen) // 2


def test_k_zero_is_plain_decoding_through_the_same_loop():
    target = tiny_llama(seed=6)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    out = SpeculativeEngine(target, self_draft(target, 1), FixedK(0)).generate(RAGGED, params)
    assert out.stats.spec_steps == 0 and out.stats.plain_steps > 0
    assert out.token_ids == plain(target, RAGGED, params).token_ids


def test_a_batch_that_never_speculates_never_runs_the_drafter():
    """The prompt waits in the drafter's queue: a batch the controller keeps plain pays no drafter prefill."""
    target = tiny_llama(seed=6)
    drafter = self_draft(target, 1)
    calls = []
    drafter.model.register_forward_hook(lambda *_: calls.append(1))
    SpeculativeEngine(target, drafter, FixedK(0)).generate(RAGGED, SamplingParams(temperature=0.0, max_new_tokens=6))
    assert calls == []
    SpeculativeEngine(target, drafter, FixedK(2)).generate(RAGGED, SamplingParams(temperature=0.0, max_new_tokens=6))
    assert calls  # and the hook does see a speculating batch


class LateStart:
    """Plain decoding for the first `plain_steps` steps, then k = 3: speculation switched on mid-batch."""

    def __init__(self, plain_steps: int):
        self.plain_steps, self.calls = plain_steps, 0

    def choose_k(self, batch_size: int) -> int:
        self.calls += 1
        return 0 if self.calls <= self.plain_steps else 3

    def observe(self, record) -> None:
        pass


def test_speculation_switched_on_after_rows_have_finished():
    """The drafter first sees the prompts (and the plain tokens since) of the rows still live, and only them."""
    target = tiny_llama(seed=4)
    free = plain(target, RAGGED, SamplingParams(temperature=0.0, max_new_tokens=30)).token_ids
    eos = free[1][3]  # one row stops at its 4th token, during the plain steps
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=(eos,))
    reference = plain(target, RAGGED, params)
    out = SpeculativeEngine(target, self_draft(target, 2), LateStart(plain_steps=6)).generate(RAGGED, params)
    assert out.token_ids == reference.token_ids
    assert len(reference.token_ids[1]) == 4 and out.stats.spec_steps > 0


class Alternating:
    """A k policy that switches speculation on and off, exercising the drafter's catch-up pass."""

    def __init__(self):
        self.calls = 0

    def choose_k(self, batch_size: int) -> int:
        self.calls += 1
        return [0, 0, 3, 0, 2, 5][self.calls % 6]

    def observe(self, record) -> None:
        pass


def test_greedy_with_k_changing_every_step():
    target = tiny_llama(seed=7)
    params = SamplingParams(temperature=0.0, max_new_tokens=25)
    out = SpeculativeEngine(target, self_draft(target, 2), Alternating()).generate(RAGGED, params)
    assert out.token_ids == plain(target, RAGGED, params).token_ids
    assert out.stats.spec_steps > 0 and out.stats.plain_steps > 0


def test_max_new_tokens_is_respected():
    target = tiny_llama(seed=8)
    for max_new in (1, 2, 5):
        params = SamplingParams(temperature=0.0, max_new_tokens=max_new)
        out = SpeculativeEngine(target, self_draft(target, 2), FixedK(4)).generate(RAGGED, params)
        assert [len(t) for t in out.token_ids] == [max_new] * len(RAGGED)


def test_acceptance_statistics_are_consistent():
    target = tiny_llama(seed=9)
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    # the target as its own drafter accepts everything; a random drafter accepts little
    perfect = SpeculativeEngine(target, Drafter(target), FixedK(3)).generate(RAGGED, params).stats
    assert perfect.acceptance_rate == 1.0
    assert perfect.per_position_rate == [1.0, 1.0, 1.0]
    random = SpeculativeEngine(target, Drafter(tiny_llama(seed=10)), FixedK(3)).generate(RAGGED, params).stats
    assert random.acceptance_rate < 0.5
    rates = random.per_position_rate
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # reaching position i needs i-1 accepts
    assert random.generated_tokens == 20 * len(RAGGED)
