"""`actor_rollout_ref.respec.evolution`: the drafter learner's settings, validated."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from respec_verl.drafter.kd_loss import AGGREGATIONS, WEIGHTINGS

CONFIG_KEY = "actor_rollout_ref.respec.evolution"
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
OVERLAPS = ("auto", "actor_update", "rollout", "none")


@dataclass
class LearnerConfig:
    """`actor_rollout_ref.respec.evolution`: how and when the drafter follows the actor.

    `interval`: update every this many RL steps (ReSpec's Async-1 is best; 0 never updates: the
    drafter stays frozen and no labels are computed, the baseline of `bench/evolution.py`); `steps_per_update`
    optimizer steps of `batch_size` rollouts each; `weighting` of each rollout in {reward,
    advantage, uniform}, min-max normalised into [`w_min`, 1] per update; `temperature` of the
    rollouts (the actor's soft labels are taken at it; 0 means greedy rollouts, labels at 1);
    `top_k` > 0 keeps sparse top-k labels (memory: dense labels are [tokens, vocab] floats).
    Guards: a loss above `max_loss` (nats per token) or a pre-clip gradient norm above
    `max_grad_norm` rejects the whole update; gradients are clipped to `grad_clip`.
    `record_dir`: a folder where every finished update writes the rollouts it trained on, with
    their scores and the actor's labels (`recording.py`), so that other drafter policies can be
    replayed on the same actor trajectory offline (`bench/evolution.py`); None records nothing.
    `compute_dtype`: the dtype of the update's forward pass (autocast; the weights, gradients and
    optimizer state stay float32): "bfloat16" makes the update cheaper where the device has bf16
    matmul instructions (`bench/overlap_cost.py` measures it); "auto" takes it where the device
    runs bf16 natively (`drafter/precision.py`), else float32.
    `overlap`: what an async update runs beside, in verl's step (the caller decides where it
    waits; the learner only runs in the background): "actor_update" (ReSpec's overlap; the next
    rollout gets this step's drafter), "rollout" (it may run on through the weight sync and the
    next rollout, which then gets the drafter one version older; the next update waits for it),
    or "none" (right after the actor update, in the foreground: the async labels at a serial
    update's cost, for hosts where overlapping costs more than it hides); "auto" is "none" where
    the drafter trains on a CPU, whose cores the actor update already uses: overlapped, the two
    OpenMP programs contend for them and cost more than the update run after the actor's
    (`bench/update_overhead.py --modes alternate` measures both within one run), and "actor_update" on an
    accelerator (`resolve_overlap`).
    """

    interval: int = 1
    steps_per_update: int = 4
    lr: float = 3e-4
    batch_size: int = 8
    weighting: str = "reward"
    w_min: float = 0.1
    aggregation: str = "token_mean"
    temperature: float = 1.0
    top_k: int = 64
    async_update: bool = True
    buffer_size: int = 1024
    grad_clip: float = 1.0
    max_loss: float = 100.0
    max_grad_norm: float = 1e3
    seed: int = 0
    record_dir: str | None = None
    compute_dtype: str = "auto"
    overlap: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps_per_update", "batch_size", "buffer_size"):
            value = getattr(self, name)
            _require(name, value, _is_int(value) and value >= 1, "an integer >= 1")
        ok = _is_int(self.interval) and self.interval >= 0
        _require("interval", self.interval, ok, "an integer >= 0 (0: never update, a frozen drafter)")
        _require("top_k", self.top_k, _is_int(self.top_k) and self.top_k >= 0, "an integer >= 0 (0: dense labels)")
        _require("seed", self.seed, _is_int(self.seed), "an integer")
        ok = self.compute_dtype in COMPUTE_DTYPES
        _require("compute_dtype", self.compute_dtype, ok, f"one of {COMPUTE_DTYPES}")
        _require("overlap", self.overlap, self.overlap in OVERLAPS, f"one of {OVERLAPS}")
        for name in ("lr", "grad_clip", "max_loss", "max_grad_norm"):
            value = getattr(self, name)
            _require(name, value, _is_real(value) and 0 < value < math.inf, "a finite number > 0")
        _require("weighting", self.weighting, self.weighting in WEIGHTINGS, f"one of {WEIGHTINGS}")
        _require("aggregation", self.aggregation, self.aggregation in AGGREGATIONS, f"one of {AGGREGATIONS}")
        _require("w_min", self.w_min, _is_real(self.w_min) and 0.0 <= self.w_min <= 1.0, "a number in [0, 1]")
        ok = _is_real(self.temperature) and 0.0 <= self.temperature < math.inf
        _require("temperature", self.temperature, ok, "a finite number >= 0 (0: greedy rollouts)")
        _require("async_update", self.async_update, isinstance(self.async_update, bool), "True or False")
        ok = self.record_dir is None or (isinstance(self.record_dir, str) and bool(self.record_dir.strip()))
        _require("record_dir", self.record_dir, ok, "null (record nothing) or a folder path")


def resolve_overlap(overlap: str, device_type: str) -> str:
    """`overlap` for a drafter training on a device of `device_type` ("cpu", "cuda", ...): "auto" is
    "none" on a CPU and "actor_update" elsewhere; any other value is kept."""
    if overlap != "auto":
        return overlap
    return "none" if device_type == "cpu" else "actor_update"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _require(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{CONFIG_KEY}.{name} must be {allowed}, got {value!r}")
