"""P2, P5, P8 (blockers B2, B7, B12): a verl platform for hosts without an accelerator.

verl 0.9.1 asks `verl.plugin.platform.get_platform()` for every device decision and knows only
nvidia, huawei (NPU) and amd. With none present it falls back to nvidia (B2): device "cuda",
process-group backend "nccl", CUDA IPC for the weight sync. `PlatformCPU` answers instead:

- device "cpu", backend "gloo", vendor "cpu";
- no IPC (`is_ipc_supported() -> False`), which makes verl's vLLM rollout sync weights through
  shared memory (`ServerAdapter.use_shm`);
- Ray resource "GPU": verl's resource pools ask Ray for GPUs (`RayResourcePool(use_gpu=True)`), so
  a CPU run declares fake Ray GPUs (`+ray_kwargs.ray_init.num_gpus=1`) and the platform matches;
  for the same reason the visible-devices variable is CUDA's, which Ray sets and CPU torch ignores;
- `current_device()` returns the string "cpu" (P5, B7): verl passes `get_device_id()` straight to
  `.to()`, `to_empty()` and `torch.device()`, where torch reads an int as "accelerator N" and fails
  with "Cannot access accelerator device when none is available". Callers that do arithmetic on
  the id would break; none is on the CPU paths (the one f-string use is on the CUDA-IPC path);
- `device_module` is `CPUDeviceModule`, a small `torch.cuda`-like facade: memory counters read 0,
  `mem_get_info` reads host memory, RNG state is torch's, and `get_device_name()` returns "cpu"
  (P8, B12: `flops_counter.get_device_flops` calls it on anything that is not `torch.cpu` itself).

The plugin registers the platform and sets `VERL_PLATFORM=cpu` with `os.environ.setdefault`;
`get_platform()` is lazy (first called after `import verl` has loaded the plugins), so that works.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from respec_verl.upstream.ray_compat import NOSET_CUDA_VISIBLE_DEVICES_ENV

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"


class CPUDeviceModule:
    """The subset of the `torch.cuda` namespace that verl calls through `get_torch_device()`.

    Streams, events and device selection come from `torch.cpu`; memory statistics are 0 (torch
    keeps none for host memory) and cache management is a no-op. An attribute verl asks for that
    is not here resolves to a no-op that logs once, so a statistics call never stops a run.
    """

    def __init__(self):
        self._warned: set[str] = set()

    # device
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> str:
        return "cpu"

    def set_device(self, device: Any) -> None:
        return None

    def get_device_name(self, device: Any = None) -> str:
        return "cpu"

    def get_device_properties(self, device: Any = None) -> SimpleNamespace:
        return SimpleNamespace(name="cpu", total_memory=_host_memory()[1])

    def get_device_capability(self, device: Any = None) -> tuple[None, None]:
        return None, None

    def synchronize(self, device: Any = None) -> None:
        return None

    # random number generator: the host generator
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    # memory: host memory is not tracked per tensor
    def memory_allocated(self, device: Any = None) -> int:
        return 0

    def memory_reserved(self, device: Any = None) -> int:
        return 0

    def max_memory_allocated(self, device: Any = None) -> int:
        return 0

    def max_memory_reserved(self, device: Any = None) -> int:
        return 0

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return _host_memory()

    def empty_cache(self) -> None:
        return None

    def ipc_collect(self) -> None:
        return None

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        return None

    def reset_accumulated_memory_stats(self, device: Any = None) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        return None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if hasattr(torch.cpu, name):  # Stream, Event, current_stream, stream, ...
            return getattr(torch.cpu, name)
        if name not in self._warned:
            self._warned.add(name)
            logger.warning("respec_verl CPU platform: get_torch_device().%s is not supported; ignored", name)
        return lambda *args, **kwargs: None

    def __repr__(self) -> str:
        return "<respec_verl CPUDeviceModule>"


def _host_memory() -> tuple[int, int]:
    """(free, total) bytes of host memory, like `torch.cuda.mem_get_info`."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.available, memory.total


class PlatformCPU(PlatformBase):
    """verl's platform interface answered for the host CPU (see the module docstring)."""

    _device_module = CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> CPUDeviceModule:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        """Auto-detection picks the CPU only where no accelerator is (the built-ins are probed first)."""
        from respec_verl.verl_glue.cpu.accelerator import accelerator_present

        return not accelerator_present()

    def current_device(self) -> str:  # a str on purpose (P5): torch reads an int as an accelerator index
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: Any) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for the fake GPUs; ignored by CPU torch and vLLM

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # matches the fake Ray GPUs that verl's GPU-shaped resource pools ask for

    def ray_noset_envvars(self) -> list[str]:
        return [NOSET_CUDA_VISIBLE_DEVICES_ENV]

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        return {"VLLM_TARGET_DEVICE": os.environ.get("VLLM_TARGET_DEVICE", "cpu")}

    def cudart(self) -> None:
        return None


def register() -> type:
    """Register `PlatformCPU` with verl's `PlatformRegistry` under "cpu" (idempotent); returns it."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(PLATFORM_NAME)(PlatformCPU)
    return PlatformCPU
