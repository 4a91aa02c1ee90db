"""The engine on the real SmolLM2-135M-Instruct (float32, so greedy comparisons are exact)."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter import frequent_tokens, self_draft
from respec_verl.models.smollm2 import encode_chat
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Write one sentence about the sea and the sky.", "Hi"]


def chat_prompts(tokenizer) -> list[list[int]]:
    return [encode_chat(tokenizer, q) for q in QUESTIONS]


def test_smollm2_greedy_sd_equals_plain(smollm2):
    model, tokenizer = smollm2
    prompts = chat_prompts(tokenizer)
    assert len({len(p) for p in prompts}) > 1  # ragged
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop_token_ids=(tokenizer.eos_token_id,))
    reference = SpeculativeEngine(model).generate(prompts, params)
    assert any(len(t) < 24 for t in reference.token_ids), "an EOS inside the batch is part of this test"
    drafter = self_draft(model, 4)
    for k in (1, 3, 6):
        out = SpeculativeEngine(model, drafter, FixedK(k)).generate(prompts, params)
        assert out.token_ids == reference.token_ids
        assert out.stats.acceptance_rate > 0.0


def test_smollm2_reduced_vocab_self_draft_is_lossless(smollm2):
    model, tokenizer = smollm2
    prompts = chat_prompts(tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=(tokenizer.eos_token_id,))
    reference = SpeculativeEngine(model).generate(prompts, params)
    vocab = frequent_tokens(reference.token_ids, 256, always=[tokenizer.eos_token_id])
    drafter = self_draft(model, 2, draft_vocab=vocab)
    out = SpeculativeEngine(model, drafter, FixedK(3)).generate(prompts, params)
    assert out.token_ids == reference.token_ids
    logprobs = torch.tensor(sum(out.logprobs, []))
    torch.testing.assert_close(logprobs, torch.tensor(sum(reference.logprobs, [])), atol=1e-3, rtol=0)
