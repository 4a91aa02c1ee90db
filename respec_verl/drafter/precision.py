"""The dtype of the drafter update's forward pass: bfloat16 where the hardware runs it fast.

A bfloat16 forward makes the update cheaper where the hardware has bf16 matmul instructions
(`bench/overlap_cost.py` measures it); a CPU without them (AVX2 only) or a GPU before Ampere
emulates bf16 matmuls, so there float32 stays. `compute_dtype: auto` picks between the two.
"""

from __future__ import annotations

import torch

from respec_verl.cpu_features import cpu_has_fast_bf16


def fast_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 matmuls natively."""
    kind = torch.device(device).type
    if kind == "cuda":  # Ampere (8.x) and later; `is_bf16_supported()` also counts emulation
        return torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    if kind == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_compute_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`compute_dtype` as a torch dtype: "auto" is bfloat16 where `fast_bf16`, else float32."""
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return getattr(torch, name)
