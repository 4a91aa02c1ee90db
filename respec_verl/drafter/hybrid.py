"""History drafts where the run's history matches well, the learned drafter's everywhere else.

A history draft costs a table lookup and is often long and right on what a group of rollouts
repeats (answer templates, sibling answers, earlier epochs); a learned drafter costs forward passes
and covers what the history has never seen. Per row and per step, the hybrid takes the history
draft when the n-gram it continues is at least `strong_match` tokens long, and the model's draft
otherwise. When every row has a strong match the model does not run at all.

Sampling stays exact: a row's choice depends only on tokens already emitted, so each row's draft
comes from one known q (one-hot for history, the model's q otherwise) and rejection sampling
against that q leaves the target's distribution. The model proposer follows every verified token,
whichever drafter proposed it (`DraftProposer.accept` keeps in its cache only the drafts it fed
itself that the target kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from respec_verl.drafter.drafter import Drafter
from respec_verl.drafter.history import HistoryDrafter, HistoryProposer, one_hot
from respec_verl.drafter.model_proposer import DraftProposer
from respec_verl.speculation.sampling import SamplingParams


@dataclass
class RowChoices:
    """How many row-steps each drafter drafted, and the steps where the model did not run."""

    history_rows: int = 0
    model_rows: int = 0
    model_skipped_steps: int = 0

    @property
    def history_share(self) -> float:
        rows = self.history_rows + self.model_rows
        return self.history_rows / rows if rows else 0.0


class HybridDrafter:
    """`spec.drafting.DraftSource` of a history drafter and a learned one; `version` is the model's."""

    def __init__(self, history: HistoryDrafter, model: Drafter, strong_match: int = 4):
        longest = history.index.config.max_match
        if not 1 <= strong_match <= longest:
            raise ValueError(f"hybrid strong_match = {strong_match} is not valid; allowed: an integer in "
                             f"[1, {longest}] (the history's max_match: a longer match is never found)")
        self.history = history
        self.model = model
        self.strong_match = strong_match
        self.choices = RowChoices()

    @property
    def version(self) -> int:
        return self.model.version

    def describe(self) -> str:
        return f"hybrid-{self.history.describe()}-min{self.strong_match}+{self.model.describe()}"

    def check_compatible(self, target_vocab_size: int) -> None:
        self.model.check_compatible(target_vocab_size)

    def new_proposer(self, target_vocab_size: int) -> HybridProposer:
        return HybridProposer(
            self.history.new_proposer(target_vocab_size), self.model.new_proposer(target_vocab_size),
            self.strong_match, self.choices,
        )


class HybridProposer:
    """Both drafters follow every row; `propose` picks per row."""

    def __init__(self, history: HistoryProposer, model: DraftProposer, strong_match: int, choices: RowChoices):
        self.history = history
        self.model = model
        self.strong_match = strong_match
        self.choices = choices

    def start(self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, first_tokens: torch.Tensor) -> None:
        self.history.start(prompt_ids, prompt_valid, first_tokens)
        self.model.start(prompt_ids, prompt_valid, first_tokens)

    def push(self, tokens: torch.Tensor) -> None:
        self.history.push(tokens)
        self.model.push(tokens)

    def propose(
        self, k: int, params: SamplingParams, generators: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, matches = self.history.lookup(k)
        strong = torch.tensor([m >= self.strong_match for m in matches], device=tokens.device)
        history_rows = int(strong.sum())
        self.choices.history_rows += history_rows
        self.choices.model_rows += len(matches) - history_rows
        if history_rows == len(matches):  # every row's draft from history: as long as the longest one
            self.choices.model_skipped_steps += 1
            return tokens, None if params.greedy else one_hot(tokens, self.history.vocab_size)
        last = torch.tensor([row[-1] for row in self.history.rows], device=tokens.device)
        tokens = torch.cat([tokens, last[:, None].expand(-1, k - tokens.shape[1])], dim=1)  # pad to k
        q = None if params.greedy else one_hot(tokens, self.history.vocab_size)
        model_tokens, model_q = self.model.propose(k, params, generators)
        tokens = torch.where(strong[:, None], tokens, model_tokens)
        if q is not None:
            q = torch.where(strong[:, None, None], q, model_q)
        return tokens, q

    def accept(self, draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> None:
        self.history.accept(draft_tokens, num_accepted, next_token)
        self.model.accept(draft_tokens, num_accepted, next_token)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.history.select_rows(rows)
        self.model.select_rows(rows)

    def probe(self, k: int, last: torch.Tensor) -> None:
        """Both drafters' proposals: the cost of a step where some row needs the model."""
        self.history.probe(k, last)
        self.model.probe(k, last)
