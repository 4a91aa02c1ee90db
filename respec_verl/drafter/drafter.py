"""The drafter as a model artifact: an HF causal LM, an optional reduced vocabulary, a version.

It implements the core's `speculation.drafting.TrainableDrafter`: proposals come from
`model_proposer`, and the learner trains everything but the input embedding (a frozen copy of the
target's, as in EAGLE and SpecForge).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from respec_verl.drafter.model_proposer import DraftProposer

DRAFT_TO_TARGET = "draft_to_target"  # the vocabulary map's tensor name in a checkpoint


@dataclass
class Drafter:
    """A small causal LM that proposes tokens for a target with the same vocabulary.

    `draft_to_target[j]` is the target token id of the drafter's output j when the drafter predicts
    over a reduced vocabulary (as EAGLE-3's d2t mapping); None means it predicts over the full one.
    `version` counts weight updates, so that an engine can report which drafter it is using.
    """

    model: torch.nn.Module
    draft_to_target: torch.Tensor | None = None
    version: int = 0

    @property
    def draft_vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything but the input embedding."""
        frozen = {id(p) for p in self.model.get_input_embeddings().parameters()}
        return [p for p in self.model.parameters() if id(p) not in frozen]

    def draft_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def replica(self, model: torch.nn.Module, version: int) -> Drafter:
        return Drafter(model, self.draft_to_target, version)

    def serving_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Persistent state with tied weights under each name, then the vocabulary map."""
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()
        if self.draft_to_target is not None:
            yield DRAFT_TO_TARGET, self.draft_to_target.detach().to(torch.long)

    def describe(self) -> str:
        layers = getattr(self.model.config, "num_hidden_layers", "?")
        return f"{type(self.model).__name__}-{layers}L-{self.draft_vocab_size}V"

    def new_proposer(self, target_vocab_size: int) -> DraftProposer:
        return DraftProposer(self, target_vocab_size)

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
