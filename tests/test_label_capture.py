"""Labels taken from verl's old-log-prob forward: the same labels, the same drafter update, no extra forward."""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import pytest
import torch

from respec_verl.drafter import DrafterLearner, LearnerConfig, self_draft
from respec_verl.drafter.label_capture import LabelCapture
from tests.conftest import tiny_llama
from tests.test_learner import rollouts


def padded_forward(model, sequences, micro_batch: int, pad_id: int = 0) -> None:
    """What verl's FSDP engine does without remove-padding: right-padded micro-batches and their mask."""
    for start in range(0, len(sequences), micro_batch):
        rows = sequences[start : start + micro_batch]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, seq in enumerate(rows):
            ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)


def learner_for(target, **overrides) -> DrafterLearner:
    config = dict(steps_per_update=2, batch_size=4, lr=1e-3, top_k=8, temperature=0.7, async_update=False, seed=5)
    config.update(overrides)
    return DrafterLearner(self_draft(target, 1), LearnerConfig(**config), target=target)


def test_captured_labels_equal_those_of_a_forward_of_each_rollout():
    target = tiny_llama(seed=61)
    prompts, responses, _ = rollouts(target, 6)
    prompts[1] = prompts[1] + [5, 9]  # uneven lengths: padding inside the micro-batches
    learner = learner_for(target)
    capture = LabelCapture(learner.label_logits)
    with capture.hooked(target):
        padded_forward(target, [p + r for p, r in zip(prompts, responses)], micro_batch=4)
    assert capture.labels.sequences == 6 and capture.skipped_calls == 0
    for p, r in zip(prompts, responses):
        with torch.no_grad():
            logits = target(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) - 1 + len(r)]
        direct = learner.label_logits(logits[None])
        got = capture.labels.get(p, r[:-1])  # verl's response mask may end before the last token
        assert got is not None and got.logprobs.shape == (len(r) - 1, 8)
        torch.testing.assert_close(got.logprobs, direct.logprobs[0, :-1], atol=1e-5, rtol=1e-5)
        assert torch.equal(got.sparse_ids, direct.sparse_ids[0, :-1])
    assert capture.labels.get(prompts[0], [responses[0][0] + 1]) is None  # another response: not found
    assert capture.labels.get(prompts[0], []) is None


def test_the_drafter_trains_the_same_on_captured_labels():
    target = tiny_llama(seed=62)
    prompts, responses, rewards = rollouts(target, 8)
    by_forward, by_capture = learner_for(target), learner_for(target)
    by_forward.add_rollouts(prompts, responses, rewards)
    capture = LabelCapture(by_capture.label_logits)
    with capture.hooked(target):
        padded_forward(target, [p + r for p, r in zip(prompts, responses)], micro_batch=3)
    from respec_verl.drafter.recording import LabelledRollout

    by_capture.add_labelled(
        [LabelledRollout(p, r, s, capture.labels.get(p, r)) for p, r, s in zip(prompts, responses, rewards)]
    )
    expected = by_forward.update(1)["respec/drafter/loss"]
    assert by_capture.update(1)["respec/drafter/loss"] == pytest.approx(expected, rel=1e-5)


class _Logits(torch.nn.Module):
    """Returns fixed logits, to drive the hook with layouts a tiny model does not produce."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits)


def test_packed_rows_are_split_where_positions_restart():
    logits = torch.randn(1, 7, 11)
    module = _Logits(logits)
    capture = LabelCapture(lambda x: SimpleNamespace(logprobs=torch.log_softmax(x, -1), sparse_ids=None))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with capture.hooked(module):
        module(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3]]))
    assert capture.labels.sequences == 2
    got = capture.labels.get([4, 5], [6, 7])
    torch.testing.assert_close(got.logprobs, torch.log_softmax(logits[0, 4:6], -1))
    assert capture.labels.get([3], [4]) is None  # 3 ends one sequence and 4 starts the next


def test_a_layout_the_hook_cannot_split_is_skipped():
    module = _Logits(torch.randn(2, 4, 11))
    capture = LabelCapture(lambda x: SimpleNamespace(logprobs=x, sparse_ids=None))
    with capture.hooked(module):
        module(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))
    assert capture.skipped_calls == 1 and capture.labels.sequences == 0
    module(input_ids=torch.ones(2, 4, dtype=torch.long))  # the hook is gone after the block
    assert capture.skipped_calls == 1


def test_the_capture_times_its_labelling_and_nothing_else():
    module = _Logits(torch.randn(2, 4, 11))

    def slow_labels(x):
        time.sleep(0.05)
        return SimpleNamespace(logprobs=x, sparse_ids=None)

    capture = LabelCapture(slow_labels)
    with capture.hooked(module):
        module(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))
        assert capture.seconds == 0.0  # a skipped call labels nothing
        module(input_ids=torch.ones(2, 4, dtype=torch.long))  # two rows: two labellings
    assert 0.1 <= capture.seconds < 1.0


def test_worker_labels_uncaptured_rollouts_with_a_forward_and_reports_the_reused_share():
    from tensordict import TensorDict

    from respec_verl.verl_glue.worker import RespecActorRolloutRefWorker

    target = tiny_llama(seed=63)
    prompts, responses, rewards = rollouts(target, 4)
    learner = learner_for(target)
    capture = LabelCapture(learner.label_logits)
    with capture.hooked(target):  # the old-log-prob pass saw only the first three rollouts
        padded_forward(target, [p + r for p, r in zip(prompts[:3], responses[:3])], micro_batch=2)
    nested = lambda rows, dtype=torch.long: torch.nested.as_nested_tensor(  # noqa: E731
        [torch.tensor(r, dtype=dtype) for r in rows], layout=torch.jagged
    )
    data = TensorDict(
        {
            "prompts": nested(prompts),
            "responses": nested(responses),
            "response_mask": nested([[1] * len(r) for r in responses]),
            "rm_scores": nested([[0.0] * (len(r) - 1) + [s] for r, s in zip(responses, rewards)], torch.float32),
        },
        batch_size=[4],
    )
    worker = SimpleNamespace(
        respec=SimpleNamespace(evolution=learner.config),
        _respec_learner=learner,
        actor=SimpleNamespace(engine=SimpleNamespace(eval_mode=contextlib.nullcontext)),
    )
    reused = RespecActorRolloutRefWorker._respec_add_rollouts(worker, data, capture.labels)
    assert reused == pytest.approx(3 / 4)
    reference = learner_for(target)
    reference.add_rollouts(prompts, responses, rewards)
    expected = reference.update(1)
    metrics = learner.update(1)
    assert metrics["respec/drafter/rollouts"] == 4
    assert metrics["respec/drafter/loss"] == pytest.approx(expected["respec/drafter/loss"], rel=1e-5)
    assert RespecActorRolloutRefWorker._respec_add_rollouts(worker, data, None) == 0.0  # nothing captured
