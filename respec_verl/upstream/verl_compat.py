"""Every private verl name respec_verl uses, and every verl object it patches: written against verl 0.9.1.

The glue reaches verl's internals only through this module: the underscore methods our subclasses
override (declared, since an override cannot move), the private members we call or replace
(through the accessors below), the module global the CPU support swaps, and the texts of verl's
log lines and folder names we match. `tests/test_upstream_contracts.py` checks each entry against
the installed verl, so an upgrade fails there, naming the entry. Nothing here imports verl at
import time: the CPU support loads this module while `import verl` is still running.

What verl could expose instead is proposed in docs/upstream/ (verl-worker-class-hook.md,
verl-collective-rpc-results.md, verl-private-names.md, ...).
"""

from __future__ import annotations

from typing import Any

from respec_verl.upstream.names import UpstreamName, UpstreamText

WRITTEN_AGAINST = "verl==0.9.1"

# --- classes and modules we subclass, wrap or register into ---------------------------------------
SYNC_TRAINER = UpstreamName("verl.trainer.ppo.v1.trainer_sync", "PPOTrainerSync")
TRAINER_REGISTRY = UpstreamName("verl.trainer.ppo.v1.trainer_base", "TRAINER_REGISTRY")
HTTP_SERVER = UpstreamName("verl.workers.rollout.vllm_rollout.vllm_async_server", "vLLMHttpServer")
SERVER_ADAPTER = UpstreamName("verl.workers.rollout.vllm_rollout.vllm_rollout", "ServerAdapter")
COLOCATE_EXTENSION = UpstreamName("verl.workers.rollout.vllm_rollout.utils", "vLLMColocateWorkerExtension")
IS_QUANTIZED_MODEL = UpstreamName("verl.workers.rollout.vllm_rollout.utils", "is_quantized_model")
WEIGHT_RECEIVER = UpstreamName("verl.workers.rollout.vllm_rollout.bucketed_weight_transfer", "BucketedWeightReceiver")
ENGINE_REGISTRY = UpstreamName("verl.workers.engine.base", "EngineRegistry")
FSDP_ENGINES = UpstreamName("verl.workers.engine.fsdp.transformer_impl")
PLATFORM_MANAGER = UpstreamName("verl.plugin.platform", "platform_manager")

# --- private methods our subclasses override: upstream class -> {method: parameters verl passes} ----
OVERRIDDEN_PRIVATE_METHODS: dict[UpstreamName, dict[str, tuple[str, ...]]] = {
    SYNC_TRAINER: {  # respec_verl.verl_glue.trainer.RespecPPOTrainerSync
        "_init_resource_pool_mgr": ("self",),  # swap the actor worker class (verl-worker-class-hook.md)
        "_build_replay_buffer": ("self",),  # poll interval (verl-replay-buffer-poll-interval.md)
        "_update_actor": ("self", "batch", "metrics"),
        "_compute_metrics": ("self", "batch", "metrics", "timing_raw", "global_steps", "epoch"),
        "_save_checkpoint": ("self",),
    },
    HTTP_SERVER: {  # respec_verl.vllm_glue.server.RespecvLLMHttpServer
        "_preprocess_engine_kwargs": ("self", "engine_kwargs"),
        "_get_worker_extension_cls": ("self",),
        "_resolve_sleep_level": ("self",),
    },
}

# --- methods the CPU support replaces on verl's classes (wrapping verl's own): {method: parameters} --
PATCHED_METHODS: dict[UpstreamName, dict[str, tuple[str, ...]]] = {
    SERVER_ADAPTER: {"__init__": ("self",)},  # cpu/socket_paths
    COLOCATE_EXTENSION: {
        "_get_zmq_handle": ("self",),  # cpu/socket_paths
        "update_weights_from_ipc": ("self", "peft_config", "base_sync_done", "use_shm"),  # cpu/layerwise_reload
    },
    WEIGHT_RECEIVER: {"receive_weights": ("self", "on_bucket_received")},  # cpu/shm_receive
}

# --- private members we call or read on verl objects (through the accessors below) -----------------
PRIVATE_MEMBERS: dict[UpstreamName, tuple[str, ...]] = {
    SERVER_ADAPTER: ("_execute_method",),
    COLOCATE_EXTENSION: ("_get_zmq_handle", "_iter_all_models_with_config"),
    ENGINE_REGISTRY: ("_engines",),
    PLATFORM_MANAGER: ("_current_platform",),
}
# set per instance in `vLLMColocateWorkerExtension.__new__`, so pinned by verl's source text
QAT_FLAGS = ("_is_qat_model", "_is_modelopt_qat")

# --- module globals swapped: name -> parameters of what is replaced ---------------------------------
OFFLOAD_POLICY = UpstreamName(FSDP_ENGINES.module, "CPUOffloadPolicy")
MODULE_GLOBALS: dict[UpstreamName, tuple[str, ...]] = {
    OFFLOAD_POLICY: ("pin_memory",),  # cpu/engine subclasses it with pin_memory=False (B13)
}

# --- texts verl writes that we match --------------------------------------------------------------
TEXTS: dict[str, UpstreamText] = {
    # the flag verl sets for the reference pass (popped in `TrainingWorker.infer_batch`)
    "ref_pass_flag": UpstreamText("verl.workers.engine_workers", '"no_lora_adapter"'),
    "checkpoint_folder": UpstreamText("verl.trainer.ppo.v1.trainer_base", 'f"global_step_{self.global_steps}"'),
    "qat_flag": UpstreamText(COLOCATE_EXTENSION.module, "instance._is_qat_model ="),
    "modelopt_qat_flag": UpstreamText(COLOCATE_EXTENSION.module, "instance._is_modelopt_qat ="),
    # console logger line "step:N - key:value - ..." (`concat_dict_to_str`)
    "step_line": UpstreamText("verl.utils.logger.aggregate_logger", 'output = [f"step:{step}"]'),
    # progress phases of the V1 trainer's start-up
    "worker_groups": UpstreamText("verl.trainer.ppo.v1.trainer_base", "create worker group"),
    "engines_ready": UpstreamText("verl.trainer.ppo.v1.trainer_base", "actor and ref model engine initialized"),
    "ready_to_fit": UpstreamText("verl.trainer.ppo.v1.trainer_base", "all initialize finished, ready to fit"),
}
REF_PASS_FLAG = "no_lora_adapter"
STEP_LINE_PATTERN = r"step:(\d+) - (.*)$"


def checkpoint_folder(default_local_dir: str, global_steps: int) -> str:
    """The folder verl's `_save_checkpoint` writes step `global_steps` to (its layout, mirrored)."""
    import os

    return os.path.join(str(default_local_dir), f"global_step_{global_steps}")


# --- accessors --------------------------------------------------------------------------------------
def install_trainer(name: str, trainer_cls: type) -> None:
    """`TRAINER_REGISTRY[name] = trainer_cls`, replacing verl's entry (`register_trainer` refuses duplicates)."""
    TRAINER_REGISTRY.resolve()[name] = trainer_cls


async def execute_on_rollout_workers(rollout: Any, method: str, **kwargs: Any) -> Any:
    """`ServerAdapter._execute_method`: verl's RPC into the vLLM workers behind a rollout."""
    return await rollout._execute_method(method, **kwargs)


def colocate_zmq_handle(extension: Any) -> str:
    """The weight-sync socket a `vLLMColocateWorkerExtension` receives on (`_get_zmq_handle`)."""
    return extension._get_zmq_handle()


def zmq_handle_method(extension_cls: type):
    """`extension_cls._get_zmq_handle` as now installed (verl's, or a wrapper of it)."""
    return extension_cls._get_zmq_handle


def set_zmq_handle_method(extension_cls: type, method) -> None:
    """Replace `extension_cls._get_zmq_handle` (cpu/socket_paths wraps verl's)."""
    extension_cls._get_zmq_handle = method


def models_with_config(extension: Any) -> list:
    """The (model, model_config) pairs verl's weight sync updates (`_iter_all_models_with_config`)."""
    return list(extension._iter_all_models_with_config())


def is_qat_extension(extension: Any) -> bool:
    """Whether verl syncs this worker's weights on its QAT or ModelOpt path (`_is_qat_model`, `_is_modelopt_qat`)."""
    return any(getattr(extension, flag, False) for flag in QAT_FLAGS)


def engines_registered(model_type: str) -> dict:
    """`EngineRegistry._engines[model_type]` ({backend: {device: class}}); verl has no public "is registered"."""
    return ENGINE_REGISTRY.resolve()._engines.get(model_type, {})


def chosen_platform():
    """The platform verl chose in this process, None before it chose (`platform_manager._current_platform`;
    its public getter would choose one)."""
    return PLATFORM_MANAGER.resolve()._current_platform
