"""The reward-weighted distillation loss that keeps the drafter aligned with the actor (ReSpec §4).

Per sequence: L = w(r) * sum_t KL(p_actor(.|x, y<t) || q_drafter(.|x, y<t)), the forward KL written
as soft-label cross-entropy minus the (constant) teacher entropy. Pure functions of tensors: the
same code serves the in-process learner and verl's loss registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHTINGS = ("reward", "advantage", "uniform")
AGGREGATIONS = ("token_mean", "seq_sum")


def sequence_weights(scores: torch.Tensor | None, weighting: str = "reward", w_min: float = 0.1) -> torch.Tensor:
    """Per-sequence KD weights in [w_min, 1] from rewards or advantages.

    The paper only says "normalize and clip". Our rule: min-max normalise the scores over the batch
    into [w_min, 1], so the best rollout teaches fully, failed rollouts still teach a little (the
    drafter must follow the actor everywhere it samples), and negative rewards need no special case.
    A batch of equal scores degenerates to uniform weights (1.0), and a NaN score gets w_min.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not 0.0 <= w_min <= 1.0:
        raise ValueError(f"w_min must be in [0, 1], got {w_min}")
    if scores is None:
        return torch.ones(0)
    if weighting == "uniform":
        return torch.ones_like(scores, dtype=torch.float32)
    scores = scores.detach().float()
    finite = torch.isfinite(scores)
    if not finite.any():
        return torch.full_like(scores, w_min)
    lo, hi = scores[finite].min(), scores[finite].max()
    if hi - lo <= 1e-12:
        return torch.where(finite, torch.ones_like(scores), torch.full_like(scores, w_min))
    normalised = (scores - lo) / (hi - lo)
    return torch.where(finite, w_min + (1.0 - w_min) * normalised, torch.full_like(scores, w_min))


@dataclass
class TeacherTargets:
    """The actor's distribution at each response position, in the drafter's vocabulary.

    Either dense log-probs [B, T, Vd], or sparse top-k (log-probs [B, T, K] at ids [B, T, K],
    renormalised over the kept ids). `sparse_ids` index the drafter's vocabulary.
    """

    logprobs: torch.Tensor
    sparse_ids: torch.Tensor | None = None


def teacher_targets(
    target_logits: torch.Tensor,
    temperature: float = 1.0,
    draft_to_target: torch.Tensor | None = None,
    top_k: int = 0,
) -> TeacherTargets:
    """Soft labels from the actor's logits [B, T, V] at the rollout temperature.

    A reduced-vocabulary drafter learns p restricted to its vocabulary and renormalised (it cannot
    put mass elsewhere); top_k > 0 keeps only the k most likely ids, to save memory.
    """
    logits = target_logits.float() / (temperature if temperature > 0 else 1.0)
    if draft_to_target is not None:
        logits = logits[..., draft_to_target]
    if 0 < top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)
        return TeacherTargets(torch.log_softmax(values, dim=-1), ids)
    return TeacherTargets(torch.log_softmax(logits, dim=-1))


def reward_weighted_kd_loss(
    draft_logits: torch.Tensor,
    teacher: TeacherTargets,
    response_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    temperature: float = 1.0,
    aggregation: str = "token_mean",
) -> torch.Tensor:
    """sum_b w_b * sum_t mask_bt * KL(p_bt || q_bt), aggregated per `aggregation`.

    token_mean divides by the number of response tokens in the batch (verl's token-mean);
    seq_sum sums each sequence's KL and averages over sequences. Gradients reach only the drafter.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    log_q = torch.log_softmax(draft_logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    log_p = teacher.logprobs.detach()
    if teacher.sparse_ids is not None:
        log_q = log_q.gather(-1, teacher.sparse_ids)
    p = log_p.exp()
    # forward KL(p || q) = sum_v p (log p - log q); 0 * log 0 terms vanish
    token_kl = (p * (log_p - log_q)).nan_to_num(nan=0.0, posinf=0.0).sum(dim=-1)  # [B, T]
    mask = response_mask.to(token_kl.dtype)
    w = torch.ones_like(token_kl[:, 0]) if weights is None else weights.to(token_kl)
    per_sequence = (token_kl * mask).sum(dim=1) * w
    if aggregation == "seq_sum":
        return per_sequence.mean()
    return per_sequence.sum() / mask.sum().clamp_min(1.0)


def unrolled_kd_loss(
    draft_logits: torch.Tensor,
    teacher: TeacherTargets,
    response_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    temperature: float = 1.0,
    aggregation: str = "token_mean",
    decay: float = 0.8,
) -> torch.Tensor:
    """`reward_weighted_kd_loss` of one drafter step [B, T, V], or of a training-time-test unroll [D, B, T, V].

    Step j's entry at t predicts token t+1 after j of the drafter's own steps, so it shares the
    teacher's labels at t; entries t <= j do not exist and are masked. Steps are averaged with
    weights decay**j (EAGLE-3's), since the later steps' drafts are verified less often.
    """
    if draft_logits.dim() == 3:
        return reward_weighted_kd_loss(draft_logits, teacher, response_mask, weights, temperature, aggregation)
    total, norm = draft_logits.new_zeros(()).float(), 0.0
    for j, logits in enumerate(draft_logits):
        mask = response_mask.clone()
        mask[:, : j + 1] = False
        total = total + decay**j * reward_weighted_kd_loss(logits, teacher, mask, weights, temperature, aggregation)
        norm += decay**j
    return total / norm
