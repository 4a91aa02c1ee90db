"""The drafter as a model artifact: an HF causal LM, an optional reduced vocabulary, a version.

It implements the core's `speculation.drafting.TrainableDrafter`: proposals come from
`model_proposer`, and the learner trains everything but the input embedding (a frozen copy of the
target's, as in EAGLE and SpecForge).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from respec_verl.drafter.draft_vocab import DraftVocabulary
from respec_verl.drafter.model_proposer import DraftProposer

DRAFT_TO_TARGET = "draft_to_target"  # the vocabulary map's tensor name in a checkpoint


@dataclass
class Drafter(DraftVocabulary):
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

