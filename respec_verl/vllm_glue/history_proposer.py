"""respec's history drafter served inside vLLM through vLLM's own custom proposer hook.

GRPO returns to each prompt every epoch and samples a group of answers to it, so a rollout repeats
its siblings, its earlier epochs and its own prompt. `HistoryProposer` drafts from that history with
`drafter.history.SuffixIndex` and needs no draft model. It returns token ids only, so vLLM's
rejection sampler treats each draft as one-hot (draft probability 1): a draft token d is accepted
with probability p(d) and otherwise replaced from the residual, so sampling stays exact (greedy:
accepted iff it is the argmax).

What it keeps: one `SuffixIndex` for the life of the engine (a proposer lives as long as its model
runner), so the history spans generate calls, i.e. verl's later steps and epochs; and, per batch
row, which index sequence holds that row's tokens. vLLM passes no request ids, only each row's
tokens (prompt and output so far), and rows move: finished requests leave and the batch is
condensed, unscheduled requests leave and come back, rows are reordered. So at each step a row
whose tracked sequence is still a prefix of its tokens (same length or shorter, same last tokens)
is extended by its new tokens; any other row takes a tracked sequence that is a prefix of its
tokens (one left by a row that moved, or a detached one, kept for a request that may return), or
starts a new one. Each sequence is held by one row at a time. Every row, siblings still being
generated included, is indexed as it grows, at O(new tokens) per step. A wrong match can only
index tokens under the wrong history: it costs acceptance, never correctness.

Enabled with `speculative_config={"method": "custom_class", "model":
"respec_verl.vllm_glue.history_proposer.HistoryProposer", "num_speculative_tokens": k}`; the index's
settings (`HistoryConfig` fields) are read from `additional_config["respec"]["history"]`.

Written against vLLM 0.31.0. The vLLM names it relies on (all public):
- `speculative_config.method == "custom_class"`: `vllm.v1.spec_decode.custom_class_proposer
  .create_custom_proposer` builds `HistoryProposer(vllm_config)` in the model runner;
- `GPUModelRunner.propose_draft_token_ids` (also run by `CPUModelRunner`) calls
  `propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=...)` after the
  step's bookkeeping and expects one list of draft token ids per row (lengths may differ, `[]` for
  none); it does not pass `num_spec_tokens_to_schedule`, so k is `num_speculative_tokens`;
- `CPUModelRunner.load_model` calls `drafter.load_model(model)` unguarded (the GPU runner checks
  `hasattr` first);
- no `take_last_draft_probs` method, so the rejection sampler gets `draft_probs=None` (one-hot);
  and no `model` attribute, which the runner would take for a draft model to wrap;
- `vllm_config.speculative_config.num_speculative_tokens`, `vllm_config.model_config.max_model_len`,
  `vllm_config.scheduler_config.max_num_seqs`, `vllm_config.additional_config`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from respec_verl.drafter.history import HistoryConfig, SuffixIndex

if TYPE_CHECKING:
    from vllm.config import VllmConfig

CONFIG_KEY = "additional_config.respec.history"
_TAIL = 4  # last tokens compared when deciding whether a tracked sequence is a row's prefix


def history_config(additional_config: Any) -> HistoryConfig:
    """`HistoryConfig` from vLLM's `additional_config["respec"]["history"]` (defaults where absent)."""
    given = ((additional_config or {}).get("respec") or {}).get("history") or {}
    allowed = [f.name for f in fields(HistoryConfig)]
    for key, value in given.items():
        if key not in allowed:
            raise ValueError(f"{CONFIG_KEY}.{key} is not a setting; allowed: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{CONFIG_KEY}.{key} = {value!r} is not valid; allowed: an integer >= 1")
    try:
        return HistoryConfig(**given)
    except ValueError as e:  # min_match > max_match
        raise ValueError(f"{CONFIG_KEY}: {e}") from None


@dataclass
class _Tracked:
    """An index sequence holding the first `length` tokens of a row, whose last tokens are `tail`."""

    seq_id: int
    length: int
    tail: tuple[int, ...]

    def is_prefix_of(self, row: np.ndarray) -> bool:
        return len(row) >= self.length and tuple(row[self.length - len(self.tail):self.length].tolist()) == self.tail


class HistoryProposer:
    """vLLM's `custom_class` proposer over a `SuffixIndex` of every row the engine has seen."""

    def __init__(self, vllm_config: VllmConfig):
        self.k = vllm_config.speculative_config.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.index = SuffixIndex(history_config(vllm_config.additional_config))
        self.rows: dict[int, _Tracked] = {}
        # sequences of rows that left the batch, newest last; a request that comes back continues its own
        self.detached: OrderedDict[int, _Tracked] = OrderedDict()
        self.max_detached = vllm_config.scheduler_config.max_num_seqs

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: the drafter is the index."""

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        """Up to k draft tokens per row (`[]` for none); row i's tokens are token_ids_cpu[i, :num_tokens_no_spec[i]]."""
        rows = [token_ids_cpu[i, :num_tokens_no_spec[i]] for i in range(len(sampled_token_ids))]
        self.track(rows)
        drafts = []
        lookback = self.index.config.max_match
        for row, sampled in zip(rows, sampled_token_ids):
            room = min(self.k, self.max_model_len - len(row))
            # rows that sampled nothing (a prefill chunk) get no draft, as in vLLM's ngram proposer
            drafts.append(self.index.draft(row[-lookback:].tolist(), room) if sampled and room > 0 else [])
        return drafts

    def track(self, rows: list[np.ndarray]) -> None:
        """Match each row to its index sequence and index the tokens the row gained since the last step."""
        kept = {i: t for i, t in self.rows.items() if i < len(rows) and t.is_prefix_of(rows[i])}
        for i, t in self.rows.items():
            if i not in kept:
                self.detached[t.seq_id] = t
        self.rows = kept
        for i, row in enumerate(rows):
            if i not in self.rows:
                self.rows[i] = self._claim(row)
            t = self.rows[i]
            if len(row) > t.length:
                self.index.extend(t.seq_id, row[t.length:].tolist())
                t.length, t.tail = len(row), tuple(row[-_TAIL:].tolist())
        while len(self.detached) > self.max_detached:
            self.detached.popitem(last=False)

    def _claim(self, row: np.ndarray) -> _Tracked:
        """The longest detached sequence that is a prefix of `row`, else a new empty sequence."""
        matches = [t for t in self.detached.values() if t.is_prefix_of(row)]
        if matches:
            return self.detached.pop(max(matches, key=lambda t: t.length).seq_id)
        return _Tracked(self.index.add(), 0, ())
