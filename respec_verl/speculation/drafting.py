"""The drafter interface of the core: what the engine and its profiler ask of a drafter.

A drafter is anything that proposes tokens for the target: a small causal LM (the self-draft,
`respec_verl.drafter.Drafter`), a model-free drafter over the run's own rollouts, or an EAGLE-3 head
over the target's hidden states. The core sees it only through these two protocols, so it never
imports an implementation:

- `DraftSource`: the drafter as an artifact: its `version` (counts weight updates, so an engine
  can report which drafter produced a rollout), a `describe()` that names it in cost profiles
  (draft times are its own), a vocabulary check, and a fresh `Proposer` per generate call.
- `Proposer`: one generate call's drafting state. The engine tells it every token the target
  emits (`start`, `push`, `accept`), asks for k drafts with their probabilities q over the target
  vocabulary (`propose`; q is None when greedy), and compacts it when rows finish
  (`select_rows`). `probe` drafts and forgets, which is how a profile times a proposal.
  A `FeatureProposer` also gets the target's hidden states at every token it is told.

How a drafter is refreshed is its own business, and the engine only reads it: a learned drafter is
replaced by the learner's newest version between generate calls, and a history index grows with
every call. A drafter distilled from the actor also implements `TrainableDrafter`, the third
protocol: what the learner trains (its module, the parameters an update changes, its logits on a
batch), `replica`, which wraps a trained copy as a new drafter of the same kind (the learner's
published versions), and the named tensors a rollout engine loads (what the vLLM glue streams
after an update). The self-draft is one implementation; an EAGLE-3 head is another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from respec_verl.speculation.sampling import SamplingParams


@runtime_checkable
class Proposer(Protocol):
    def start(self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, first_tokens: torch.Tensor) -> None:
        """Each row's prompt ([B, T], valid mask [B, T], left padding) and first generated token [B]."""

    def push(self, tokens: torch.Tensor) -> None:
        """Tokens [B] emitted by a plain (k = 0) decoding step."""

    def propose(
        self, k: int, params: SamplingParams, generators: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to k drafts per row: ids [B, k'] and q [B, k', V] over the target vocabulary (None if
        greedy), k' <= k the same for every row; k' = 0 makes the step a plain decoding step (a
        drafter with nothing worth verifying). The engine then reports the step as k = 0."""

    def accept(self, draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> None:
        """The target kept `num_accepted` [B] of the last proposal's drafts, then emitted `next_token` [B]."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished requests leave the batch)."""

    def probe(self, k: int, last: torch.Tensor) -> None:
        """Propose k tokens after `last` [B] and leave the state as it was: one timed proposal of a profile."""


@runtime_checkable
class FeatureProposer(Proposer, Protocol):
    """A proposer that reads the target's hidden states (an EAGLE head), opt-in by `target_layers`.

    The engine then runs the target with hidden states and passes `features=` to `start`, `push`
    and `accept`: the residual streams after each of `target_layers` layers (0: the embeddings),
    concatenated in that order, [B, T, len(target_layers) * d], at the positions the target just
    read: the prompt's (as `prompt_ids`) in `start`, the fed token's [B, 1, F] in `push`, and
    those of [last, d_1 .. d_k] [B, k+1, F] in `accept`. Other proposers are called as before.
    """

    target_layers: tuple[int, ...]


@runtime_checkable
class DraftSource(Protocol):
    version: int

    def describe(self) -> str:
        """A short name for cost profiles, e.g. "LlamaForCausalLM-2L-2048V"."""

    def check_compatible(self, target_vocab_size: int) -> None:
        """Raise ValueError when the drafts cannot be read as the target's token ids."""

    def new_proposer(self, target_vocab_size: int) -> Proposer:
        """Fresh drafting state for one generate call."""


@runtime_checkable
class TrainableDrafter(DraftSource, Protocol):
    """A drafter that the learner distils from the actor's soft labels."""

    model: torch.nn.Module  # what the learner trains, checkpoints and copies
    draft_to_target: torch.Tensor | None  # draft output j -> target id (the labels' vocabulary); None: the target's

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an update changes; the rest stays frozen (and is pushed to an engine once)."""

    def draft_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V_draft] at every position of right-padded sequences [B, T] (the KD loss's input).

        A drafter that reads the target's hidden states declares `target_layers` (as its proposer
        does) and takes a third argument, the target's features [B, T, F] at those positions; a
        drafter trained with training-time test returns [D, B, T, V_draft], one slice per unrolled
        step (`kd_loss.unrolled_kd_loss`).
        """

    def replica(self, model: torch.nn.Module, version: int) -> TrainableDrafter:
        """A drafter of the same kind around `model` (a trained or frozen copy of `self.model`)."""

    def serving_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) as a rollout engine loads them: the checkpoint's names, tied ones included."""
