"""The EAGLE-3 head's proposer (`speculation.drafting.FeatureProposer`): a KV cache of its own over the
target's verified positions, and the chain it drafts on top of them.

The head's input at position i is the pair (token i+1, the target's features at i): every token
the engine reports comes with the target's features at the position before it. Pairs are queued
and fed in one pass at the next proposal (as the self-draft's "extend once"). Drafting then feeds
back the head's own output as the feature of each further step; those speculative entries are
always dropped at `accept`, since the target's real features replace them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from respec_verl.drafter.eagle3_head import KV
from respec_verl.speculation.sampling import SamplingParams

if TYPE_CHECKING:
    from respec_verl.drafter.eagle3 import Eagle3Drafter


class HeadCache:
    """The head's keys and values for a ragged batch: invalid entries (left padding of a chunk) are holes."""

    def __init__(self):
        self.kv: KV | None = None
        self.valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, L]

    def positions(self, valid: torch.Tensor) -> torch.Tensor:
        """A new entry's position is the number of valid entries before it (holes get a harmless one)."""
        before = self.valid.sum(dim=1, keepdim=True) if self.kv is not None else 0
        return (before + valid.long().cumsum(dim=1) - 1).clamp_min(0)

    def mask(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, T, L + T]: the valid past, and the chunk causally; every entry sees itself (no empty row)."""
        length = valid.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril() & valid[:, None, :]
        causal |= torch.eye(length, dtype=torch.bool, device=valid.device)
        if self.kv is None:
            return causal
        return torch.cat([self.valid[:, None, :].expand(-1, length, -1), causal], dim=2)

    def append(self, kv: KV, valid: torch.Tensor) -> None:
        self.kv = kv if self.kv is None else (torch.cat([self.kv[0], kv[0]], 2), torch.cat([self.kv[1], kv[1]], 2))
        self.valid = valid if self.valid.numel() == 0 else torch.cat([self.valid, valid], dim=1)

    def drop_last(self, n: int) -> None:
        if n and self.kv is not None:
            self.kv = (self.kv[0][:, :, :-n], self.kv[1][:, :, :-n])
            self.valid = self.valid[:, :-n]

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.kv is not None:
            self.kv = (self.kv[0][rows], self.kv[1][rows])
            self.valid = self.valid[rows]


class Eagle3Proposer:
    """Drafts k tokens per row from the target's features and follows what the target verified."""

    def __init__(self, drafter: Eagle3Drafter, target_vocab_size: int):
        drafter.check_compatible(target_vocab_size)
        self.drafter, self.head = drafter, drafter.model
        self.vocab_size = target_vocab_size
        self.target_layers = drafter.target_layers  # the engine hands over these layers' hidden states
        self.cache = HeadCache()
        # the queued pairs [B, W]: tokens, the target's features [B, W, F] at the positions before them, validity
        weight = self.head.fc.weight
        self.tokens = torch.zeros(0, 0, dtype=torch.long, device=weight.device)
        self.features = torch.zeros(0, 0, self.head.fc.in_features, dtype=weight.dtype, device=weight.device)
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=weight.device)
        self._drafted = 0  # the speculative entries at the cache's end
        self._hidden = torch.zeros(0)  # the last entry's pre-norm output, fed back as the next draft's feature

    def start(
        self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, first_tokens: torch.Tensor, features: torch.Tensor
    ) -> None:
        """Pairs (prompt token i+1 or the first token, features at prompt position i); left padding stays invalid."""
        self.tokens = torch.cat([prompt_ids[:, 1:], first_tokens[:, None]], dim=1)
        self.features, self.valid = features.to(self.features), prompt_valid

    def push(self, tokens: torch.Tensor, features: torch.Tensor) -> None:
        """A plain step's token [B], and the features [B, 1, F] at the position the target read."""
        self._queue(tokens[:, None], features, torch.ones_like(tokens[:, None], dtype=torch.bool))

    def accept(
        self, draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor, features: torch.Tensor
    ) -> None:
        """Drop the drafted chain, queue the verified tokens with the features [B, k+1, F] the target computed for them."""
        self.cache.drop_last(self._drafted)
        self._drafted = 0
        tokens = torch.cat([draft_tokens, next_token[:, None]], dim=1)
        tokens[torch.arange(len(tokens)), num_accepted] = next_token
        kept = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= num_accepted[:, None]
        self._queue(tokens, features, kept)

    def _queue(self, tokens: torch.Tensor, features: torch.Tensor, valid: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, tokens], dim=1)
        self.features = torch.cat([self.features, features.to(self.features)], dim=1)
        self.valid = torch.cat([self.valid, valid], dim=1)

    @torch.inference_mode()
    def propose(
        self, k: int, params: SamplingParams, generators: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed the queued pairs, then draft k tokens per row: ids [B, k] and q [B, k, V] (None if greedy)."""
        # right-align each row's queued pairs (their order kept), so that the last column is every row's latest
        order = self.valid.long().argsort(dim=1, stable=True)
        valid = self.valid.gather(1, order)
        first = int(valid.any(dim=0).long().argmax())  # leading columns that are holes in every row go
        order, valid = order[:, first:], valid[:, first:]
        ids = self.tokens.gather(1, order)
        feats = self.features.gather(1, order[..., None].expand(-1, -1, self.features.shape[-1]))
        self.tokens, self.features, self.valid = ids[:, :0], self.features[:, :0], valid[:, :0]
        logits = self._step(ids, self.head.fuse(feats), valid)
        return self.drafter.sample_chain(logits, k, params, generators, self.vocab_size, self._feed_draft)

    def _feed_draft(self, tokens: torch.Tensor) -> torch.Tensor:
        """EAGLE: a draft's next step reads the head's own output as its feature."""
        self._drafted += 1
        return self._step(tokens[:, None], self._hidden, torch.ones_like(tokens[:, None], dtype=torch.bool))

    def _step(self, ids: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Append one chunk to the cache; returns the last column's logits [B, V_draft] and keeps its
        pre-norm output [B, 1, d] for the next draft."""
        positions, mask = self.cache.positions(valid), self.cache.mask(valid)
        logits, prenorm, kv = self.head(ids, hidden, positions, self.cache.kv, mask)
        self.cache.append(kv, valid)
        self._hidden = prenorm[:, -1:]
        return logits[:, -1].float()

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)
        self.tokens, self.features, self.valid = self.tokens[rows], self.features[rows], self.valid[rows]

    def probe(self, k: int, last: torch.Tensor) -> None:
        """Time one k-token proposal after `last` (with zero features), then restore the state."""
        queued, drafted = (self.tokens, self.features, self.valid), self._drafted
        self.tokens, self.valid = last[:, None], torch.ones_like(last[:, None], dtype=torch.bool)
        self.features = queued[1].new_zeros(len(last), 1, queued[1].shape[-1])
        self._drafted = 0
        self.propose(k, SamplingParams(temperature=0.0), [None] * len(last))
        self.cache.drop_last(self._drafted + 1)
        (self.tokens, self.features, self.valid), self._drafted = queued, drafted
