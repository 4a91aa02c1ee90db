"""The adaptive speculation controller: per engine step, the k with the highest predicted goodput.

Speculation pays while verification is memory-bound (small batches) and loses once it is
compute-bound (large batches); RL rollouts cross both as the batch shrinks into its long tail.
Goodput at batch size B and draft length k is B * E[tokens | k] / step_time(B, k): the step time
from a profile measured through the engine that runs the steps (`engine_profile` for the core
engine, `vllm_glue.step_profile` for vLLM), made monotone (`step_table`); E[tokens | k] from the
online acceptance estimate (`acceptance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from respec_verl.speculation.acceptance import AcceptanceEstimate
from respec_verl.speculation.policy import FixedK, KPolicy
from respec_verl.speculation.profile import StepCostProfile
from respec_verl.speculation.stats import StepRecord
from respec_verl.speculation.step_table import MonotoneStepTable

CONFIG_KEY = "actor_rollout_ref.respec.controller"
POLICIES = ("adaptive", "fixed", "off")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class ControllerConfig:
    """The `actor_rollout_ref.respec.controller` block.

    policy: "adaptive" (choose k per step), "fixed" (always `max_k`) or "off" (plain decoding).
    candidates: the k values the adaptive policy may choose (None: 0..max_k; keep 0 in it, or
    speculation can never be turned off). min_gain: the relative goodput gain over plain decoding
    that speculation must promise before the controller speculates, a margin for the errors of the
    cost and acceptance models, largest where the predicted gains are small. ema_decay,
    prior_acceptance, prior_strength: see `AcceptanceEstimate`. probe_interval: after this many
    plain steps, draft for one step at the smallest positive candidate that could beat plain
    decoding at perfect acceptance, so that a low acceptance estimate can recover (0 disables).
    """

    policy: str = "adaptive"
    max_k: int = 4
    candidates: tuple[int, ...] | None = None
    min_gain: float = 0.15
    ema_decay: float = 0.9
    prior_acceptance: float = 0.7
    prior_strength: float = 2.0
    probe_interval: int = 64

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            self._fail("policy", self.policy, "one of " + ", ".join(repr(p) for p in POLICIES))
        if not _is_int(self.max_k) or self.max_k < 0:
            self._fail("max_k", self.max_k, "an integer >= 0")
        if self.candidates is not None:
            ks = self.candidates
            if (
                not isinstance(ks, Sequence)  # a list, tuple or OmegaConf ListConfig
                or isinstance(ks, str)
                or not ks
                or len(set(ks)) != len(ks)
                or not all(_is_int(k) and 0 <= k <= self.max_k for k in ks)
            ):
                allowed = f"null (0..max_k) or a non-empty list of distinct integers in [0, max_k={self.max_k}]"
                self._fail("candidates", ks, allowed)
            self.candidates = tuple(sorted(ks))
        self._check_range("min_gain", self.min_gain, 10.0, "a number in [0, 10)", upper_open=True)
        self._check_range("ema_decay", self.ema_decay, 1.0, "a number in [0, 1)", upper_open=True)
        self._check_range("prior_acceptance", self.prior_acceptance, 1.0, "a number in [0, 1]")
        if not _is_number(self.prior_strength) or not self.prior_strength > 0:
            self._fail("prior_strength", self.prior_strength, "a number > 0")
        if not _is_int(self.probe_interval) or self.probe_interval < 0:
            self._fail("probe_interval", self.probe_interval, "an integer >= 0 (0 disables probing)")

    @property
    def candidate_ks(self) -> tuple[int, ...]:
        return self.candidates if self.candidates is not None else tuple(range(self.max_k + 1))

    def _check_range(self, name: str, value: object, hi: float, allowed: str, upper_open: bool = False) -> None:
        if not _is_number(value) or not (0.0 <= value < hi if upper_open else 0.0 <= value <= hi):
            self._fail(name, value, allowed)

    @staticmethod
    def _fail(name: str, value: object, allowed: str) -> None:
        raise ValueError(f"{CONFIG_KEY}.{name} = {value!r} is not valid; allowed: {allowed}")


class AdaptiveController:
    """A `KPolicy` choosing, per engine step, the k of the highest predicted goodput.

    Speculation must promise `config.min_gain` over plain decoding. While the controller decodes
    plainly it learns nothing about acceptance, so after `config.probe_interval` plain steps it
    drafts for one step (`_probe_k`). `schedule()` exports the same choice as a static
    per-batch-size table.
    """

    def __init__(
        self, profile: StepCostProfile, config: ControllerConfig | None = None, context_len: int | None = None
    ):
        self.config = config or ControllerConfig()
        self.candidates = self.config.candidate_ks
        self.context_len = context_len
        self.acceptance = AcceptanceEstimate(
            self.config.max_k, self.config.ema_decay, self.config.prior_acceptance, self.config.prior_strength
        )
        self.plain_streak = 0  # consecutive plain steps, for probing
        self._set_profile(profile)

    def _set_profile(self, profile: StepCostProfile) -> None:
        if not profile.decode_s:
            raise ValueError(f"step-cost profile {profile.key} has no plain decoding times")
        if any(k > 0 for k in self.candidates) and not profile.has_spec_times:
            raise ValueError(
                f"step-cost profile {profile.key} has no speculative step times, needed for candidates {self.candidates}"
            )
        self.profile = profile
        self._table = MonotoneStepTable(profile, self.candidates, self.context_len)

    def step_time(self, batch_size: int, k: int) -> float:
        """Predicted seconds of an engine step drafting k tokens (k = 0: plain decoding)."""
        return self._table.time(batch_size, k)

    def goodput(self, batch_size: int, k: int) -> float:
        """Predicted tokens per second: B * E[tokens | k] / step_time(B, k)."""
        return batch_size * self.acceptance.expected_tokens(k) / self.step_time(batch_size, k)

    def score(self, batch_size: int, k: int) -> float:
        """What the decision compares: goodput, plain decoding's raised by `min_gain` (speculation must beat it)."""
        g = self.goodput(batch_size, k)
        return g * (1.0 + self.config.min_gain) if k == 0 else g

    def best_k(self, batch_size: int) -> int:
        """The argmax of `score` (ties go to the smaller, cheaper k)."""
        return max(self.candidates, key=lambda k: (self.score(batch_size, k), -k))

    def choose_k(self, batch_size: int) -> int:
        k = self.best_k(batch_size)
        interval = self.config.probe_interval
        if k == 0 and interval and self.plain_streak >= interval:
            return self._probe_k(batch_size)
        return k

    def _probe_k(self, batch_size: int) -> int:
        """The smallest positive candidate that would beat plain decoding at perfect acceptance, else 0."""
        plain = batch_size / self.step_time(batch_size, 0) if 0 in self.candidates else 0.0
        for k in self.candidates:
            if k > 0 and batch_size * (k + 1) / self.step_time(batch_size, k) > plain:
                return k
        return 0

    def observe(self, record: StepRecord) -> None:
        self.acceptance.observe(record)
        self.plain_streak = self.plain_streak + 1 if record.k == 0 else 0

    def schedule(self, max_batch_size: int) -> list[tuple[int, int, int]]:
        """vLLM's `num_speculative_tokens_per_batch_size`: inclusive (lo, hi, k) ranges over 1..max.

        `best_k` at the current acceptance estimate, ranges of equal k merged.
        """
        if max_batch_size < 1:
            raise ValueError(f"schedule needs max_batch_size >= 1, got {max_batch_size}")
        ranges: list[tuple[int, int, int]] = []
        for b in range(1, max_batch_size + 1):
            k = self.best_k(b)
            if ranges and ranges[-1][2] == k:
                ranges[-1] = (ranges[-1][0], b, k)
            else:
                ranges.append((b, b, k))
        return ranges

    def state_dict(self) -> dict:
        """Profile, acceptance counts and probe streak, as plain JSON-serialisable values."""
        return {
            "profile": self.profile.to_dict(),
            "acceptance": self.acceptance.state_dict(),
            "plain_streak": self.plain_streak,
            "context_len": self.context_len,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state (keys of mechanisms since removed, such as a calibration, are ignored)."""
        self.context_len = state["context_len"]
        self._set_profile(StepCostProfile.from_dict(state["profile"]))
        self.acceptance.load_state_dict(state["acceptance"])
        self.plain_streak = int(state["plain_streak"])

    @classmethod
    def from_state_dict(cls, state: dict, config: ControllerConfig | None = None) -> AdaptiveController:
        controller = cls(StepCostProfile.from_dict(state["profile"]), config)
        controller.load_state_dict(state)
        return controller


def build_k_policy(config: ControllerConfig, profile: StepCostProfile | None = None) -> KPolicy:
    """The engine's k policy for a config: FixedK for "off" and "fixed", else an AdaptiveController."""
    if config.policy == "off":
        return FixedK(0)
    if config.policy == "fixed":
        return FixedK(config.max_k)
    if profile is None:
        raise ValueError(
            f"{CONFIG_KEY}.policy = 'adaptive' needs a step-cost profile of this model and machine "
            "(run `respec-verl profile`), or set it to 'fixed' or 'off'"
        )
    return AdaptiveController(profile, config)
