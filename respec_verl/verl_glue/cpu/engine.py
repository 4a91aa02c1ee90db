"""P4 (blocker B6): register verl's FSDP training engines for the device "cpu".

`verl/workers/engine/fsdp/transformer_impl.py` registers `FSDPEngineWithLMHead` (actor, reference)
and `FSDPEngineWithValueHead` (critic) with `EngineRegistry` for `device=["cuda", "npu"]` only, so
on the CPU platform `EngineRegistry.get_engine_cls` fails: "No engine registered for device='cpu',
vendor='cpu', model_type='language_model', backend='fsdp2'". The engines themselves are device
neutral (they ask `get_device_name()`), so this registers the same classes for "cpu" through
verl's own registry, once the module that defines them is imported (a post-import hook). It is
the registry route instead of `VERL_ENGINE_DEVICE=cuda`, which would also redirect every other
engine lookup in the process.

B13, found in this project's end-to-end run: the FSDP2 engine always builds the reference policy
(`forward_only`) with `CPUOffloadPolicy(pin_memory=True)`, and torch's `pin_memory()` fails on a
host without an accelerator: "RuntimeError: Cannot access accelerator device when none is
available" (`torch/distributed/fsdp/_fully_shard/_fsdp_param.py::_init_sharded_param`, reached
from `transformer_impl.py::_build_fsdp_module`). Pinned host memory only speeds up host-to-device
copies, of which a CPU run has none, so the same hook makes the engine module's `CPUOffloadPolicy`
a subclass that never pins (a subclass, so `isinstance` checks still hold).
"""

from __future__ import annotations

from types import ModuleType

from respec_verl.upstream.verl_compat import FSDP_ENGINES, OFFLOAD_POLICY, engines_registered

ENGINE_MODULE = FSDP_ENGINES.module
DEVICE = "cpu"
BACKENDS = ["fsdp", "fsdp2"]
# model_type in EngineRegistry -> class name in ENGINE_MODULE
ENGINES = {"language_model": "FSDPEngineWithLMHead", "value_model": "FSDPEngineWithValueHead"}


def register_cpu_engines(module: ModuleType) -> None:
    """Register each engine of `ENGINES` for device "cpu" unless that key is taken (idempotent)."""
    from verl.workers.engine.base import EngineRegistry

    for model_type, class_name in ENGINES.items():
        engine_cls = getattr(module, class_name)
        by_backend = engines_registered(model_type)
        missing = [backend for backend in BACKENDS if DEVICE not in by_backend.get(backend, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device=DEVICE)(engine_cls)


def unpinned_offload_policy(policy_cls: type) -> type:
    """A subclass of FSDP2's `CPUOffloadPolicy` whose `pin_memory` is always False."""

    class UnpinnedCPUOffloadPolicy(policy_cls):
        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)  # pinning needs an accelerator (B13)

    UnpinnedCPUOffloadPolicy._respec_cpu_unpinned = True
    return UnpinnedCPUOffloadPolicy


def unpin_offload_policy(module: ModuleType) -> None:
    """Replace the engine module's `CPUOffloadPolicy` by `unpinned_offload_policy` of it (idempotent)."""
    policy_cls = getattr(module, OFFLOAD_POLICY.attr, None)
    if policy_cls is not None and not getattr(policy_cls, "_respec_cpu_unpinned", False):
        setattr(module, OFFLOAD_POLICY.attr, unpinned_offload_policy(policy_cls))


def patch_engine_module(module: ModuleType) -> None:
    register_cpu_engines(module)
    unpin_offload_policy(module)


def install() -> None:
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(ENGINE_MODULE, patch_engine_module)
