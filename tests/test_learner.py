"""The online drafter learner: it learns, versions, overlaps, survives bad updates, and checkpoints."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import pytest
import torch

from respec_verl.drafter import DrafterLearner, LearnerConfig, self_draft
from respec_verl.drafter.distill import attach_teacher, make_kd_batch
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss
from respec_verl.drafter.recording import recorded_updates
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.drafting import TrainableDrafter
from tests.conftest import tiny_llama

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)


def rollouts(target, count: int, seed: int = 0):
    """Prompts, the target's greedy responses and rewards in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 97, (count, 3), generator=gen).tolist()
    responses = SpeculativeEngine(target).generate(prompts, GREEDY).token_ids
    return prompts, responses, torch.rand(count, generator=gen).tolist()


def small_learner(target, **overrides) -> DrafterLearner:
    config = dict(steps_per_update=2, batch_size=4, lr=1e-3, top_k=0, async_update=False)
    config.update(overrides)
    return DrafterLearner(self_draft(target, 1), LearnerConfig(**config), target=target)


def weights_of(drafter) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in drafter.model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_an_update_lowers_kd_loss_and_raises_acceptance():
    target = tiny_llama(seed=41, layers=4, init_std=0.1)
    prompts, responses, rewards = rollouts(target, 160)
    learner = small_learner(target, steps_per_update=60, batch_size=32, lr=3e-3)
    held_out = make_kd_batch(prompts[128:], responses[128:])
    attach_teacher(held_out, target, learner.latest(), 1.0, 0)

    def held_out_loss(drafter) -> float:
        with torch.no_grad():
            logits = drafter.model(input_ids=held_out.input_ids, attention_mask=held_out.attention_mask).logits
        return float(reward_weighted_kd_loss(logits, held_out.teacher, held_out.response_mask))

    engine = SpeculativeEngine(target, self_draft(target, 1), FixedK(3))
    before_loss = held_out_loss(learner.latest())
    before_acc = engine.generate(prompts[128:], GREEDY).stats.acceptance_rate
    learner.add_rollouts(prompts[:128], responses[:128], rewards[:128])
    metrics = learner.update(step=1)
    engine = SpeculativeEngine(target, learner.latest(), FixedK(3))
    after_acc = engine.generate(prompts[128:], GREEDY).stats.acceptance_rate
    assert metrics["respec/drafter/update_ok"] == 1.0
    assert metrics["respec/drafter/loss_last"] < metrics["respec/drafter/loss"]
    assert held_out_loss(learner.latest()) < 0.7 * before_loss
    assert after_acc > before_acc + 0.1, (before_acc, after_acc)
    assert engine.drafter_version == 1


def test_version_advances_once_per_update_every_interval_steps():
    target = tiny_llama(seed=42)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target, interval=2)
    versions = []
    for step in range(1, 5):
        learner.add_rollouts(prompts, responses, rewards)
        learner.update(step)
        versions.append(learner.version)
    assert versions == [0, 1, 1, 2]
    metrics = learner.metrics
    assert metrics["respec/drafter/version"] == 2 and metrics["respec/drafter/updates"] == 2
    assert metrics["respec/drafter/rollouts"] == 16  # steps 3 and 4 both fed the second update
    assert metrics["respec/drafter/tokens"] == 2 * 4 * 16  # 2 optimizer steps x 4 rollouts x 16 tokens
    assert metrics["respec/drafter/tokens_seen"] == 2 * metrics["respec/drafter/tokens"]
    assert 0.1 <= metrics["respec/drafter/weight_min"] <= metrics["respec/drafter/weight_mean"]
    assert metrics["respec/drafter/weight_max"] == pytest.approx(1.0)
    assert learner.update(5) is None and learner.update(6) is None  # nothing buffered: no update
    assert learner.version == 2


def test_interval_zero_keeps_the_drafter_frozen_and_labels_nothing():
    target = tiny_llama(seed=42)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target, interval=0)
    before = weights_of(learner.latest())
    calls = []
    target.register_forward_pre_hook(lambda module, args: calls.append(1))
    for step in range(1, 4):
        learner.add_rollouts(prompts, responses, rewards)
        assert learner.update(step) is None
    learner.wait()
    assert learner.version == 0 and same_weights(weights_of(learner.latest()), before)
    assert calls == []  # no teacher forward: a frozen drafter costs the RL step nothing


def test_published_drafters_are_never_mutated():
    target = tiny_llama(seed=43)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target)
    first = learner.latest()
    frozen = weights_of(first)
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    assert learner.latest() is not first and first.version == 0
    assert same_weights(weights_of(first), frozen)
    assert not same_weights(weights_of(learner.latest()), frozen)


class GatedLearner(DrafterLearner):
    """Its loss waits for a test event: an update that is provably still running."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started, self.release = threading.Event(), threading.Event()

    def _loss(self, draft_logits, batch):
        self.started.set()
        assert self.release.wait(10), "test gate never released"
        return super()._loss(draft_logits, batch)


def test_async_update_overlaps_and_rollouts_lag_at_most_one_version():
    target = tiny_llama(seed=44)
    prompts, responses, rewards = rollouts(target, 8)
    config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=0)
    learner = GatedLearner(self_draft(target, 1), config, target=target)
    learner.add_rollouts(prompts, responses, rewards)
    assert learner.update(1) is None  # returned while the update is blocked inside its loss
    assert learner.started.wait(10) and learner.pending
    # the caller runs the next rollout meanwhile, with the drafter one version behind
    engine = SpeculativeEngine(target, learner.latest(), FixedK(2))
    out = engine.generate(prompts, GREEDY)
    assert out.drafter_version == 0 and learner.pending
    learner.add_rollouts(prompts, out.token_ids, rewards)
    second = threading.Thread(target=learner.update, args=(2,))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # update 2 waits for update 1: never two versions behind
    assert learner.version == 0
    learner.release.set()
    second.join(10)
    assert learner.version >= 1  # update 1 finished before update 2 started
    metrics = learner.wait()
    assert learner.version == 2 and not learner.pending
    assert metrics["respec/drafter/version"] == 2 and metrics["respec/drafter/failures"] == 0


class FaultyLearner(DrafterLearner):
    """Its next loss is NaN after wrecking the weights, or raises: the failures the learner must absorb."""

    fault: str | None = None

    def _loss(self, draft_logits, batch):
        fault, self.fault = self.fault, None
        if fault == "nan":
            with torch.no_grad():  # as a diverging optimizer step would: the trained weights (not the frozen embedding)
                self._trainable[0].fill_(math.nan)
            return super()._loss(draft_logits, batch) * math.nan
        if fault == "raise":
            raise RuntimeError("boom in the background")
        return super()._loss(draft_logits, batch)


@pytest.mark.parametrize("fault,async_update,reason", [("nan", False, "loss nan"), ("raise", True, "boom")])
def test_failed_update_keeps_last_good_drafter_and_next_update_works(fault, async_update, reason, caplog):
    target = tiny_llama(seed=45)
    prompts, responses, rewards = rollouts(target, 8)
    config = LearnerConfig(steps_per_update=2, batch_size=4, lr=1e-3, top_k=0, async_update=async_update)
    learner = FaultyLearner(self_draft(target, 1), config, target=target)
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    learner.wait()
    good, state = learner.latest(), learner.state_dict()["model"]
    learner.fault = fault
    learner.add_rollouts(prompts, responses, rewards)
    with caplog.at_level(logging.WARNING, logger="respec_verl.drafter.learner"):
        learner.update(2)  # must not raise, in either mode
        metrics = learner.wait()
    assert reason in caplog.text
    assert metrics["respec/drafter/failures"] == 1 and metrics["respec/drafter/update_ok"] == 0
    assert learner.latest() is good and learner.version == 1
    assert same_weights(learner.state_dict()["model"], state)  # training copy restored, no NaN left
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(3)
    metrics = learner.wait()
    assert metrics["respec/drafter/update_ok"] == 1 and learner.version == 2
    assert math.isfinite(metrics["respec/drafter/loss"])
    assert not same_weights(learner.state_dict()["model"], state)


def test_exploding_loss_is_rejected_by_max_loss(caplog):
    target = tiny_llama(seed=46)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target, max_loss=1e-6)
    before = weights_of(learner.latest())
    learner.add_rollouts(prompts, responses, rewards)
    with caplog.at_level(logging.WARNING, logger="respec_verl.drafter.learner"):
        metrics = learner.update(1)
    assert "max_loss" in caplog.text
    assert metrics["respec/drafter/failures"] == 1 and learner.version == 0
    assert same_weights(weights_of(learner.latest()), before)


def test_state_dict_round_trip_resumes_identically():
    target = tiny_llama(seed=47)
    prompts, responses, rewards = rollouts(target, 8)
    a = small_learner(target)
    a.add_rollouts(prompts, responses, rewards)
    a.update(1)
    b = small_learner(target)
    b.load_state_dict(a.state_dict())
    assert b.version == a.version == 1 and b.metrics == {} and b.state_dict()["counters"] == a.state_dict()["counters"]
    assert same_weights(weights_of(b.latest()), weights_of(a.latest()))
    for learner in (a, b):  # the same next update from the same state gives the same drafter
        learner.add_rollouts(prompts, responses, rewards)
        learner.update(2)
    assert b.version == 2
    for name, tensor in weights_of(a.latest()).items():
        torch.testing.assert_close(weights_of(b.latest())[name], tensor, rtol=0, atol=0)


def test_teacher_logits_can_be_given_instead_of_a_target():
    target = tiny_llama(seed=48)
    prompts, responses, rewards = rollouts(target, 4)
    batch = make_kd_batch(prompts, responses)
    with torch.no_grad():
        logits = target(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    given = [logits[i, len(p) - 1 : len(p) - 1 + len(r)] for i, (p, r) in enumerate(zip(prompts, responses))]
    config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=8, async_update=False, seed=3)
    by_logits = DrafterLearner(self_draft(target, 1), config)
    by_target = DrafterLearner(self_draft(target, 1), config, target)
    by_logits.add_rollouts(prompts, responses, rewards, teacher_logits=given)
    by_target.add_rollouts(prompts, responses, rewards)
    loss = by_target.update(1)["respec/drafter/loss"]
    assert by_logits.update(1)["respec/drafter/loss"] == pytest.approx(loss, rel=1e-5)
    with pytest.raises(ValueError, match="teacher_logits"):
        DrafterLearner(self_draft(target, 1), config).add_rollouts(prompts, responses, rewards)
    with pytest.raises(ValueError, match="score"):
        by_target.add_rollouts(prompts, responses)


def test_recorded_updates_replay_to_the_same_drafter(tmp_path):
    """A second learner fed the recorded updates follows the run's drafter exactly (same data, same seed)."""
    target = tiny_llama(seed=49)
    recording = small_learner(target, record_dir=str(tmp_path / "updates"), top_k=8)
    batches = [rollouts(target, 6, seed=s) for s in (1, 2, 3)]
    for step, (prompts, responses, rewards) in enumerate(batches, start=1):
        recording.add_rollouts(prompts, responses, rewards)
        recording.update(step)
    recorded = recorded_updates(tmp_path / "updates")
    assert [v for v, _ in recorded] == [1, 2, 3] and [len(r) for _, r in recorded] == [6, 6, 6]
    assert recorded[0][1][0].score == pytest.approx(batches[0][2][0])
    assert recorded[0][1][0].teacher.sparse_ids.shape[-1] == 8  # the labels as the learner stored them

    replay = DrafterLearner(self_draft(target, 1), recording.config)  # no target: the labels are recorded
    for step, (_, labelled) in enumerate(recorded, start=1):
        replay.add_labelled(labelled)
        replay.update(step)
    assert replay.version == 3
    assert same_weights(weights_of(replay.latest()), weights_of(recording.latest()))
    uniform = DrafterLearner(self_draft(target, 1), LearnerConfig(**{**recording.config.__dict__, "weighting": "uniform"}))
    for step, (_, labelled) in enumerate(recorded, start=1):
        uniform.add_labelled(labelled)
        uniform.update(step)
    assert not same_weights(weights_of(uniform.latest()), weights_of(recording.latest()))  # the weights matter


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("interval", -1, ">= 0"),
        ("steps_per_update", 1.5, ">= 1"),
        ("batch_size", True, ">= 1"),
        ("lr", 0.0, "> 0"),
        ("weighting", "rank", "('reward', 'advantage', 'uniform')"),
        ("w_min", 1.5, "[0, 1]"),
        ("aggregation", "mean", "('token_mean', 'seq_sum')"),
        ("temperature", -1.0, ">= 0"),
        ("top_k", -1, ">= 0"),
        ("async_update", "yes", "True or False"),
        ("max_loss", math.inf, "finite"),
        ("max_grad_norm", math.nan, "finite"),
        ("record_dir", "", "a folder path"),
        ("compute_dtype", "float16", "('auto', 'bfloat16', 'float32')"),
        ("overlap", "next_step", "('auto', 'actor_update', 'rollout', 'none')"),
    ],
)
def test_config_errors_name_the_full_key_value_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        LearnerConfig(**{field: value})
    message = str(error.value)
    assert f"actor_rollout_ref.respec.evolution.{field} " in message
    assert repr(value) in message and allowed in message


def test_frozen_names_are_what_no_update_changes():
    target = tiny_llama(seed=49)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target)
    assert learner.frozen_names == {"model.embed_tokens.weight"}
    before = weights_of(learner.latest())
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    after = weights_of(learner.latest())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and not changed & learner.frozen_names  # the trainer may leave these out of later pushes
    tied = tiny_llama(seed=49)
    tied.config.tie_word_embeddings = True
    tied.tie_weights()
    learner = DrafterLearner(self_draft(tied, 1), LearnerConfig(async_update=False), target=tied)
    assert learner.frozen_names == {"model.embed_tokens.weight", "lm_head.weight"}  # a tied head is frozen too


def test_published_versions_share_only_the_frozen_tensors():
    target = tiny_llama(seed=50)
    prompts, responses, rewards = rollouts(target, 8)
    learner = small_learner(target)
    first = learner.latest()
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    second = learner.latest()
    assert second.version == first.version + 1

    def storage(drafter) -> dict[str, int]:
        return {name: t.data_ptr() for name, t in drafter.model.state_dict().items()}

    one, two, train = storage(first), storage(second), storage(learner._train)
    shared = {name for name in one if one[name] == two[name] == train[name]}
    assert shared == learner.frozen_names  # one copy of the embedding, however many versions
    assert not any(p.requires_grad for p in second.model.parameters())
    assert any(p.requires_grad for p in learner._train.model.parameters())  # freezing a copy left the learner's


def test_a_published_drafter_in_another_dtype_has_its_own_tensors():
    target = tiny_llama(seed=51)
    drafter = self_draft(target, 1)
    drafter.model.to(torch.bfloat16)
    learner = DrafterLearner(drafter, LearnerConfig(async_update=False), target=target)
    published = learner.latest()
    assert next(published.model.parameters()).dtype == torch.bfloat16
    train = {t.data_ptr() for t in learner._train.model.state_dict().values()}
    assert not train & {t.data_ptr() for t in published.model.state_dict().values()}
    assert all(p.dtype == torch.float32 for p in learner._train.model.parameters())  # publishing left it fp32


class DtypeRecordingLearner(GatedLearner):
    """Notes the dtype of the drafter's logits and whether autocast is on, in the thread of its loss."""

    def _loss(self, draft_logits, batch):
        self.seen = (draft_logits.dtype, torch.is_autocast_enabled("cpu"))
        loss = super()._loss(draft_logits, batch)
        self.loss_dtype = loss.dtype
        return loss


@pytest.mark.parametrize("dtype,logits_dtype", [("bfloat16", torch.bfloat16), ("float32", torch.float32)])
def test_compute_dtype_sets_the_forward_only_and_only_in_the_update_thread(dtype, logits_dtype):
    target = tiny_llama(seed=50)
    prompts, responses, rewards = rollouts(target, 4)
    config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=0, compute_dtype=dtype)
    learner = DtypeRecordingLearner(self_draft(target, 1), config, target=target)
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    assert learner.started.wait(10)
    assert not torch.is_autocast_enabled("cpu")  # autocast is per thread: the caller's ops stay float32
    learner.release.set()
    assert learner.wait()["respec/drafter/update_ok"] == 1.0
    assert learner.seen == (logits_dtype, dtype == "bfloat16") and learner.loss_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in learner._train.model.parameters())  # float32 master weights
    assert all(t.dtype == torch.float32 for state in learner._optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)
    assert next(learner.latest().model.parameters()).dtype == next(target.parameters()).dtype


def test_a_bfloat16_update_trains_like_a_float32_one():
    target = tiny_llama(seed=51, layers=4, init_std=0.1)
    prompts, responses, rewards = rollouts(target, 8)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        learner = small_learner(target, compute_dtype=dtype, steps_per_update=6)
        learner.add_rollouts(prompts, responses, rewards)
        metrics = learner.update(1)
        losses[dtype] = (metrics["respec/drafter/loss"], metrics["respec/drafter/loss_last"])
    assert losses["bfloat16"] != losses["float32"]  # the bfloat16 forward really ran
    for first, last in losses.values():
        assert last < first  # both learn
    assert losses["bfloat16"][1] == pytest.approx(losses["float32"][1], rel=0.05)


@pytest.mark.parametrize("flags,logits_dtype", [({"avx2"}, torch.float32), ({"avx2", "avx512_bf16"}, torch.bfloat16)])
def test_auto_compute_dtype_takes_bfloat16_only_where_the_cpu_runs_it_natively(flags, logits_dtype, monkeypatch):
    from respec_verl import cpu_features

    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    target = tiny_llama(seed=52)
    prompts, responses, rewards = rollouts(target, 4)
    config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=0, async_update=False)
    assert config.compute_dtype == "auto"  # the default
    learner = DtypeRecordingLearner(self_draft(target, 1), config, target=target)
    learner.release.set()
    learner.add_rollouts(prompts, responses, rewards)
    learner.update(1)
    assert learner.seen[0] == logits_dtype


class ThreadCounting(DrafterLearner):
    """Notes torch's CPU thread count inside the update's loss."""

    def _loss(self, draft_logits, batch):
        self.threads_seen = torch.get_num_threads()
        return super()._loss(draft_logits, batch)


@pytest.fixture
def torch_threads_settable(monkeypatch):
    """torch's own `set_num_threads`: vLLM's CPU worker, run in this test process by other tests,
    replaces it with a no-op for its whole process after binding its threads."""
    monkeypatch.setattr(torch, "set_num_threads", torch._C.set_num_threads)


@pytest.mark.parametrize("async_update", [True, False])
def test_an_update_runs_on_the_cpu_threads_asked_for_and_leaves_the_callers(async_update, torch_threads_settable):
    target = tiny_llama(seed=81)
    prompts, responses, rewards = rollouts(target, 4)
    caller = torch.get_num_threads()
    asked = 1 if caller > 1 else 2  # differs from the caller's, so the check can fail
    for step, (threads, expected) in enumerate(((asked, asked), (None, caller)), start=1):
        learner = ThreadCounting(self_draft(target, 1), LearnerConfig(steps_per_update=1, batch_size=4, top_k=0,
                                                                      async_update=async_update), target=target)
        learner.add_rollouts(prompts, responses, rewards)
        learner.update(step, cpu_threads=threads)
        learner.wait()
        assert learner.threads_seen == expected and learner.metrics["respec/drafter/update_ok"] == 1.0
        assert torch.get_num_threads() == caller


class BigramHead(torch.nn.Module):
    """Not a Hugging Face model: no `.logits`, no input-embedding accessor."""

    def __init__(self, vocab_size: int, dim: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, dim)
        self.out = torch.nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids))


@dataclass
class BigramDrafter:
    """A second `TrainableDrafter`: the learner must train it without knowing it is not a causal LM."""

    model: BigramHead
    draft_to_target: torch.Tensor | None = None
    version: int = 0

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.out.parameters())

    def draft_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def replica(self, model: torch.nn.Module, version: int) -> BigramDrafter:
        return BigramDrafter(model, self.draft_to_target, version)

    def serving_tensors(self):
        yield from self.model.state_dict().items()

    def describe(self) -> str:
        return "bigram"

    def check_compatible(self, target_vocab_size: int) -> None:
        pass

    def new_proposer(self, target_vocab_size: int):
        raise NotImplementedError


def test_the_learner_trains_any_drafter_of_the_interface():
    target = tiny_llama(seed=43)
    prompts, responses, rewards = rollouts(target, 32)
    drafter = BigramDrafter(BigramHead(97))
    assert isinstance(drafter, TrainableDrafter)
    config = LearnerConfig(steps_per_update=30, batch_size=16, lr=1e-2, top_k=0, async_update=False)
    learner = DrafterLearner(drafter, config, target=target)
    batch = make_kd_batch(prompts, responses)
    attach_teacher(batch, target, drafter, 1.0, 0)

    def kd_loss(d: BigramDrafter) -> float:
        with torch.no_grad():
            logits = d.draft_logits(batch.input_ids, batch.attention_mask)
        return float(reward_weighted_kd_loss(logits, batch.teacher, batch.response_mask))

    learner.add_rollouts(prompts, responses, rewards)
    metrics = learner.update(step=1)
    published = learner.latest()
    assert metrics["respec/drafter/update_ok"] == 1.0
    assert type(published) is BigramDrafter and published.version == 1
    assert kd_loss(published) < 0.9 * kd_loss(drafter)
    assert torch.equal(published.model.embed.weight, drafter.model.embed.weight)  # not a trainable parameter
    assert learner.frozen_names == {"embed.weight"}
    assert set(dict(published.serving_tensors())) == {"embed.weight", "out.weight", "out.bias"}
