"""The verl and vLLM names respec relies on, with the shape we expect: an upgrade fails here first.

Each entry is one thing our glue calls, subclasses or configures. The behaviour behind them is
tested elsewhere (tests/test_vllm_engine.py, tests/test_verl_e2e.py); these tests only say which
upstream name moved.
"""

from __future__ import annotations

import dataclasses
import inspect
from importlib.metadata import entry_points

import pytest


def test_respec_entry_points_are_installed():
    # `pip install -e .` registers both; without them verl and vLLM never load respec
    assert "respec" in {e.name for e in entry_points(group="verl.plugins")}
    assert "respec" in {e.name for e in entry_points(group="vllm.general_plugins")}


def test_vllm_draft_model_names():
    pytest.importorskip("vllm")
    from vllm import ModelRegistry
    from vllm.config import SpeculativeConfig
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
    from vllm.model_executor.models.llama import LlamaForCausalLM

    assert callable(ModelRegistry.register_model) and callable(ModelRegistry.get_supported_archs)
    # RespecDraftLlamaForCausalLM builds what LlamaForCausalLM.__init__ builds, with its own head
    assert callable(LlamaForCausalLM._init_model) and callable(LlamaForCausalLM.compute_logits)
    assert {"num_embeddings", "embedding_dim"} <= set(inspect.signature(ParallelLMHead).parameters)
    assert "scale" in inspect.signature(LogitsProcessor).parameters
    fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
    assert {"method", "model", "num_speculative_tokens", "num_speculative_tokens_per_batch_size",
            "draft_sample_method"} <= fields


def test_vllm_reduced_vocab_drafter_is_registered():
    pytest.importorskip("vllm")
    from vllm import ModelRegistry

    from respec_verl.vllm_glue.models import MODEL_CLASSES, register

    register()
    register()  # vLLM may call a general plugin more than once per process
    assert set(MODEL_CLASSES) <= set(ModelRegistry.get_supported_archs())


def test_vllm_scheduler_and_reload_names():
    pytest.importorskip("vllm")
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload
    from vllm.v1.core.sched.scheduler import Scheduler

    assert callable(initialize_layerwise_reload) and callable(finalize_layerwise_reload)
    assert callable(Scheduler.schedule) and callable(Scheduler.update_from_output)


def test_verl_extension_names():
    pytest.importorskip("vllm")
    from verl.trainer.ppo.v1 import trainer_base
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver, BucketedWeightSender
    from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer

    assert "sync" in trainer_base.TRAINER_REGISTRY
    # every PPOTrainerSync method RespecPPOTrainerSync overrides (docs/upstream/touch-points.md)
    for hook in ("_init_resource_pool_mgr", "_build_replay_buffer", "_update_actor", "_compute_metrics", "_save_checkpoint"):
        assert callable(getattr(PPOTrainerSync, hook)), hook
    for hook in ("_preprocess_engine_kwargs", "_get_worker_extension_cls", "_resolve_sleep_level", "generate"):
        assert callable(getattr(vLLMHttpServer, hook)), hook
    assert callable(BucketedWeightReceiver.receive_weights) and callable(BucketedWeightSender.async_send_weights)


def test_verl_log_prob_pass_names():
    # the worker hooks verl's old-log-prob pass for the drafter's labels (drafter/label_capture.py);
    # tests/test_demo.py checks through a real run that every rollout's labels came from it
    pytest.importorskip("vllm")
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker

    assert callable(ActorRolloutRefWorker.compute_log_prob) and callable(ActorRolloutRefWorker.update_actor)
    assert {"tensordict", "key", "default"} <= set(inspect.signature(tu.get).parameters)
