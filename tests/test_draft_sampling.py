"""Probabilistic drafting in the draft vocabulary (`respec_verl.vllm_glue.draft_sampling`).

The sampler must hand vLLM's rejection sampler the same q, and draw tokens from the same q, as
vLLM's own full-vocabulary path would from respec's scattered logits. In a real engine:
`tests/test_vllm_engine.py::test_reduced_vocab_sampled_drafting_follows_the_actor`.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from respec_verl.vllm_glue.draft_sampling import sample_reduced_draft

VOCAB = 97


def _case(rows: int, draft_vocab: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(rows, draft_vocab, generator=gen)
    draft_to_target = torch.randperm(VOCAB, generator=gen)[:draft_vocab]
    return logits, draft_to_target


def _scattered(logits: torch.Tensor, draft_to_target: torch.Tensor) -> torch.Tensor:
    """What `RespecDraftLlamaForCausalLM.compute_logits` gives vLLM: -inf outside the draft vocabulary."""
    full = logits.new_full((logits.shape[0], VOCAB), float("-inf"))
    full[:, draft_to_target] = logits
    return full


def test_q_is_the_softmax_of_the_scattered_logits_at_each_rows_temperature():
    logits, d2t = _case(rows=3)
    temperature = torch.tensor([0.6, 1.0, 1.7])
    tokens, q = sample_reduced_draft(logits, d2t, VOCAB, temperature)
    expected = torch.softmax(_scattered(logits, d2t) / temperature[:, None], dim=-1)
    assert q.shape == (3, VOCAB) and q.dtype == torch.float32
    torch.testing.assert_close(q, expected, rtol=1e-6, atol=1e-7)
    assert torch.isin(tokens, d2t).all()  # never a token outside the draft vocabulary


def test_q_matches_vllms_own_draft_sampler():
    proposer = pytest.importorskip("vllm.v1.spec_decode.llm_base_proposer")
    from vllm.v1.sample.metadata import SamplingMetadata

    logits, d2t = _case(rows=4)
    temperature = torch.tensor([0.6, 0.0, 1.0, 0.0])  # rows 1 and 3 greedy
    metadata = SamplingMetadata.__new__(SamplingMetadata)  # only the fields the sampler reads
    metadata.temperature, metadata.all_greedy, metadata.all_random = temperature, False, False
    theirs_tokens, theirs_q = proposer.compute_probs_and_sample_next_token(_scattered(logits, d2t), metadata)
    tokens, q = sample_reduced_draft(logits, d2t, VOCAB, temperature, all_random=False)
    torch.testing.assert_close(q, theirs_q, rtol=1e-6, atol=1e-7)
    assert tokens[1] == theirs_tokens[1] == d2t[logits[1].argmax()]  # greedy rows: the argmax
    assert tokens[3] == theirs_tokens[3] == d2t[logits[3].argmax()]


def test_sampled_tokens_follow_q():
    """20000 draws of one row: the counts per draft id fit q (and would not, had the noise been skipped)."""
    logits, d2t = _case(rows=1)
    n = 20000
    temperature = torch.full((n,), 0.8)
    gen = torch.Generator().manual_seed(3)
    tokens, q = sample_reduced_draft(logits.expand(n, -1), d2t, VOCAB, temperature, generator=gen)
    expected = q[0, d2t].double() / q[0, d2t].double().sum() * n  # float32 q sums to 1 within 1e-7

    def fit(drawn: torch.Tensor) -> float:
        return chisquare(torch.bincount(drawn, minlength=VOCAB)[d2t].double().numpy(), expected.numpy()).pvalue

    assert fit(tokens) > 1e-3
    assert fit(torch.full((n,), int(d2t[logits[0].argmax()]))) < 1e-3  # the test tells the argmax apart
