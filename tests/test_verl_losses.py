"""The KD loss registered with verl: found by name, and equal to `reward_weighted_kd_loss` through verl."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from tensordict import TensorDict  # noqa: E402  (after the verl skip)

from respec_verl.drafter import reward_weighted_kd_loss  # noqa: E402
from respec_verl.drafter.kd_loss import TeacherTargets, sequence_weights, teacher_targets  # noqa: E402
from respec_verl.verl_glue import register_losses  # noqa: E402

W_MIN = 0.2


@pytest.fixture(scope="module")
def names():
    return register_losses(w_min=W_MIN)


def test_names_are_in_verls_registries_and_registration_is_idempotent(names):
    from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY, get_distillation_loss_settings
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    assert names == ["respec_rw_kd", "respec_rw_kd_topk", "respec_adv_kd_topk"]
    assert "respec_rw_kd" in POLICY_LOSS_REGISTRY
    for name in names[1:]:
        assert name in DISTILLATION_LOSS_REGISTRY and get_distillation_loss_settings(name).use_topk
    assert register_losses(w_min=W_MIN) == names  # a second call does not trip verl's duplicate check


@pytest.mark.parametrize("verl_mode,ours", [("token-mean", "token_mean"), ("seq-mean-token-sum", "seq_sum")])
def test_policy_loss_adapter_equals_hard_label_kd(names, verl_mode, ours):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    sampled = torch.randint(0, 11, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    advantage = torch.tensor([0.5, -1.0, 2.0])
    log_prob = logits.log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
    loss, metrics = get_policy_loss_fn("respec_rw_kd")(
        old_log_prob=torch.randn(3, 6),
        log_prob=log_prob,
        advantages=advantage[:, None].expand(3, 6),
        response_mask=mask,
        loss_agg_mode=verl_mode,
        config=None,
        rollout_is_weights=None,
    )
    one_hot = TeacherTargets(torch.zeros(3, 6, 1), sampled[..., None])  # the sampled token as the label
    weights = sequence_weights(advantage, "advantage", W_MIN)
    direct = reward_weighted_kd_loss(logits, one_hot, mask, weights, aggregation=ours)
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    assert "respec/drafter/kl_k1" in metrics


def test_distillation_loss_through_verl_equals_reward_weighted_kd_loss(names):
    """verl's top-k KL in its packed layout, our weights, verl's aggregation == the core loss."""
    from verl.trainer.distillation.fsdp.losses import compute_forward_kl_topk
    from verl.trainer.distillation.losses import distillation_loss
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import DistillationLossConfig

    torch.manual_seed(1)
    vocab, top_k, prompt_len, response_lens = 13, 4, 3, [5, 2, 4]
    batch, width = len(response_lens), prompt_len + max(response_lens)
    student = torch.randn(batch, width, vocab)
    teacher = teacher_targets(torch.randn(batch, width, vocab), top_k=top_k)  # renormalised top-k labels
    rewards = torch.tensor([1.0, 0.0, 0.25])

    # the core loss on right-padded rows: position t predicts token t+1
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for row, length in enumerate(response_lens):
        mask[row, prompt_len - 1 : prompt_len - 1 + length] = True
    direct = reward_weighted_kd_loss(student, teacher, mask, sequence_weights(rewards, "reward", W_MIN))

    # the same rollouts as verl holds them: packed sequences, nested top-k labels, padded responses
    lengths = [prompt_len + length for length in response_lens]
    packed_student = torch.cat([student[row, :n] for row, n in enumerate(lengths)])[None]

    def nested(t: torch.Tensor) -> torch.Tensor:
        return torch.nested.as_nested_tensor([t[row, :n] for row, n in enumerate(lengths)], layout=torch.jagged)

    loss_config = DistillationLossConfig(
        loss_mode="respec_rw_kd_topk", topk=top_k, use_policy_gradient=False, use_task_rewards=False,
        loss_max_clamp=None, log_prob_min_clamp=None,
    )
    distillation_config = SimpleNamespace(distillation_loss=loss_config)
    model_output = compute_forward_kl_topk(
        packed_student, nested(teacher.logprobs), nested(teacher.sparse_ids), distillation_config, "thd"
    )
    model_output = {key: value[0] for key, value in model_output.items()}
    response_mask = torch.tensor([[1] * n + [0] * (max(response_lens) - n) for n in response_lens])
    rm_scores = torch.zeros(batch, max(response_lens))
    rm_scores[torch.arange(batch), torch.tensor(response_lens) - 1] = rewards  # reward on the last token
    data = TensorDict(
        {
            "prompts": torch.ones(batch, prompt_len, dtype=torch.long),
            "responses": torch.ones(batch, max(response_lens), dtype=torch.long),
            "attention_mask": torch.cat([torch.ones(batch, prompt_len, dtype=torch.long), response_mask], dim=1),
            "response_mask": response_mask,
            "rm_scores": rm_scores,
        },
        batch_size=[batch],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    actor_config = SimpleNamespace(loss_agg_mode="token-mean", global_batch_info={}, loss_scale_factor=None)
    through_verl, metrics = distillation_loss(actor_config, distillation_config, model_output, data)
    assert through_verl.item() == pytest.approx(direct.item(), rel=1e-5)
    weight_mean = float(sequence_weights(rewards, "reward", W_MIN).mean())
    assert metrics["respec/drafter/weight_mean"] == pytest.approx(weight_mean)
