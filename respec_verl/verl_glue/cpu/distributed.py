"""P3 (blocker B5): drop the duplicate "cpu:gloo" from verl's process-group backend string.

`verl/utils/distributed.py` (`initialize_global_process_group` and `..._ray`) builds the backend as
f"cpu:gloo,{device}:{backend}", which on the CPU platform is "cpu:gloo,cpu:gloo", and torch rejects
it: "Duplicate device type cpu in backend string". The patch wraps
`torch.distributed.init_process_group` so a comma-separated "device:backend" string keeps only the
first entry per device when the repeats name the same backend; anything else (including a real
conflict such as "cpu:gloo,cpu:mpi") reaches torch unchanged, so torch still reports it.
"""

from __future__ import annotations

import functools

import torch.distributed


def dedupe_backend(backend: object) -> object:
    """"cpu:gloo,cpu:gloo" -> "cpu:gloo"; other values are returned as given."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    entries = [entry.strip() for entry in backend.split(",") if entry.strip()]
    if not all(entry.count(":") == 1 for entry in entries):
        return backend
    kept: dict[str, str] = {}
    for entry in entries:
        device, name = entry.split(":")
        if device in kept and kept[device] != name:
            return backend  # a genuine conflict: let torch say so
        kept.setdefault(device, name)
    return ",".join(f"{device}:{name}" for device, name in kept.items())


def install() -> None:
    """Wrap `torch.distributed.init_process_group` (idempotent)."""
    current = torch.distributed.init_process_group
    if getattr(current, "_respec_cpu_dedupe", False):
        return

    @functools.wraps(current)
    def init_process_group(*args, **kwargs):
        if "backend" in kwargs:
            kwargs["backend"] = dedupe_backend(kwargs["backend"])
        elif args:
            args = (dedupe_backend(args[0]), *args[1:])
        return current(*args, **kwargs)

    init_process_group._respec_cpu_dedupe = True
    torch.distributed.init_process_group = init_process_group
