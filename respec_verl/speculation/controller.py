"""The adaptive speculation controller: the k (or none) with the highest goodput for the live batch.

Speculation pays while verification is memory-bound (small batches) and loses once it is
compute-bound (large batches); RL rollouts cross both as the batch shrinks into its long tail.
The controller predicts the goodput of k at batch size B from a measured step-cost profile,
calibrated online against the engine's measured step times, and online acceptance estimates of
the batch and of its stragglers, and picks the best k every engine step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from respec_verl.speculation.acceptance import AcceptanceEstimate
from respec_verl.speculation.calibration import StepTimeCalibration
from respec_verl.speculation.policy import FixedK, KPolicy
from respec_verl.speculation.profile import StepCostProfile
from respec_verl.speculation.step_table import MonotoneStepTable
from respec_verl.speculation.stats import StepRecord
from respec_verl.speculation.straggler import StragglerAcceptance

CONFIG_KEY = "actor_rollout_ref.respec.controller"
POLICIES = ("adaptive", "fixed", "off")
MIN_PROBE_INTERVAL = 4  # plain steps before a probe, however little acceptance evidence there is


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
    that speculation must promise before the controller speculates: the cost and acceptance models'
    errors are largest where the predicted gains are small (the stragglers, which accept less than
    the batch does, are modelled: see `AdaptiveController.goodput`). hysteresis: the relative
    goodput gain a new k needs before the controller leaves the current one. ema_decay,
    prior_acceptance, prior_strength: see `AcceptanceEstimate`. probe_interval: after this many
    plain steps, draft for one step (two with calibration: the first pays the drafter's catch-up) at
    the smallest positive candidate where speculation could win on the profile's costs, so a low
    acceptance estimate or a stale calibration can recover (0 disables). calibration_decay: per
    engine step, the weight on the past of the running measured/predicted step-time ratio per k that
    scales the profile's costs (see `StepTimeCalibration`; 0 disables calibration and trusts the
    profile as measured).
    """

    policy: str = "adaptive"
    max_k: int = 4
    candidates: tuple[int, ...] | None = None
    min_gain: float = 0.15
    hysteresis: float = 0.02
    ema_decay: float = 0.9
    prior_acceptance: float = 0.7
    prior_strength: float = 2.0
    probe_interval: int = 64
    probe_evidence: float = 16.0
    calibration_decay: float = 0.8

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
        self._check_range("min_gain", self.min_gain, 0.0, 10.0, "a number in [0, 10)", upper_open=True)
        self._check_range("hysteresis", self.hysteresis, 0.0, 1.0, "a number in [0, 1)", upper_open=True)
        self._check_range("ema_decay", self.ema_decay, 0.0, 1.0, "a number in [0, 1)", upper_open=True)
        self._check_range("prior_acceptance", self.prior_acceptance, 0.0, 1.0, "a number in [0, 1]")
        if not _is_number(self.prior_strength) or not self.prior_strength > 0:
            self._fail("prior_strength", self.prior_strength, "a number > 0")
        if not _is_int(self.probe_interval) or self.probe_interval < 0:
            self._fail("probe_interval", self.probe_interval, "an integer >= 0 (0 disables probing)")
        if not _is_number(self.probe_evidence) or not 0 <= self.probe_evidence < math.inf:
            self._fail("probe_evidence", self.probe_evidence, "a finite number >= 0 (0: a fixed probe interval)")
        allowed = "a number in [0, 1) (0 disables calibration)"
        self._check_range("calibration_decay", self.calibration_decay, 0.0, 1.0, allowed, upper_open=True)

    @property
    def candidate_ks(self) -> tuple[int, ...]:
        return self.candidates if self.candidates is not None else tuple(range(self.max_k + 1))

    def _check_range(self, name: str, value: object, lo: float, hi: float, allowed: str, upper_open=False) -> None:
        if not _is_number(value) or not (lo <= value < hi if upper_open else lo <= value <= hi):
            self._fail(name, value, allowed)

    @staticmethod
    def _fail(name: str, value: object, allowed: str) -> None:
        raise ValueError(f"{CONFIG_KEY}.{name} = {value!r} is not valid; allowed: {allowed}")


class AdaptiveController:
    """A `KPolicy` choosing, per engine step, the k of the highest predicted goodput (`goodput`).

    step_time(B, 0) is a plain decoding step; step_time(B, k) is drafting k tokens plus verifying
    k + 1, both from the profile (the drafter's catch-up after plain steps is not modelled: it is
    one forward pass over the queued tokens, paid once per switch), each times the calibrated
    ratio of the engine's measured step time to the profile's at that k. Speculation must promise
    `config.min_gain` over plain decoding (see `ControllerConfig`). Hysteresis: the controller
    leaves its current k only for a k whose predicted goodput is higher by more than
    `config.hysteresis` (relative), so a batch size oscillating around a threshold, or a noisy
    acceptance estimate, does not make it flap (vLLM issue #49548).
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
        self.stragglers = StragglerAcceptance(self.config.max_k, self.config.ema_decay, self.config.prior_strength)
        self.calibration = StepTimeCalibration(self.config.calibration_decay)
        self.current_k: int | None = None
        self.plain_streak = 0  # consecutive plain steps, for probing
        self._probe_left = 0  # further steps of the probe under way
        self._set_profile(profile)

    def _set_profile(self, profile: StepCostProfile) -> None:
        if not profile.decode_s:
            raise ValueError(f"step-cost profile {profile.key} has no plain decoding times")
        if any(k > 0 for k in self.candidates) and not profile.has_spec_times:
            raise ValueError(
                f"step-cost profile {profile.key} has no speculative step times, needed for candidates {self.candidates}"
            )
        self.profile = profile
        self._tables: dict[int, MonotoneStepTable] = {}  # per context bucket
        self._step_times: dict[tuple[int, int, int], float] = {}

    @property
    def _probe_steps(self) -> int:
        """Steps per probe: with calibration, a second one, since the first pays the drafter's catch-up."""
        return 2 if self.calibration.enabled else 1

    def profile_time(self, batch_size: int, k: int) -> float:
        """The profile's seconds for a step, fitted monotone in batch size and k (`step_table`), uncalibrated."""
        ctx = self.profile.bucket(self.context_len)
        point = (batch_size, k, ctx)
        if point not in self._step_times:  # the profile is fixed, so cache its interpolation
            if ctx not in self._tables:
                self._tables[ctx] = MonotoneStepTable(self.profile, self.candidates, ctx)
            self._step_times[point] = self._tables[ctx].time(batch_size, k)
        return self._step_times[point]

    def step_time(self, batch_size: int, k: int) -> float:
        """Predicted seconds of an engine step: the profile's, calibrated on the measured steps."""
        return self.profile_time(batch_size, k) * self.calibration.ratio(k, batch_size)

    def row_share(self, batch_size: int, k: int) -> float:
        """The share of a step's time that grows with its rows, from the profile's slope in batch size.

        The secant from half the batch (batch 1: to batch 2), clamped to [0, 1]: a noisy profile
        can slope down, and a share above 1 would make the per-step part negative.
        """
        lo = max(1, batch_size // 2)
        hi = batch_size if batch_size > lo else 2
        slope = (self.profile_time(hi, k) - self.profile_time(lo, k)) / (hi - lo)
        return min(max(slope * batch_size / self.profile_time(batch_size, k), 0.0), 1.0)

    def goodput(self, batch_size: int, k: int) -> float:
        """Predicted tokens per second of a fixed batch: B / (step_time * ((1 - s) / E_lag + s / E_mean)).

        Of a step's time, the share s = `row_share` is paid per row, and rows leave as they finish,
        so it is paid per token at the batch's mean rate E_mean = E[tokens | k]; the rest is paid
        per step until the batch's last row is done, so at the rate E_lag of its stragglers (the
        rows furthest behind; see `StragglerAcceptance`). With E_lag = E_mean (no straggler
        evidence yet) this is B * E[tokens | k] / step_time, a server's per-step goodput.
        """
        step = self.step_time(batch_size, k)
        if k == 0:
            return batch_size / step
        mean = self.acceptance.expected_tokens(k)
        lag = self.stragglers.expected_tokens(k, batch_size, self.acceptance.rates())
        share = self.row_share(batch_size, k)
        return batch_size / (step * ((1.0 - share) / lag + share / mean))

    def score(self, batch_size: int, k: int) -> float:
        """What the decision compares: goodput, plain decoding's raised by `min_gain` (speculation must beat it)."""
        g = self.goodput(batch_size, k)
        return g * (1.0 + self.config.min_gain) if k == 0 else g

    def best_k(self, batch_size: int) -> int:
        """The argmax of `score` without hysteresis (ties go to the smaller, cheaper k)."""
        best, best_score = self.candidates[0], self.score(batch_size, self.candidates[0])
        for k in self.candidates[1:]:
            s = self.score(batch_size, k)
            if s > best_score:
                best, best_score = k, s
        return best

    def choose_k(self, batch_size: int) -> int:
        best = self.best_k(batch_size)
        k = self.current_k
        if k is None or k not in self.candidates:
            k = best
        elif self.score(batch_size, best) > (1.0 + self.config.hysteresis) * self.score(batch_size, k):
            k = best  # a clear gain: switch; a gain within the margin is not worth a flap
        self.current_k = k
        if k > 0:
            self._probe_left = 0
            return k
        return self._probe(batch_size)

    def probe_interval(self) -> int:
        """Plain steps before the next probe: `probe_interval`, scaled down while the acceptance
        estimate holds fewer than `probe_evidence` drafted rows (see `ControllerConfig`).

        An estimate of a few rows is one unlucky draft away from turning speculation off, and at
        batch 1 a step adds one row, so the interval shrinks to match; at large batches, where a
        probe costs most, one speculative step brings the evidence up and the interval back.
        """
        full, needed = self.config.probe_interval, self.config.probe_evidence
        if not full or not needed:
            return full
        evidence = self.acceptance.drafted[0] if self.acceptance.drafted else 0.0
        return max(min(full, MIN_PROBE_INTERVAL), math.ceil(full * min(1.0, evidence / needed)))

    def _probe(self, batch_size: int) -> int:
        """The k of a probe step when one is due, else 0 (current_k stays 0: evidence, not a switch)."""
        interval = self.probe_interval()
        if not interval or not (self._probe_left or self.plain_streak >= interval):
            return 0
        probe = self._probe_k(batch_size)
        if not probe:
            self._probe_left = 0
            return 0
        self._probe_left = (self._probe_left or self._probe_steps) - 1
        self.plain_streak = 0
        return probe

    def _probe_k(self, batch_size: int) -> int:
        """The smallest positive candidate that would beat plain decoding at perfect acceptance, else 0.

        Judged on the profile's own costs: a calibration gone stale (say, measured under contention)
        must not stop probing for good, and the probe's steps are what refresh it.
        """
        plain = batch_size / self.profile_time(batch_size, 0) if 0 in self.candidates else 0.0
        for k in self.candidates:
            if k > 0 and batch_size * (k + 1) / self.profile_time(batch_size, k) > plain:
                return k
        return 0

    def observe(self, record: StepRecord) -> None:
        self.acceptance.observe(record)
        self.stragglers.observe(record)
        # a k outside the candidates (the engine cut k at the length cap) may be missing from the profile
        predicted = self.profile_time(record.batch_size, record.k) if record.k in self.candidates else math.nan
        self.calibration.observe(record.k, record.step_time_s, predicted, record.batch_size)
        self.plain_streak = self.plain_streak + 1 if record.k == 0 else 0

    def schedule(self, max_batch_size: int) -> list[tuple[int, int, int]]:
        """vLLM's `num_speculative_tokens_per_batch_size`: inclusive (lo, hi, k) ranges over 1..max.

        The argmax at the current acceptance estimate and calibrated costs, ranges of equal k
        merged; a static table has no current k, so no hysteresis.
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
        """Profile, acceptance counts (of the batch and of its stragglers), step-time calibration and
        current k, as plain JSON-serialisable values."""
        return {
            "profile": self.profile.to_dict(),
            "acceptance": self.acceptance.state_dict(),
            "stragglers": self.stragglers.state_dict(),
            "calibration": self.calibration.state_dict(),
            "current_k": self.current_k,
            "plain_streak": self.plain_streak,
            "probe_left": self._probe_left,
            "context_len": self.context_len,
        }

    def load_state_dict(self, state: dict) -> None:
        self._set_profile(StepCostProfile.from_dict(state["profile"]))
        self.acceptance.load_state_dict(state["acceptance"])
        self.stragglers.load_state_dict(state.get("stragglers", {}))  # none in a state saved before they were kept
        # a state saved before calibration existed: no evidence yet, the profile as measured
        self.calibration.load_state_dict(state.get("calibration", {"log_ratio": {}}))
        self.current_k = state["current_k"]
        self.plain_streak = int(state["plain_streak"])
        self._probe_left = int(state.get("probe_left", 0))
        self.context_len = state["context_len"]

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
