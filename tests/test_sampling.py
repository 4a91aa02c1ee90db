"""Logits processing shared by drafter and target."""

from __future__ import annotations

import pytest
import torch

from respec_verl.speculation import SamplingParams
from respec_verl.speculation.sampling import probs_from_logits, processed_logits, token_logprobs


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(processed_logits(logits, SamplingParams(temperature=0.5)), logits * 2)


def test_top_k_keeps_the_k_largest():
    probs = probs_from_logits(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), SamplingParams(top_k=2))
    assert (probs[0, [0, 2]] == 0).all() and probs[0, [1, 3]].sum() == pytest.approx(1.0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = probs_from_logits(base, SamplingParams(top_p=0.8)) > 0
    assert kept.tolist() == [[True, True, False, False]]
    kept = probs_from_logits(base, SamplingParams(top_p=0.81)) > 0
    assert kept.tolist() == [[True, True, True, False]]
    assert (probs_from_logits(base, SamplingParams(top_p=0.1)) > 0).sum() == 1  # always one token


def test_token_logprobs_use_the_temperature():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    lp = token_logprobs(logits, torch.tensor([2]), temperature=0.5)
    assert lp.item() == pytest.approx(torch.log_softmax(logits * 2, -1)[0, 2].item())
    assert token_logprobs(logits, torch.tensor([2]), 0.0).item() == pytest.approx(torch.log_softmax(logits, -1)[0, 2].item())


@pytest.mark.parametrize(
    "kwargs,key", [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens")]
)
def test_bad_sampling_params_name_the_field(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SamplingParams(**kwargs)
