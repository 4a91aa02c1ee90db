"""Returned log-probs are the target's own: equal to a full forward over the final sequence."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter import Drafter, self_draft
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from tests.conftest import tiny_llama

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]


def full_forward_logprobs(target, prompt, tokens, temperature):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = target(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / scale, dim=-1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature,k", [(0.0, 3), (1.0, 2), (0.7, 4), (1.0, 0)])
def test_logprobs_equal_full_target_forward(temperature, k):
    target = tiny_llama(seed=21)
    drafter = Drafter(tiny_llama(seed=22, layers=1)) if k else None
    params = SamplingParams(temperature=temperature, top_p=0.9, max_new_tokens=16)
    out = SpeculativeEngine(target, drafter, FixedK(k)).generate(PROMPTS, params, seeds=[1, 2, 3])
    for prompt, tokens, logprobs in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(logprobs) == len(tokens)
        expected = full_forward_logprobs(target, prompt, tokens, temperature)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_logprobs_do_not_depend_on_the_drafter():
    target = tiny_llama(seed=23)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    a = SpeculativeEngine(target, self_draft(target, 1), FixedK(3)).generate(PROMPTS, params)
    b = SpeculativeEngine(target, Drafter(tiny_llama(seed=24)), FixedK(5)).generate(PROMPTS, params)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.tensor(sum(a.logprobs, [])), torch.tensor(sum(b.logprobs, [])), atol=1e-4, rtol=0)
