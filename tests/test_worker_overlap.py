"""Where verl's worker runs the async drafter update (`evolution.overlap`): beside, after, or past the actor update."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from respec_verl.drafter import DrafterLearner, LearnerConfig, self_draft
from tests.conftest import tiny_llama
from tests.test_learner import GatedLearner, ThreadCounting, rollouts, torch_threads_settable  # noqa: F401 (fixture)


def worker_with(learner: DrafterLearner, seen: dict, monkeypatch):
    """A `RespecActorRolloutRefWorker` with only what `update_actor` reads, verl's own update replaced
    by one that notes whether the drafter update ran beside it."""
    from respec_verl.verl_glue import worker as glue

    def verl_update_actor(self, data):
        seen["beside"] = learner.started.wait(0.5)  # an update beside this one is running
        seen["version_during"] = learner.version
        if learner.config.overlap != "rollout":  # "rollout": the test holds the update past the return
            learner.release.set()
        return None

    monkeypatch.setattr(glue.ActorRolloutRefWorker, "update_actor", verl_update_actor)
    RespecActorRolloutRefWorker = glue.RespecActorRolloutRefWorker
    worker = object.__new__(RespecActorRolloutRefWorker)
    worker.respec = SimpleNamespace(evolution=learner.config, record=SimpleNamespace(dir=None, actor_every=0))
    worker._respec_learner, worker._respec_captured, worker._respec_step = learner, None, 0
    worker._respec_capture_s = 0.0
    prompts, responses, rewards = rollouts(learner.target, 4)
    worker._respec_add_rollouts = lambda data, captured=None: learner.add_rollouts(prompts, responses, rewards) or 1.0
    return worker


@pytest.mark.parametrize("overlap,beside", [("actor_update", True), ("none", False), ("rollout", False),
                                            ("auto", False)])  # auto: a drafter on a CPU trains after
def test_the_async_update_runs_where_overlap_says(overlap, beside, monkeypatch):
    target = tiny_llama(seed=71)
    config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=0, overlap=overlap)
    learner = GatedLearner(self_draft(target, 1), config, target=target)
    seen: dict = {}
    worker_with(learner, seen, monkeypatch).update_actor(None)
    assert seen == {"beside": beside, "version_during": 0}
    if overlap == "rollout":  # still running after verl's step moved on: the next rollout gets version 0
        assert learner.started.wait(10) and learner.pending and learner.version == 0
        learner.release.set()
        learner.wait()
    else:  # done before update_actor returned: the next rollout gets version 1
        assert not learner.pending and learner.version == 1
    assert learner.version == 1 and learner.metrics["respec/drafter/update_ok"] == 1.0


def test_auto_overlap_is_serial_on_a_cpu_and_beside_the_actor_update_on_an_accelerator():
    from respec_verl.drafter.learner_config import resolve_overlap

    assert resolve_overlap("auto", "cpu") == "none"
    assert resolve_overlap("auto", "cuda") == "actor_update"
    for given in ("actor_update", "rollout", "none"):  # a value set by hand stays, on any device
        assert resolve_overlap(given, "cpu") == given and resolve_overlap(given, "cuda") == given
    assert LearnerConfig().overlap == "auto"


def test_the_serial_update_takes_every_core_and_the_overlapped_one_the_workers(monkeypatch, torch_threads_settable):
    from respec_verl.verl_glue import worker as glue

    caller = torch.get_num_threads()
    cores = 1 if caller > 1 else 2  # differs from the caller's (vLLM in this process may cap the count at the cores)
    monkeypatch.setattr(glue, "_cpu_cores", lambda: cores)
    seen_threads = {}
    for overlap in ("none", "actor_update"):
        target = tiny_llama(seed=72)
        config = LearnerConfig(steps_per_update=1, batch_size=4, top_k=0, overlap=overlap)
        learner = ThreadCounting(self_draft(target, 1), config, target=target)
        learner.started, learner.release = threading.Event(), threading.Event()
        learner.release.set()
        learner.started.set()
        worker_with(learner, {}, monkeypatch).update_actor(None)
        seen_threads[overlap] = learner.threads_seen
    assert seen_threads == {"none": cores, "actor_update": caller}
    assert torch.get_num_threads() == caller
