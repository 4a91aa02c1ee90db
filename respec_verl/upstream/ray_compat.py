"""The Ray internals respec_verl relies on: written against Ray 2.60.0.

Two environment variables (one is a Ray C++ config flag, read only by the raylet) and the texts of
Ray's log lines that the supervisor and the progress display match. `tests/test_upstream_contracts.py`
finds each in the installed Ray (the raylet binary included), so an upgrade fails there, naming the entry.
"""

from __future__ import annotations

from respec_verl.upstream.names import UpstreamName, UpstreamText

WRITTEN_AGAINST = "ray==2.60.0"

# the platform lists it so that Ray leaves CUDA_VISIBLE_DEVICES alone on a CPU host (cpu/platform)
NOSET_CUDA_VISIBLE_DEVICES_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
# RayConfig flag: no idle worker pool at driver start (launch)
PRESTART_WORKER_FIRST_DRIVER_ENV = "RAY_prestart_worker_first_driver"

MIRRORED: dict[str, tuple[UpstreamName, str]] = {
    "NOSET_CUDA_VISIBLE_DEVICES_ENV": (
        UpstreamName("ray._private.accelerators.nvidia_gpu", "NOSET_CUDA_VISIBLE_DEVICES_ENV_VAR"),
        NOSET_CUDA_VISIBLE_DEVICES_ENV,
    ),
}

RAYLET = "core/src/ray/raylet/raylet"  # relative to the ray package
TEXTS: dict[str, UpstreamText] = {
    "prestart_flag": UpstreamText("ray", PRESTART_WORKER_FIRST_DRIVER_ENV.removeprefix("RAY_"), RAYLET),
    "worker_exit_type": UpstreamText("ray", "Worker exit type", RAYLET),
    "system_error": UpstreamText("ray", "SYSTEM_ERROR", RAYLET),
    "actor_died": UpstreamText("ray.exceptions", "The actor died unexpectedly"),
    "task_error": UpstreamText("ray.exceptions", "class RayTaskError("),
    "actor_died_error": UpstreamText("ray.exceptions", "class ActorDiedError("),
    "actor_error": UpstreamText("ray.exceptions", "class RayActorError("),
    "out_of_memory": UpstreamText("ray.exceptions", "class OutOfMemoryError("),
    "started": UpstreamText("ray._private.worker", "Started a local Ray instance"),
}
FATAL_PATTERNS = (
    r"ray\.exceptions\.(RayTaskError|ActorDiedError|RayActorError|OutOfMemoryError)",
    r"The actor died unexpectedly",
    r"Worker exit type: SYSTEM_ERROR",
)
STARTED_PATTERN = r"Started a local Ray instance"
