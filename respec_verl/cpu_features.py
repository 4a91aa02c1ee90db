"""What this CPU can do fast, read from its feature flags (no torch: the launcher's process asks)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 matmuls


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux `/proc/cpuinfo`); empty where that file is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX-512 bf16 or AMX); elsewhere bf16 is emulated."""
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
