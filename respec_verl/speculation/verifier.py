"""Lossless verification of drafted tokens (Leviathan et al. 2023, Chen et al. 2023).

Each row of the batch accepts its own number of draft tokens; the output of every position is
distributed exactly as the target's processed distribution p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from respec_verl.speculation.sampling import sample_rows, uniform_rows


@dataclass
class Verdict:
    """Outcome of one verify step: row i emits draft[i, :num_accepted[i]] then next_token[i]."""

    num_accepted: torch.Tensor  # [B] long, 0..k
    next_token: torch.Tensor  # [B] long: the recovered token on a rejection, the bonus token otherwise


class Verifier(Protocol):
    def __call__(
        self,
        draft_tokens: torch.Tensor,
        draft_probs: torch.Tensor | None,
        target_probs: torch.Tensor,
        generators: list[torch.Generator | None],
        greedy: bool,
    ) -> Verdict: ...


def leading_true(accepted: torch.Tensor) -> torch.Tensor:
    """Number of leading True values per row of a [B, k] bool tensor."""
    return accepted.long().cumprod(dim=1).sum(dim=1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Normalised max(0, p - q): sampling it after a rejection keeps the output distributed as p."""
    r = (p - q).clamp_min(0.0)
    mass = r.sum(dim=-1, keepdim=True)
    # p == q leaves no residual mass; a rejection then has probability 0, so any fallback is exact
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


def rejection_sample(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generators: list[torch.Generator | None],
    greedy: bool,
) -> Verdict:
    """Verify k drafts per row against the target.

    draft_tokens [B, k]; draft_probs [B, k, V] (q over the full vocabulary, zero outside a reduced
    draft vocabulary; None for greedy); target_probs [B, k+1, V] (processed p at each draft position
    and the bonus position; greedy verification needs only its argmax, so logits will do).
    """
    batch, k = draft_tokens.shape
    rows = torch.arange(batch)
    if greedy:
        target_argmax = target_probs.argmax(dim=-1)  # [B, k+1]
        num_accepted = leading_true(draft_tokens == target_argmax[:, :k])
        return Verdict(num_accepted, target_argmax[rows, num_accepted])

    p_draft = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # p(d_j)
    q_draft = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)  # q(d_j)
    u = uniform_rows(batch, k, generators)
    # accept d_j with probability min(1, p/q), written without a division
    num_accepted = leading_true(u * q_draft <= p_draft)

    # the first rejected position samples from the residual; after k accepts, q is zero-padded so
    # the "residual" at position k is p itself: the bonus token
    q_padded = torch.cat([draft_probs, torch.zeros_like(draft_probs[:, :1])], dim=1)
    p_at = target_probs[rows, num_accepted]
    q_at = q_padded[rows, num_accepted]
    next_token = sample_rows(residual(p_at, q_at), generators)
    return Verdict(num_accepted, next_token)
