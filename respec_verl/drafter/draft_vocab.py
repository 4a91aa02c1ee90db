"""A reduced draft vocabulary (EAGLE-3's d2t): a drafter's outputs read as the target's token ids."""

from __future__ import annotations

from collections.abc import Callable

import torch

from respec_verl.speculation.sampling import SamplingParams, probs_from_logits, sample_rows


class DraftVocabulary:
    """For a drafter with `draft_to_target` (draft output j -> target id, or None: the target's
    vocabulary) and `draft_vocab_size`: the vocabulary check and the maps to target ids and probs."""

    draft_to_target: torch.Tensor | None
    draft_vocab_size: int

    def check_compatible(self, target_vocab_size: int) -> None:
        """Raise a ValueError when the drafter's outputs cannot be read as target token ids."""
        if self.draft_to_target is None:
            if self.draft_vocab_size != target_vocab_size:
                raise ValueError(
                    f"drafter vocabulary ({self.draft_vocab_size} outputs) does not match the target's "
                    f"({target_vocab_size}); use a drafter with the target's tokenizer, or a reduced "
                    "vocabulary with a draft_to_target mapping"
                )
            return
        if self.draft_to_target.numel() != self.draft_vocab_size:
            raise ValueError(
                f"draft_to_target has {self.draft_to_target.numel()} entries but the drafter has "
                f"{self.draft_vocab_size} outputs"
            )
        if int(self.draft_to_target.max()) >= target_vocab_size or int(self.draft_to_target.min()) < 0:
            raise ValueError(f"draft_to_target maps outside the target vocabulary [0, {target_vocab_size})")

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids if self.draft_to_target is None else self.draft_to_target[draft_ids]

    def to_target_probs(self, draft_probs: torch.Tensor, target_vocab_size: int) -> torch.Tensor:
        """q over the full vocabulary: zero outside the draft vocabulary (the residual covers the rest)."""
        if self.draft_to_target is None:
            return draft_probs
        full = draft_probs.new_zeros(*draft_probs.shape[:-1], target_vocab_size)
        full[..., self.draft_to_target] = draft_probs
        return full

    def sample_chain(
        self,
        logits: torch.Tensor,
        k: int,
        params: SamplingParams,
        generators: list[torch.Generator | None],
        target_vocab_size: int,
        step: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k drafts per row, one at a time: each taken from `logits` [B, V_draft] (argmax when greedy),
        then `step(its target ids [B])` feeds it and gives the next logits. Returns target ids [B, k]
        and q [B, k, V] over the target vocabulary (None when greedy)."""
        tokens, probs = [], []
        for j in range(k):
            if params.greedy:
                draft_ids = logits.argmax(dim=-1)
            else:
                probs.append(probs_from_logits(logits, params))
                draft_ids = sample_rows(probs[-1], generators)
            tokens.append(self.to_target_ids(draft_ids))
            if j < k - 1:
                logits = step(tokens[-1])
        draft_tokens = torch.stack(tokens, dim=1)
        if params.greedy:
            return draft_tokens, None
        return draft_tokens, self.to_target_probs(torch.stack(probs, dim=1), target_vocab_size)
