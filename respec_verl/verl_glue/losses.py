"""verl registrations of the reward-weighted KD loss, so that a verl config can select it by name.

verl 0.9.1 has two loss registries, and the loss goes into both; verl is imported only inside
`register_losses`, so the core never depends on it.

- Distillation registry (`verl.trainer.distillation.losses`), selected by
  `distillation.distillation_loss.loss_mode`. Its losses see the teacher's top-k log-probs, so the
  full loss fits: verl's own `forward_kl_topk` gives the per-token forward KL(p_teacher || q_student)
  on the teacher's top-k ids, we multiply each sequence by w, and verl aggregates with
  `actor.loss_agg_mode`. `respec_rw_kd_topk` takes w from the reward (`rm_scores` summed over
  the response), `respec_adv_kd_topk` from the advantage (masked mean over the response); the
  unweighted ablation is verl's `forward_kl_topk`. Use it with `use_policy_gradient=False`.
- Policy-loss registry (`core_algos.register_policy_loss`), selected by
  `actor.policy_loss.loss_mode=respec_rw_kd`. Its signature carries only the log-prob of each
  sampled token, not the teacher's distribution, so the adapter computes the hard-label form:
  per token -w * log q(y_t), the cross-entropy of the student on the token the actor sampled
  (equal to `reward_weighted_kd_loss` with a one-hot teacher on y_t; its gradient is that of the
  single-sample estimate of KL(p || q), since y_t ~ p). `old_log_prob` is read as the teacher's
  log-prob and reported as the k1 KL estimate. Only advantages reach a policy loss, so w comes
  from them.

In both, w is `sequence_weights`' min-max rule into [w_min, 1], taken over the micro-batch the loss
sees (not the whole RL batch), and the student is whichever model the worker trains: a drafter
trained by a verl engine worker, with the actor as teacher.
"""

from __future__ import annotations

from typing import Any

import torch

from respec_verl.drafter.kd_loss import sequence_weights

POLICY_LOSS_NAME = "respec_rw_kd"
DISTILLATION_LOSS_WEIGHTING = {"respec_rw_kd_topk": "reward", "respec_adv_kd_topk": "advantage"}


def register_losses(w_min: float = 0.1) -> list[str]:
    """Register the losses with verl (idempotent; a later call replaces `w_min`); returns their names."""
    if not 0.0 <= w_min <= 1.0:
        raise ValueError(f"w_min must be in [0, 1], got {w_min}")
    from verl.trainer.distillation import losses as distillation
    from verl.trainer.ppo import core_algos

    core_algos.register_policy_loss(POLICY_LOSS_NAME)(_policy_loss(w_min))

    distillation_fn = _distillation_loss(w_min)
    names = list(DISTILLATION_LOSS_WEIGHTING)
    for name in names:
        owner = distillation.DISTILLATION_LOSS_REGISTRY.get(name)
        if owner is not None and not getattr(owner, "_respec", False):
            raise ValueError(f"verl distillation loss {name!r} is already registered by someone else")
        distillation.DISTILLATION_LOSS_REGISTRY.pop(name, None)  # ours: replace (verl raises on re-registration)
    settings = distillation.DistillationLossSettings(names=names, use_topk=True)
    distillation.register_distillation_loss(settings)(distillation_fn)
    return [POLICY_LOSS_NAME, *names]


def _policy_loss(w_min: float):
    from verl.trainer.ppo.core_algos import agg_loss

    def respec_rw_kd(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Hard-label reward-weighted KD: -w_b * log q(y_t) on the sampled tokens (see module doc)."""
        mask = response_mask.bool()
        weights = sequence_weights(_masked_mean(advantages, mask), "advantage", w_min).to(log_prob.device)
        per_token = -log_prob * weights[:, None]
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        batch_info = getattr(config, "global_batch_info", None) or {}
        loss = agg_loss(loss_mat=per_token, loss_mask=mask, loss_agg_mode=loss_agg_mode, **batch_info)
        k1 = (old_log_prob - log_prob).detach()[mask]
        return loss, {
            "respec/drafter/kl_k1": float(k1.mean()) if k1.numel() else 0.0,
            "respec/drafter/weight_mean": float(weights.mean()),
        }

    respec_rw_kd._respec = True
    return respec_rw_kd


def _distillation_loss(w_min: float):
    from verl.trainer.distillation.losses import get_distillation_loss_fn

    def respec_rw_kd_topk(config: Any, distillation_config: Any, model_output: dict, data: Any):
        """Per-token top-k forward KL (verl's own) times the sequence weight; verl aggregates it."""
        forward_kl_topk = get_distillation_loss_fn("forward_kl_topk")
        per_token, metrics = forward_kl_topk(config, distillation_config, model_output, data)
        mask = _padded(data["response_mask"]).bool()
        weighting = DISTILLATION_LOSS_WEIGHTING[distillation_config.distillation_loss.loss_mode]
        if weighting == "reward":
            if "rm_scores" not in data.keys():
                raise KeyError("respec_rw_kd_topk weights by reward and needs 'rm_scores' in the batch")
            scores = (_padded(data["rm_scores"]).float() * mask).sum(dim=-1)
        else:
            scores = _masked_mean(_padded(data["advantages"]), mask)
        weights = sequence_weights(scores, weighting, w_min).to(per_token.device)
        metrics["respec/drafter/weight_mean"] = float(weights.mean())
        return per_token * weights[:, None], metrics

    respec_rw_kd_topk._respec = True
    return respec_rw_kd_topk


def _padded(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_padded_tensor(0) if tensor.is_nested else tensor


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over the response (GRPO advantages are one value broadcast over the tokens)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)
