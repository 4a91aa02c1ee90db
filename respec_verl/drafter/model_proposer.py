"""The small causal LM's proposer (`spec.drafting.Proposer`): its own KV state and the tokens it has not seen yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from respec_verl.speculation.kv_state import KVState
from respec_verl.speculation.sampling import SamplingParams

if TYPE_CHECKING:
    from respec_verl.drafter.drafter import Drafter


class DraftProposer:
    """Proposes k tokens per row with their probabilities q, and follows what the target accepted.

    Tokens emitted while speculation is off are queued and fed in one pass the next time k > 0
    (ReSpec's "extend once"), so plain decoding steps cost the drafter nothing. The prompt is queued
    the same way: a batch that never speculates (the controller keeps large batches plain) never
    runs the drafter, and one that starts speculating later prefills only the rows still live.
    """

    def __init__(self, drafter: Drafter, target_vocab_size: int):
        drafter.check_compatible(target_vocab_size)
        self.drafter = drafter
        self.vocab_size = target_vocab_size
        self.state = KVState(drafter.model)
        self.pending: list[list[int]] = []
        self._fed_drafts = 0  # the drafts of the last proposal in the cache (all but the last)
        self._own = torch.zeros(0, 0, dtype=torch.long)  # the last proposal's drafts

    def start(self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, first_tokens: torch.Tensor) -> None:
        """Queue each row's prompt (its valid tokens) and first token; the drafter runs on the first proposal."""
        self.pending = [ids[valid].tolist() + [int(t)] for ids, valid, t in zip(prompt_ids, prompt_valid, first_tokens)]

    def push(self, tokens: torch.Tensor) -> None:
        """Queue tokens emitted by a plain decoding step."""
        for row, token in enumerate(tokens.tolist()):
            self.pending[row].append(token)

    def propose(
        self, k: int, params: SamplingParams, generators: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft k tokens per row: ids [B, k] and q [B, k, V] over the target vocabulary (None if greedy)."""
        width = max(len(p) for p in self.pending)
        chunk = torch.zeros(len(self.pending), width, dtype=torch.long)
        valid = torch.zeros(len(self.pending), width, dtype=torch.bool)
        for row, tokens in enumerate(self.pending):  # right-aligned, holes on the left
            chunk[row, width - len(tokens) :] = torch.tensor(tokens)
            valid[row, width - len(tokens) :] = True
        logits = self.state.forward(chunk, valid, last_only=True)
        one = torch.ones(len(chunk), 1, dtype=torch.bool)
        draft_tokens, q = self.drafter.sample_chain(
            logits, k, params, generators, self.vocab_size, lambda tokens: self.state.forward(tokens[:, None], one, True)
        )
        self._fed_drafts = k - 1
        self.pending = [[] for _ in self.pending]
        self._own = draft_tokens
        return draft_tokens, q

    def accept(self, draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> None:
        """Keep the accepted drafts that the drafter has already seen in its cache, and queue the rest.

        The verified drafts need not be this proposer's own (a hybrid verifies another drafter's
        tokens in some rows): of the drafts it fed itself, only the leading ones equal to the
        verified tokens stay, and every accepted token after them is queued.
        """
        fed = self._fed_drafts
        self._fed_drafts = 0
        kept = torch.zeros(len(self.pending), dtype=torch.long)
        if fed:
            same = (draft_tokens[:, :fed] == self._own[:, :fed]).to(torch.long).cumprod(dim=1).bool()
            keep = same & (torch.arange(fed)[None, :] < num_accepted[:, None])
            self.state.keep_last(keep)
            kept = keep.sum(dim=1)
        for row, (start, n, token) in enumerate(zip(kept.tolist(), num_accepted.tolist(), next_token.tolist())):
            self.pending[row] += draft_tokens[row, start:n].tolist() + [token]

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.state.batch_size:  # the drafter has a cache once it has proposed
            self.state.select_rows(rows)
        self.pending = [self.pending[r] for r in rows.tolist()]

    def probe(self, k: int, last: torch.Tensor) -> None:
        """One k-token proposal after `last` as the engine runs it, then roll the cache back to where it was."""
        batch = last.shape[0]
        self.pending = [[int(t)] for t in last]
        drafts, _ = self.propose(k, SamplingParams(temperature=0.0), [None] * batch)
        self.accept(drafts, torch.zeros(batch, dtype=torch.long), last)  # rejects the fed drafts
        self.state.keep_last(torch.zeros(batch, 1, dtype=torch.bool))  # and the token fed first
