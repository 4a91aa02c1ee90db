"""Whether this process has an accelerator: what decides `RESPEC_VERL_CPU=auto` and the CPU platform's auto-detection."""

from __future__ import annotations


def accelerator_present() -> bool:
    """Whether torch sees a CUDA (or ROCm) GPU or an Ascend NPU in this process."""
    import torch

    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())
