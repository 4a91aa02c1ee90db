"""The reward-weighted KD loss, its weight rule, and distillation raising acceptance."""

from __future__ import annotations

import math

import pytest
import torch

from respec_verl.drafter import self_draft
from respec_verl.drafter.distill import distill
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss, sequence_weights, teacher_targets
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from tests.conftest import tiny_llama


def direct_kl(p_logits, q_logits):
    p = p_logits.softmax(-1)
    return (p * (p.log() - q_logits.log_softmax(-1))).sum(-1)


def test_loss_equals_direct_kl_token_mean_and_seq_sum():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    w = torch.tensor([1.0, 0.5, 0.2])
    kl = direct_kl(p_logits, q_logits) * mask
    teacher = teacher_targets(p_logits)
    token_mean = reward_weighted_kd_loss(q_logits, teacher, mask, w, aggregation="token_mean")
    assert token_mean.item() == pytest.approx(float((kl.sum(1) * w).sum() / mask.sum()), rel=1e-5)
    seq_sum = reward_weighted_kd_loss(q_logits, teacher, mask, w, aggregation="seq_sum")
    assert seq_sum.item() == pytest.approx(float((kl.sum(1) * w).mean()), rel=1e-5)


def test_loss_is_zero_when_drafter_equals_teacher_and_uses_temperature():
    logits = torch.randn(2, 4, 7)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert reward_weighted_kd_loss(logits, teacher_targets(logits, 0.6), mask, temperature=0.6).item() == pytest.approx(0, abs=1e-6)
    assert reward_weighted_kd_loss(logits, teacher_targets(logits, 1.0), mask, temperature=0.6).item() > 1e-3


def test_masked_positions_do_not_contribute_or_get_gradients():
    p_logits = torch.randn(1, 4, 7)
    q_logits = torch.randn(1, 4, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    reward_weighted_kd_loss(q_logits, teacher_targets(p_logits), mask).backward()
    assert q_logits.grad[0, 2:].abs().sum() == 0 and q_logits.grad[0, :2].abs().sum() > 0


def test_sparse_top_k_and_reduced_vocab_targets():
    p_logits = torch.randn(1, 3, 20)
    vocab = torch.tensor([2, 5, 7, 11])
    teacher = teacher_targets(p_logits, draft_to_target=vocab)
    torch.testing.assert_close(teacher.logprobs, p_logits[..., vocab].log_softmax(-1))
    sparse = teacher_targets(p_logits, top_k=3)
    assert sparse.sparse_ids.shape == (1, 3, 3)
    torch.testing.assert_close(sparse.logprobs.exp().sum(-1), torch.ones(1, 3))
    # a drafter that matches the teacher on its top-k ids has zero sparse loss
    assert reward_weighted_kd_loss(p_logits, sparse, torch.ones(1, 3, dtype=torch.bool)).item() > 0
    q = torch.full((1, 3, 20), -1e4).scatter(-1, sparse.sparse_ids, p_logits.gather(-1, sparse.sparse_ids))
    assert reward_weighted_kd_loss(q, sparse, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(0, abs=1e-5)


def test_weights_min_max_into_range():
    w = sequence_weights(torch.tensor([0.0, 0.5, 1.0]), w_min=0.1)
    torch.testing.assert_close(w, torch.tensor([0.1, 0.55, 1.0]))


def test_weights_edge_cases():
    assert sequence_weights(torch.tensor([0.7, 0.7, 0.7])).tolist() == [1.0, 1.0, 1.0]  # equal -> uniform
    w = sequence_weights(torch.tensor([-2.0, -1.0, 0.0]), w_min=0.0)  # negative rewards
    torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 1.0]))
    w = sequence_weights(torch.tensor([1.0, math.nan, 0.0]), w_min=0.2)  # NaN gets the floor
    torch.testing.assert_close(w, torch.tensor([1.0, 0.2, 0.2]))
    assert sequence_weights(torch.tensor([math.nan, math.nan]), w_min=0.3).tolist() == pytest.approx([0.3, 0.3])
    assert sequence_weights(torch.tensor([0.0, 1.0]), weighting="uniform").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="weighting"):
        sequence_weights(torch.tensor([1.0]), weighting="bogus")


def test_distilling_a_self_draft_raises_acceptance():
    target = tiny_llama(seed=41, layers=4, init_std=0.1)
    prompts = torch.randint(0, 97, (160, 3), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    responses = SpeculativeEngine(target).generate(prompts, params).token_ids
    drafter = self_draft(target, 1)
    held_out = prompts[128:]  # acceptance is measured on prompts the drafter was not trained on

    def acceptance() -> float:
        return SpeculativeEngine(target, drafter, FixedK(3)).generate(held_out, params).stats.acceptance_rate

    before = acceptance()
    losses = distill(drafter, target, prompts[:128], responses[:128], steps=80, batch_size=32, lr=3e-3, progress=False)
    after = acceptance()
    assert losses[-1] < losses[0] / 2
    assert drafter.version == 1
    assert after > before + 0.1, (before, after)
