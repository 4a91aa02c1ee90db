"""A model-free drafter over the run's own token history: prompts, sibling answers, earlier rollouts.

GRPO samples a group of answers to each prompt and returns to each prompt every epoch, so a rollout
repeats its siblings, its earlier epochs and its own prompt (RhymeRL, DAS, Seer, SuffixDecoding).
`SuffixIndex` keeps an n-gram table over recent token sequences; a draft is the continuation of
the longest n-gram (up to `max_match` tokens) that ends the row's context, taken by majority vote
over that n-gram's recent occurrences, position by position, for as long as the vote agrees
(`min_agreement`). Every sequence that a generate call produces (each row's prompt and output)
enters the index as it grows, so siblings still being generated count, and stays there for later
calls until the token budget evicts it (oldest first).

The draft is deterministic given the history, so it is verified as a one-hot q: accepted with
probability p(d), the residual max(0, p - q) otherwise, which keeps sampling exact
(`spec.verifier.rejection_sample`). A row's draft depends on other rows' past tokens only, never on
its own verification randomness. A step drafts as many tokens as the longest draft found (none when
no row matched: the engine then decodes plainly); rows with shorter drafts are padded with their
last token: a wasted verification slot, never a wrong output.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from respec_verl.speculation.sampling import SamplingParams


@dataclass(frozen=True)
class HistoryConfig:
    """min_match/max_match: n-gram lengths tried, longest first. max_tokens: the index's token budget
    (older sequences are evicted). max_occurrences: recent occurrences kept per n-gram (the vote).
    min_agreement: a draft stops at the first position where its token has fewer than this share of
    the occurrences still voting, so each row drafts only as far as its history agrees (fewer wasted
    verification slots at large batches, slightly fewer accepted tokens; 0 drafts as far as any
    occurrence goes)."""

    min_match: int = 2
    max_match: int = 8
    max_tokens: int = 200_000
    max_occurrences: int = 16
    min_agreement: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_match <= self.max_match:
            raise ValueError(f"history min_match/max_match = {self.min_match}/{self.max_match} are not valid; "
                             "allowed: 1 <= min_match <= max_match")
        if self.max_tokens < 1 or self.max_occurrences < 1:
            raise ValueError("history max_tokens and max_occurrences must be >= 1")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"history min_agreement = {self.min_agreement} is not valid; "
                             "allowed: 0 <= min_agreement <= 1")


_POSITION_BITS = 32  # an occurrence is one int: sequence id << 32 | position after the n-gram


class SuffixIndex:
    """Token sequences and an n-gram table pointing at the position after each occurrence.

    Adding a token costs one table entry per n-gram length (max_match - min_match + 1); the table is
    keyed by the n-gram's hash, so a collision can only cost a draft its acceptance, never
    correctness. Memory grows with the table's entries, bounded through `max_tokens`; `memory()` counts them.
    """

    def __init__(self, config: HistoryConfig | None = None):
        self.config = config or HistoryConfig()
        self._sequences: OrderedDict[int, list[int]] = OrderedDict()  # oldest first
        self._table: dict[int, list[int]] = {}
        self._next_id = 0
        self.tokens = 0

    def add(self, tokens: Sequence[int] = ()) -> int:
        """A new sequence; returns its id (extend it as it grows)."""
        seq_id = self._next_id
        self._next_id += 1
        self._sequences[seq_id] = []
        self.extend(seq_id, tokens)
        return seq_id

    def extend(self, seq_id: int, tokens: Sequence[int]) -> None:
        seq = self._sequences.get(seq_id)
        if seq is None:  # evicted: a sequence that outlived the budget stops being indexed
            return
        lo, hi, cap = self.config.min_match, self.config.max_match, self.config.max_occurrences
        for token in tokens:
            seq.append(int(token))
            end = len(seq)
            code = seq_id << _POSITION_BITS | end
            for n in range(lo, min(hi, end) + 1):
                slots = self._table.setdefault(hash(tuple(seq[end - n:])), [])
                slots.append(code)
                if len(slots) > cap:
                    del slots[0]
        self.tokens += len(tokens)
        self._evict()

    def draft(self, context: Sequence[int], k: int) -> list[int]:
        """Up to k tokens continuing `context`: the longest matching n-gram's majority continuation."""
        return self.lookup(context, k)[0]

    def lookup(self, context: Sequence[int], k: int) -> tuple[list[int], int]:
        """`draft`'s tokens and the length of the n-gram they continue (0: no match), the draft's score."""
        mask = (1 << _POSITION_BITS) - 1
        for n in range(min(self.config.max_match, len(context)), self.config.min_match - 1, -1):
            slots = self._table.get(hash(tuple(context[len(context) - n:])))
            if not slots:
                continue
            candidates = []
            for code in slots:
                seq = self._sequences.get(code >> _POSITION_BITS)
                if seq is not None and (code & mask) < len(seq):
                    candidates.append((seq, code & mask))
            if candidates:
                return _majority_continuation(candidates, k, self.config.min_agreement), n
        return [], 0

    def memory(self) -> dict[str, int]:
        """What the index holds: sequences, tokens and n-gram entries."""
        return {"sequences": len(self._sequences), "tokens": self.tokens,
                "ngrams": len(self._table), "occurrences": sum(len(s) for s in self._table.values())}

    def _evict(self) -> None:
        lo, hi = self.config.min_match, self.config.max_match
        while self.tokens > self.config.max_tokens and len(self._sequences) > 1:
            seq_id, seq = self._sequences.popitem(last=False)
            self.tokens -= len(seq)
            for end in range(lo, len(seq) + 1):
                for n in range(lo, min(hi, end) + 1):
                    key = hash(tuple(seq[end - n:end]))
                    slots = self._table.get(key)
                    if slots is None:
                        continue
                    slots[:] = [code for code in slots if code >> _POSITION_BITS != seq_id]
                    if not slots:
                        del self._table[key]


def _majority_continuation(candidates: list[tuple[list[int], int]], k: int, min_agreement: float) -> list[int]:
    out: list[int] = []
    for j in range(k):
        votes = Counter(seq[end + j] for seq, end in candidates if end + j < len(seq))
        if not votes:
            break
        token, count = votes.most_common(1)[0]
        if count < min_agreement * sum(votes.values()):  # the history disagrees from here on
            break
        out.append(token)
        candidates = [(seq, end) for seq, end in candidates if end + j < len(seq) and seq[end + j] == token]
    return out


class HistoryDrafter:
    """`spec.drafting.DraftSource` over a `SuffixIndex`; the index outlives generate calls (the history)."""

    def __init__(self, config: HistoryConfig | None = None):
        self.index = SuffixIndex(config)
        self.version = 0

    def describe(self) -> str:
        c = self.index.config
        return f"history-{c.min_match}to{c.max_match}"

    def check_compatible(self, target_vocab_size: int) -> None:
        """Drafts are tokens the target itself produced or was prompted with: always its vocabulary."""

    def new_proposer(self, target_vocab_size: int) -> HistoryProposer:
        return HistoryProposer(self.index, target_vocab_size)


class HistoryProposer:
    """One generate call's rows as sequences of the shared index; one-hot q for sampled drafts."""

    def __init__(self, index: SuffixIndex, target_vocab_size: int):
        self.index = index
        self.vocab_size = target_vocab_size
        self.rows: list[list[int]] = []
        self.ids: list[int] = []
        self.device = torch.device("cpu")

    def start(self, prompt_ids: torch.Tensor, prompt_valid: torch.Tensor, first_tokens: torch.Tensor) -> None:
        self.device = prompt_ids.device
        self.rows = [ids[valid].tolist() + [int(t)] for ids, valid, t in zip(prompt_ids, prompt_valid, first_tokens)]
        self.ids = [self.index.add(row) for row in self.rows]

    def push(self, tokens: torch.Tensor) -> None:
        for row, token in enumerate(tokens.tolist()):
            self._append(row, [token])

    def propose(
        self, k: int, params: SamplingParams, generators: list[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, _ = self.lookup(k)
        return tokens, None if params.greedy else one_hot(tokens, self.vocab_size)

    def lookup(self, k: int) -> tuple[torch.Tensor, list[int]]:
        """Each row's draft [B, k'] and the length of the match behind it; k' is the longest draft
        found (at most k; 0 when no row matched), shorter drafts padded with the row's last token."""
        found, matches = [], []
        for row in self.rows:
            tokens, match = self.index.lookup(row, k)
            found.append(tokens)
            matches.append(match)
        width = max(map(len, found), default=0)
        drafts = [tokens + [row[-1]] * (width - len(tokens)) for tokens, row in zip(found, self.rows)]
        return torch.tensor(drafts, dtype=torch.long, device=self.device).view(len(drafts), width), matches

    def accept(self, draft_tokens: torch.Tensor, num_accepted: torch.Tensor, next_token: torch.Tensor) -> None:
        for row, (n, token) in enumerate(zip(num_accepted.tolist(), next_token.tolist())):
            self._append(row, draft_tokens[row, :n].tolist() + [token])

    def select_rows(self, rows: torch.Tensor) -> None:
        keep = rows.tolist()
        self.rows = [self.rows[r] for r in keep]
        self.ids = [self.ids[r] for r in keep]

    def probe(self, k: int, last: torch.Tensor) -> None:
        """A lookup per row; nothing to roll back (the index is only read)."""
        for row, token in zip(self.rows, last.tolist()):
            self.index.draft(row[:-1] + [int(token)], k)

    def _append(self, row: int, tokens: list[int]) -> None:
        self.rows[row].extend(tokens)
        self.index.extend(self.ids[row], tokens)


def one_hot(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """q [B, k, V] of deterministic drafts [B, k]: verification accepts d with probability p(d)."""
    q = torch.zeros(*tokens.shape, vocab_size, device=tokens.device)
    return q.scatter_(-1, tokens.unsqueeze(-1), 1.0)
