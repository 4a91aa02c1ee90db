"""The adaptive speculation controller: profile, acceptance estimate, decision, schedule, state."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable

import pytest
import torch

from respec_verl.drafter import self_draft
from respec_verl.speculation import (
    AcceptanceEstimate,
    AdaptiveController,
    ControllerConfig,
    FixedK,
    ProfileKey,
    SamplingParams,
    SpeculativeEngine,
    StepCostProfile,
    StepRecord,
    StepTimeCalibration,
    build_k_policy,
    profile_step_costs,
)
from respec_verl.speculation.controller import MIN_PROBE_INTERVAL
from respec_verl.speculation import engine_profile as engine_profile_module
from respec_verl.speculation.calibration import DRIFT_GAIN
from respec_verl.speculation.engine_profile import engine_step_times, profile_engine_steps
from respec_verl.speculation.step_table import monotone_grid, non_decreasing
from tests.conftest import tiny_llama

CTX = 256
KEY = ProfileKey("synthetic", "float32", "cpu")
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def synthetic_profile(
    forward_s: Callable[[int], float], ks=(1, 2, 3, 4), draft_ratio: float = 0.05, key: ProfileKey = KEY
) -> StepCostProfile:
    """A profile from a target cost model forward_s(tokens in the batch); a draft step costs draft_ratio of a decode."""
    profile = StepCostProfile(key)
    for b in BATCH_SIZES:
        profile.decode_s[(CTX, b)] = forward_s(b)
        for k in ks:
            profile.verify_s[(CTX, b, k)] = forward_s(b * (k + 1))
            profile.draft_s[(CTX, b, k)] = k * draft_ratio * forward_s(b)
    return profile


def roofline(tokens: int) -> float:
    """Memory-bound (flat) up to 32 tokens per forward, compute-bound (linear) beyond."""
    return max(0.01, tokens * 0.01 / 32)


def compute_bound(tokens: int) -> float:
    return 0.001 * tokens


def geometric_record(rng: random.Random, batch_size: int, k: int, alpha: float) -> StepRecord:
    """A step where every drafted position is accepted with probability alpha, independently."""
    accepted = []
    for _ in range(batch_size):
        n = 0
        while n < k and rng.random() < alpha:
            n += 1
        accepted.append(n)
    return StepRecord(batch_size, k, accepted, 0.0, 0.0)


def count_switches(ks: list[int]) -> int:
    return sum(a != b for a, b in zip(ks, ks[1:]))


# ---------------------------------------------------------------- decision


def test_sd_off_when_verification_is_compute_bound():
    controller = AdaptiveController(synthetic_profile(compute_bound), ControllerConfig(prior_acceptance=0.95))
    for b in range(1, 65):
        assert controller.choose_k(b) == 0
        assert all(controller.goodput(b, 0) > controller.goodput(b, k) for k in range(1, 5))


def test_sd_on_in_the_memory_bound_tail_and_off_at_large_batch():
    controller = AdaptiveController(synthetic_profile(roofline), ControllerConfig(prior_acceptance=0.8))
    assert controller.best_k(1) > 0
    assert controller.best_k(64) == 0


def test_larger_k_when_acceptance_is_high():
    low = AdaptiveController(synthetic_profile(roofline), ControllerConfig(prior_acceptance=0.3))
    high = AdaptiveController(synthetic_profile(roofline), ControllerConfig(prior_acceptance=0.9))
    assert high.best_k(4) > low.best_k(4) > 0


def test_observed_acceptance_moves_k_both_ways():
    controller = AdaptiveController(synthetic_profile(roofline), ControllerConfig(prior_acceptance=0.3))
    start = controller.choose_k(4)
    assert 0 < start < 4
    for _ in range(30):  # every draft accepted: the longest draft wins
        controller.observe(StepRecord(4, 2, [2, 2, 2, 2], 0.0, 0.0))
    assert controller.choose_k(4) == 4
    for _ in range(100):  # every draft rejected: speculation only costs
        controller.observe(StepRecord(4, 4, [0, 0, 0, 0], 0.0, 0.0))
    assert controller.choose_k(4) == 0


def threshold_profile() -> StepCostProfile:
    """k=1 beats plain by 1% at batch 15 and loses by 1% at batch 17 (acceptance 0.5: 1.5 tokens per step)."""
    profile = StepCostProfile(KEY)
    for b, step_s in ((15, 1.5 / 1.01), (17, 1.5 / 0.99)):
        profile.decode_s[(CTX, b)] = 1.0
        profile.draft_s[(CTX, b, 1)] = 0.1
        profile.verify_s[(CTX, b, 1)] = step_s - 0.1
    return profile


def test_no_flapping_when_batch_size_oscillates_around_threshold():
    sizes = [15, 17] * 20
    config = ControllerConfig(max_k=1, prior_acceptance=0.5, min_gain=0.0)
    controller = AdaptiveController(threshold_profile(), config)
    assert (controller.best_k(15), controller.best_k(17)) == (1, 0)  # really a threshold
    assert count_switches([controller.choose_k(b) for b in sizes]) == 0

    no_margin = AdaptiveController(threshold_profile(), dataclasses.replace(config, hysteresis=0.0))
    assert count_switches([no_margin.choose_k(b) for b in sizes]) == len(sizes) - 1


def test_no_flapping_with_noisy_acceptance_at_a_tie():
    """k=2 and k=3 tie at true acceptance 0.6; estimation noise flips the argmax, the margin must not.

    Measured over 20 blocks of these 20 seeds x 250 steps: 60-173 switches without hysteresis, 0-1
    with a 5% margin, so the bounds below leave a wide gap on both sides.
    """
    profile = StepCostProfile(KEY)
    profile.decode_s[(CTX, 16)] = 1.0
    for k, step_s in ((1, 1.0), (2, 1.0), (3, 1.11)):  # 1.11 = AL(3) / AL(2) at acceptance 0.6
        profile.draft_s[(CTX, 16, k)] = 0.0
        profile.verify_s[(CTX, 16, k)] = step_s

    def switches(margin: float) -> int:
        total = 0
        for seed in range(20):
            rng = random.Random(seed)
            config = ControllerConfig(max_k=3, candidates=(1, 2, 3), hysteresis=margin, ema_decay=0.8)
            controller, chosen = AdaptiveController(profile, config), []
            for _ in range(300):
                chosen.append(controller.choose_k(16))
                controller.observe(geometric_record(rng, 16, chosen[-1], 0.6))
            total += count_switches(chosen[50:])  # after warm-up
        return total

    assert switches(0.05) <= 3
    assert switches(0.0) >= 30


@pytest.mark.parametrize("calibration_decay,probe_steps", [(0.8, 2), (0.0, 1)])
def test_probe_after_a_plain_streak_only_where_speculation_could_win(calibration_decay, probe_steps):
    """With calibration a probe drafts twice: its first step pays the drafter's catch-up, no cost evidence."""
    profile = synthetic_profile(roofline, draft_ratio=0.3)  # k=1 needs acceptance > 0.3 at batch 1
    config = ControllerConfig(probe_interval=5, probe_evidence=0.0, calibration_decay=calibration_decay)
    controller = AdaptiveController(profile, config)
    for _ in range(100):  # acceptance collapses: plain decoding
        controller.observe(StepRecord(1, 4, [0], 0.0, 0.0))
    for _ in range(5):
        assert controller.choose_k(1) == 0
        controller.observe(StepRecord(1, 0, [0], 0.0, 0.0))
    for _ in range(probe_steps):
        assert controller.choose_k(1) == 1  # probing at the smallest k
        assert controller.current_k == 0
        controller.observe(StepRecord(1, 1, [0], 0.0, 0.0))  # rejected again
    assert controller.choose_k(1) == 0
    for _ in range(10):  # batch 64 loses even at perfect acceptance: never probed
        assert controller.choose_k(64) == 0
        controller.observe(StepRecord(64, 0, [0] * 64, 0.0, 0.0))


def plain_steps_before_probe(controller: AdaptiveController, batch_size: int, limit: int = 200) -> int:
    """Plain steps the controller takes at `batch_size` before it drafts again."""
    for n in range(limit):
        if controller.choose_k(batch_size):
            return n
        controller.observe(StepRecord(batch_size, 0, [0] * batch_size, 0.0, 0.0))
    return limit


def test_one_rejected_first_draft_is_probed_again_soon():
    """bench/controller.py at B = 1 (docs/notebook/controller.md 2e): the first draft was rejected, which turned
    speculation off, and a 64-step interval kept the 30-step run plain. With one drafted row of
    evidence the next probe comes after MIN_PROBE_INTERVAL plain steps; a fixed interval waits 64."""
    profile = synthetic_profile(roofline, draft_ratio=0.5)  # k = 1 costs 1.5 plain steps at batch 1
    for evidence, expected in ((16.0, MIN_PROBE_INTERVAL), (0.0, 64)):
        config = ControllerConfig(probe_interval=64, probe_evidence=evidence, calibration_decay=0.0, min_gain=0.0)
        controller = AdaptiveController(profile, config)
        controller.observe(StepRecord(1, 4, [0], 0.0, 0.0))  # the first draft, rejected
        assert controller.best_k(1) == 0  # the estimate now says plain decoding
        assert plain_steps_before_probe(controller, 1) == expected


def test_probe_interval_grows_with_the_evidence_to_the_full_interval():
    """Shorter while the estimate holds few drafted rows; full once it holds probe_evidence of them."""
    profile = synthetic_profile(roofline, draft_ratio=0.3)
    config = ControllerConfig(probe_interval=64, probe_evidence=16.0, calibration_decay=0.0)
    controller = AdaptiveController(profile, config)
    assert controller.probe_interval() == MIN_PROBE_INTERVAL  # no evidence yet
    intervals = []
    for _ in range(5):  # rejected drafts at batch 4: 4 rows of evidence each (decayed by 0.9 per step)
        controller.observe(StepRecord(4, 1, [0] * 4, 0.0, 0.0))
        intervals.append(controller.probe_interval())
    assert intervals == sorted(intervals) and intervals[0] == math.ceil(64 * 4 / 16) and intervals[-1] == 64
    controller.observe(StepRecord(16, 1, [0] * 16, 0.0, 0.0))  # one step at batch 16 is evidence enough
    assert controller.probe_interval() == 64
    # at batch 64 speculation loses even at perfect acceptance: however short the interval, no probe
    fresh = AdaptiveController(profile, config)
    assert plain_steps_before_probe(fresh, 64, limit=50) == 50
    # and the interval never exceeds probe_interval, nor goes below it when that is already short
    short = AdaptiveController(profile, dataclasses.replace(config, probe_interval=2))
    assert short.probe_interval() == 2


# ---------------------------------------------------------------- step-time calibration


def scaled_sd_costs(profile: StepCostProfile, factor: float) -> StepCostProfile:
    """The profile with every draft and verify time multiplied by `factor` (plain decoding unchanged)."""
    return StepCostProfile(
        profile.key,
        dict(profile.decode_s),
        {point: t * factor for point, t in profile.draft_s.items()},
        {point: t * factor for point, t in profile.verify_s.items()},
    )


def timed_record(rng: random.Random, profile: StepCostProfile, b: int, k: int, plain_cost: float, sd_cost: float):
    """An engine step whose wall time is the profile's prediction times plain_cost (k = 0) or sd_cost (k > 0)."""
    record = geometric_record(rng, b, k, 0.7)
    record.step_time_s = profile.step_time(b, k, CTX) * (sd_cost if k else plain_cost)
    return record


def run_steps(
    controller: AdaptiveController,
    sizes: list[int],
    sd_cost: float,
    plain_cost: float = 1.0,
    followers: tuple[AdaptiveController, ...] = (),
    seed: int = 0,
) -> list[int]:
    """Drive the controller like the engine does; followers observe the same steps. Returns the ks run."""
    rng, ks = random.Random(seed), []
    for b in sizes:
        ks.append(controller.choose_k(b))
        record = timed_record(rng, controller.profile, b, ks[-1], plain_cost, sd_cost)
        for c in (controller, *followers):
            c.observe(record)
    return ks


SHRINKING = [b for b in [*range(64, 0, -4), 2, 1] for _ in range(6)]  # a rollout's batch draining


def test_calibration_turns_sd_off_where_real_sd_steps_cost_more():
    profile = synthetic_profile(roofline)
    # A fixed probe interval: early probes at large batches (evidence-scaled, tested below) would learn
    # the costs before the flip sizes, and this test is about learning them from the SD steps run there.
    config = ControllerConfig(prior_acceptance=0.7, min_gain=0.0, probe_evidence=0.0)
    off = dataclasses.replace(config, calibration_decay=0.0)
    calibrated, bare = AdaptiveController(profile, config), AdaptiveController(profile, off)
    oracle = AdaptiveController(scaled_sd_costs(profile, 1.5), off)  # knows the real costs from the start
    flips = [b for b in range(1, 65) if calibrated.best_k(b) > 0 and oracle.best_k(b) == 0]
    assert set(flips) & set(SHRINKING)  # the bare profile keeps SD on where it loses

    ks = run_steps(calibrated, SHRINKING, sd_cost=1.5, followers=(bare, oracle))
    assert any(k > 0 for b, k in zip(SHRINKING, ks) if b in flips)  # it did run SD there at first...
    last_k = {b: k for b, k in zip(SHRINKING, ks)}
    assert all(last_k[b] == 0 for b in flips if b in last_k)  # ...and turned it off within the same batch size
    assert calibrated.calibration.ratio(0) == pytest.approx(1.0)
    assert calibrated.calibration.ratio(1) == pytest.approx(1.5)
    assert calibrated.schedule(64) == oracle.schedule(64)  # same acceptance evidence, real costs learnt
    assert bare.schedule(64) != oracle.schedule(64)  # the acceptance evidence alone does not do it


@pytest.mark.parametrize("cost", [1.0, 1.3])  # the profile exact; every step 30% slower than profiled
def test_calibration_changes_nothing_when_costs_match_the_profile_up_to_a_common_factor(cost):
    profile = synthetic_profile(roofline)
    config = ControllerConfig(prior_acceptance=0.7, probe_interval=0)  # probes differ in length (tested above)
    calibrated = AdaptiveController(profile, config)
    bare = AdaptiveController(profile, dataclasses.replace(config, calibration_decay=0.0))
    rng = random.Random(1)
    for b in SHRINKING + SHRINKING[::-1]:
        k = calibrated.choose_k(b)
        assert bare.choose_k(b) == k
        record = timed_record(rng, profile, b, k, cost, cost)
        calibrated.observe(record)
        bare.observe(record)
    assert calibrated.calibration.log_ratio  # it did measure
    assert all(calibrated.calibration.ratio(k) == pytest.approx(cost) for k in range(5))
    assert calibrated.schedule(64) == bare.schedule(64)


def test_probe_refreshes_a_stale_calibration_and_sd_comes_back():
    """SD measured 3x dearer than profiled (contention) turns it off; probes find it cheap again."""
    config = ControllerConfig(prior_acceptance=0.7, probe_interval=8, min_gain=0.0)
    controller = AdaptiveController(synthetic_profile(roofline), config)
    assert controller.choose_k(1) > 0
    run_steps(controller, [1] * 12, sd_cost=3.0)
    assert controller.current_k == 0 and controller.best_k(1) == 0
    stale = controller.calibration.ratio(1)
    assert stale > 2.0

    ks = run_steps(controller, [1] * 40, sd_cost=1.0, seed=1)
    first = next(i for i, k in enumerate(ks) if k > 0)
    assert first <= 8 and ks[first + 1] > 0  # a probe: two steps, the first pays the drafter's catch-up
    assert controller.calibration.ratio(1) < stale / 1.5  # the stale ratio gave way to the probe's step
    assert controller.current_k > 0 and all(k > 0 for k in ks[first:])  # speculating again, not just probing


def test_calibration_skips_warm_up_catch_up_and_unusable_times():
    cal = StepTimeCalibration(decay=0.5)
    cal.observe(0, 5.0, 1.0)  # first plain step: warm-up
    assert cal.ratio(0) == 1.0
    cal.observe(0, 1.2, 1.0)
    assert cal.ratio(0) == pytest.approx(1.2)
    assert cal.ratio(2) == pytest.approx(1.2)  # no speculative evidence: a speculative step costs what plain does
    cal.observe(1, 5.0, 1.0)  # first at k=1, and right after a plain step (the drafter's catch-up)
    cal.observe(1, 1.5, 1.0)
    assert cal.ratio(1) == pytest.approx(1.5)
    cal.observe(0, 1.2, 1.0)
    cal.observe(1, 9.0, 1.0)  # catch-up again
    assert cal.ratio(1) == pytest.approx(1.5)
    for bad in (0.0, -1.0, math.nan, math.inf):
        cal.observe(1, bad, 1.0)
        cal.observe(1, 1.0, bad)
    assert cal.ratio(1) == pytest.approx(1.5)
    cal.observe(1, 1.5, 1.0)
    cal.observe(1, 1000.0, 1.0)  # a stall: one step moves the ratio by a factor 2 at most
    assert cal.ratio(1) == pytest.approx(3.0)
    # the stall was put down DRIFT_GAIN to the machine and the rest to the cell; the next step takes
    # the machine's share back in full (its cell was measured a step before) and half the cell's (decay 0.5)
    cal.observe(1, 1.5, 1.0)
    assert cal.ratio(1) == pytest.approx(1.5 * 2.0 ** ((1.0 - DRIFT_GAIN) / 2))


def test_speculation_must_beat_plain_decoding_by_min_gain():
    profile = synthetic_profile(roofline)
    eager = AdaptiveController(profile, ControllerConfig(min_gain=0.0))
    careful = AdaptiveController(profile, ControllerConfig(min_gain=0.15))

    def gain(b: int) -> float:
        return eager.goodput(b, eager.best_k(b)) / eager.goodput(b, 0)

    batch = next(b for b in range(1, 65) if 1.0 < gain(b) < 1.1)  # where SD promises 0-10% more than plain
    assert eager.choose_k(batch) > 0 and careful.choose_k(batch) == 0
    assert careful.choose_k(1) > 0  # a large gain (the memory-bound tail) still speculates
    assert careful.schedule(64)[-1][2] == 0 and eager.schedule(64) != careful.schedule(64)


def test_calibration_keeps_measured_batch_buckets_apart():
    cal = StepTimeCalibration(decay=0.5)
    cal.observe(2, 1.0, 1.0, batch_size=1)  # first at k=2: warm-up
    for _ in range(6):
        cal.observe(2, 1.1, 1.0, batch_size=1)  # cheap where memory-bound
        cal.observe(2, 2.0, 1.0, batch_size=40)  # dear where compute-bound
    assert cal.ratio(2, 1) == pytest.approx(1.1, rel=0.01)
    assert cal.ratio(2, 63) == pytest.approx(2.0, rel=0.01)  # 40 and 63 share the bucket 32..63
    assert 1.1 < cal.ratio(2, 8) < 2.0 and cal.ratio(2, 8) == cal.ratio(2)  # an unmeasured bucket: the shared one
    assert cal.ratio(3, 40) == cal.ratio(2)  # an unmeasured k borrows the nearest k's shared ratio
    restored = StepTimeCalibration(decay=0.5)
    restored.load_state_dict(json.loads(json.dumps(cal.state_dict())))
    assert [restored.ratio(2, b) for b in (1, 8, 40)] == [cal.ratio(2, b) for b in (1, 8, 40)]


def test_controller_turns_sd_off_at_large_batches_only_when_only_they_cost_more():
    """Real SD steps 3x dearer than profiled at batch 32 and up, as profiled below: SD stays on at batch 1.

    A ratio shared by all batch sizes would carry batch 40's 3x to batch 1 and turn SD off there too.
    """
    profile = synthetic_profile(lambda tokens: 0.01)  # every forward memory-bound: SD pays everywhere
    config = ControllerConfig(prior_acceptance=0.8, probe_interval=0, min_gain=0.0)
    controller = AdaptiveController(profile, config)
    assert controller.choose_k(40) > 0 and controller.choose_k(1) > 0  # the profile says SD wins at both
    rng = random.Random(0)
    for b in [1] * 12 + [40] * 12:
        k = controller.choose_k(b)
        record = timed_record(rng, profile, b, k, 1.0, 3.0 if b >= 32 else 1.0)
        controller.observe(record)
    assert controller.best_k(40) == 0 and controller.best_k(1) > 0


def test_calibration_borrows_from_the_nearest_speculative_k_and_can_be_off():
    cal = StepTimeCalibration(decay=0.5)
    for k, ratio in ((1, 1.5), (4, 2.0)):
        cal.observe(k, 1.0, 1.0)  # warm-up
        cal.observe(k, ratio, 1.0)
    assert [cal.ratio(k) for k in range(6)] == pytest.approx([1.0, 1.5, 1.5, 2.0, 2.0, 2.0])
    off = StepTimeCalibration(decay=0.0)
    for _ in range(5):
        off.observe(1, 3.0, 1.0)
    assert off.ratio(1) == 1.0 and not off.log_ratio
    with pytest.raises(ValueError, match="decay"):
        StepTimeCalibration(decay=1.0)


def test_calibration_survives_a_state_dict_round_trip_and_old_states_load():
    profile = synthetic_profile(roofline)
    config = ControllerConfig(prior_acceptance=0.7)
    controller = AdaptiveController(profile, config)
    run_steps(controller, SHRINKING, sd_cost=1.5)
    state = json.loads(json.dumps(controller.state_dict()))
    restored = AdaptiveController.from_state_dict(state, config)
    assert restored.calibration.state_dict() == controller.calibration.state_dict()  # ratios and their ages
    assert restored.calibration.ratio(1) == pytest.approx(1.5)

    old = {key: value for key, value in state.items() if key not in ("calibration", "probe_left")}
    legacy = AdaptiveController.from_state_dict(old, config)  # saved before calibration existed
    assert legacy.calibration.log_ratio == {} and legacy.calibration.ratio(1) == 1.0
    assert legacy.acceptance.rates() == controller.acceptance.rates()
    assert restored.schedule(64) == controller.schedule(64) != legacy.schedule(64)  # the calibration decides

    rng = random.Random(2)  # and both go on alike (the restored one skips its own warm-up steps)
    for b in (8, 8, 8, 24, 24, 24):
        record = timed_record(rng, profile, b, controller.choose_k(b), 1.0, 1.2)
        assert restored.choose_k(b) == record.k
        for c in (controller, restored):
            c.observe(record)
    assert [c.calibration.ratio(3) for c in (controller, restored)] == pytest.approx([1.2, 1.2], rel=0.01)


# ---------------------------------------------------------------- vLLM schedule


def test_schedule_in_vllm_format():
    controller = AdaptiveController(synthetic_profile(roofline), ControllerConfig(prior_acceptance=0.8))
    controller.choose_k(64)
    schedule = controller.schedule(64)
    assert schedule[0][0] == 1 and schedule[-1][1] == 64
    for (lo, hi, k), nxt in zip(schedule, schedule[1:] + [None]):
        assert lo <= hi and isinstance(k, int) and k >= 0
        assert all(controller.best_k(b) == k for b in range(lo, hi + 1))
        if nxt is not None:
            assert nxt[0] == hi + 1  # contiguous, inclusive
            assert nxt[2] != k  # merged
    assert schedule[0][2] > 0 and schedule[-1][2] == 0
    assert len(schedule) >= 2
    assert controller.current_k == 0  # exporting does not move the live decision
    assert controller.schedule(1) == [(1, 1, controller.best_k(1))]
    with pytest.raises(ValueError, match="max_batch_size"):
        controller.schedule(0)


def straggler_record(
    batch_size: int, k: int, batch_accepts: int, straggler_accepts: int, lagging: int = 1
) -> StepRecord:
    """The first `lagging` rows lag and accept `straggler_accepts`; the other rows accept `batch_accepts`."""
    accepted = [straggler_accepts] * lagging + [batch_accepts] * (batch_size - lagging)
    return StepRecord(batch_size, k, accepted, 0.0, 0.0, lagging=[True] * lagging + [False] * (batch_size - lagging))


def test_sd_off_where_the_stragglers_accept_nothing_and_steps_cost_the_same_for_any_batch():
    """Flat costs: a fixed batch takes as many steps as its slowest row needs, so that row's
    acceptance, not the batch's mean, decides; at a batch size whose stragglers were never seen
    (smaller than the measured one) the batch's rates still stand."""
    profile = synthetic_profile(lambda tokens: 0.01)
    config = ControllerConfig(
        max_k=2, candidates=(0, 1, 2), prior_acceptance=0.9, probe_interval=0, calibration_decay=0.0
    )
    controller = AdaptiveController(profile, config)
    blind = AdaptiveController(profile, config)  # the same steps without lagging rows marked
    for _ in range(30):
        record = straggler_record(16, 2, batch_accepts=2, straggler_accepts=0, lagging=4)
        controller.observe(record)
        blind.observe(dataclasses.replace(record, lagging=None))
    assert controller.acceptance.expected_tokens(2) > 2.4  # the batch's mean is high
    assert controller.stragglers.expected_tokens(2, 16, controller.acceptance.rates()) < 1.2
    assert controller.best_k(16) == 0 and controller.best_k(40) == 0  # a larger batch borrows batch 16's stragglers
    assert blind.best_k(16) == 2  # by the mean, SD would pay
    assert controller.best_k(8) == 2 and controller.best_k(1) == 2  # smaller batches: no straggler evidence
    assert controller.row_share(16, 2) == 0.0
    tied = AdaptiveController(profile, config)  # every row as far along as the others: no straggler to learn from
    tied.observe(dataclasses.replace(straggler_record(16, 2, 2, 0, lagging=4), lagging=[True] * 16))
    assert tied.stragglers.counts == {}


def test_stragglers_matter_only_for_the_per_step_share_of_the_cost():
    """Compute-bound costs grow with every row, which leaves as it finishes: the batch's mean rate
    sets them, so the same lagging row that turns SD off on flat costs changes nothing here."""
    per_row = synthetic_profile(lambda tokens: 0.01 * tokens, draft_ratio=0.0)
    controller = AdaptiveController(per_row, ControllerConfig(max_k=2, probe_interval=0, calibration_decay=0.0))
    before = controller.goodput(16, 2)
    for _ in range(30):
        controller.observe(straggler_record(16, 2, batch_accepts=2, straggler_accepts=0))
    assert controller.row_share(16, 2) == pytest.approx(1.0)
    mean = controller.acceptance.expected_tokens(2)
    assert controller.goodput(16, 2) == pytest.approx(16 * mean / controller.step_time(16, 2))
    assert controller.goodput(16, 2) > before  # the batch accepted everything: only the mean moved it


def test_straggler_estimates_survive_a_state_dict_round_trip_and_old_states_load():
    config = ControllerConfig(max_k=2, candidates=(0, 1, 2), probe_interval=0, calibration_decay=0.0)
    controller = AdaptiveController(synthetic_profile(lambda tokens: 0.01), config)
    for b in (4, 16, 16):
        controller.observe(straggler_record(b, 2, batch_accepts=2, straggler_accepts=0))
    state = json.loads(json.dumps(controller.state_dict()))
    assert sorted(state["stragglers"]) == ["16", "4"]
    restored = AdaptiveController.from_state_dict(state, config)
    assert [restored.goodput(b, 2) for b in (1, 4, 16, 64)] == [controller.goodput(b, 2) for b in (1, 4, 16, 64)]
    del state["stragglers"]  # a state saved before stragglers were kept
    old = AdaptiveController.from_state_dict(state, config)
    assert old.stragglers.counts == {} and old.goodput(16, 2) > controller.goodput(16, 2)


# ---------------------------------------------------------------- state


def test_state_dict_round_trip():
    config = ControllerConfig(max_k=4)
    controller = AdaptiveController(synthetic_profile(roofline), config)
    rng = random.Random(0)
    for b in (64, 8, 2, 1, 1):
        controller.observe(geometric_record(rng, b, controller.choose_k(b), 0.65))
    state = json.loads(json.dumps(controller.state_dict()))  # checkpoints may store it as JSON
    restored = AdaptiveController.from_state_dict(state, config)
    assert restored.state_dict() == controller.state_dict()
    assert restored.current_k == controller.current_k is not None

    other = AdaptiveController(synthetic_profile(compute_bound), config)  # profile comes from the state
    other.load_state_dict(state)
    assert other.state_dict() == controller.state_dict()
    for c in (restored, other):
        assert c.acceptance.rates() == controller.acceptance.rates()
        assert c.schedule(64) == controller.schedule(64)
    for b in (3, 3, 16, 1):
        record = geometric_record(rng, b, controller.choose_k(b), 0.65)
        assert restored.choose_k(b) == record.k
        controller.observe(record)
        restored.observe(record)
    assert restored.state_dict() == controller.state_dict()


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("max_k", -1, "integer >= 0"),
        ("candidates", [], "non-empty list"),
        ("candidates", [0, 5], "[0, max_k=4]"),
        ("candidates", [1, 1], "distinct"),
        ("policy", "greedy", "'adaptive', 'fixed', 'off'"),
        ("hysteresis", 1.5, "[0, 1)"),
        ("ema_decay", 1.0, "[0, 1)"),
        ("prior_acceptance", -0.1, "[0, 1]"),
        ("prior_strength", 0, "> 0"),
        ("probe_interval", -3, "integer >= 0"),
        ("probe_evidence", -1.0, "finite number >= 0"),
        ("probe_evidence", math.inf, "finite number >= 0"),
        ("calibration_decay", 1.0, "[0, 1) (0 disables calibration)"),
        ("calibration_decay", -0.1, "[0, 1)"),
        ("calibration_decay", "0.8", "[0, 1)"),
    ],
)
def test_config_errors_name_key_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        ControllerConfig(**{field: value})
    message = str(info.value)
    assert f"actor_rollout_ref.respec.controller.{field} = {value!r}" in message
    assert allowed in message


def test_config_defaults_and_policy_factory():
    assert ControllerConfig().candidate_ks == (0, 1, 2, 3, 4)
    assert ControllerConfig(candidates=[3, 0]).candidate_ks == (0, 3)
    profile = synthetic_profile(roofline)
    assert build_k_policy(ControllerConfig(policy="off"), profile) == FixedK(0)
    assert build_k_policy(ControllerConfig(policy="fixed", max_k=3)) == FixedK(3)
    assert isinstance(build_k_policy(ControllerConfig(), profile), AdaptiveController)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.respec\.controller\.policy"):
        build_k_policy(ControllerConfig())


# ---------------------------------------------------------------- profile


def test_profile_json_round_trip_keeps_other_keys(tmp_path):
    path = tmp_path / "profiles.json"
    first = synthetic_profile(roofline)
    second = synthetic_profile(compute_bound, key=ProfileKey("other", "bfloat16", "cuda:H100", "eagle3"))
    first.save(path)
    second.save(path)
    assert StepCostProfile.load(path, first.key) == first
    assert StepCostProfile.load(path, second.key) == second

    changed = synthetic_profile(compute_bound)  # same key as `first`: replaces it
    changed.save(path)
    assert StepCostProfile.load(path, first.key) == changed
    assert StepCostProfile.load(path, second.key) == second
    assert [p.name for p in tmp_path.iterdir()] == ["profiles.json"]  # no temp file left behind
    with pytest.raises(KeyError, match="missing"):
        StepCostProfile.load(path, ProfileKey("missing", "float32", "cpu"))


def test_profile_interpolation():
    profile = StepCostProfile(KEY)
    profile.decode_s.update({(CTX, 2): 1.0, (CTX, 4): 2.0, (CTX, 8): 4.0})
    assert profile.decode_time(3) == pytest.approx(1.5)
    assert profile.decode_time(6) == pytest.approx(3.0)
    assert profile.decode_time(1) == pytest.approx(1.0)  # flat below the smallest batch
    assert profile.decode_time(16) == pytest.approx(8.0)  # last slope above the largest

    profile.decode_s[(CTX, 16)] = 3.0  # noise: the last slope is negative
    assert profile.decode_time(32) == pytest.approx(3.0)

    profile.verify_s.update({(CTX, 2, 1): 1.0, (CTX, 2, 3): 2.0, (CTX, 4, 1): 3.0, (CTX, 4, 3): 4.0})
    profile.draft_s.update({(CTX, 2, 1): 0.1, (CTX, 2, 3): 0.3, (CTX, 4, 1): 0.1, (CTX, 4, 3): 0.3})
    assert profile.verify_time(3, 2) == pytest.approx(2.5)  # midway in batch size and in k
    assert profile.step_time(2, 3) == pytest.approx(2.3)
    assert profile.step_time(4, 0) == pytest.approx(2.0)
    gaps = profile.missing()
    assert len(gaps) == 8  # draft and verify, k in {1, 3}, at the batch sizes only decoding has
    assert all("batch_size=8 " in gap or "batch_size=16 " in gap for gap in gaps)


def test_non_decreasing_fit_pools_violators_and_keeps_ordered_values():
    assert non_decreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert non_decreasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert non_decreasing([3.0, 2.0, 1.0]) == [2.0, 2.0, 2.0]


def test_monotone_grid_is_ordered_both_ways_and_is_the_closest_such_grid():
    rng = random.Random(1)
    truth = [[0.1 * (b + 1) + 0.05 * k * (b + 1) for k in range(5)] for b in range(7)]
    noisy = [[t * rng.uniform(0.7, 1.3) for t in row] for row in truth]
    fitted = monotone_grid(noisy)
    assert all(a <= b + 1e-12 for row in fitted for a, b in zip(row, row[1:]))
    assert all(fitted[i][j] <= fitted[i + 1][j] + 1e-12 for i in range(6) for j in range(5))
    flat = [t for row in truth for t in row]
    assert [t for row in monotone_grid(truth) for t in row] == pytest.approx(flat)  # an ordered grid is its own fit

    def sq(grid):
        return sum((a - b) ** 2 for ra, rb in zip(grid, noisy) for a, b in zip(ra, rb))

    for _ in range(200):  # no ordered grid nearby is closer to the measurements
        i, j, d = rng.randrange(7), rng.randrange(5), rng.uniform(-0.01, 0.01)
        moved = [list(r) for r in fitted]
        moved[i][j] += d
        ordered = all(a <= b for row in moved for a, b in zip(row, row[1:])) and all(
            moved[r][c] <= moved[r + 1][c] for r in range(6) for c in range(5)
        )
        if ordered:
            assert sq(moved) >= sq(fitted) - 1e-9


def test_an_out_of_order_profile_cell_does_not_make_speculation_look_free():
    """A noisy plain cell at batch 2 (dearer than batch 4 and than k = 1 there) must not make the
    controller draft tokens it expects to be rejected."""
    profile = synthetic_profile(lambda tokens: 0.01 * max(1.0, tokens / 8), draft_ratio=0.1)
    profile.decode_s[(CTX, 2)] = 0.02  # measured under a burst of load
    assert profile.step_time(2, 1, CTX) < profile.step_time(2, 0, CTX)  # raw: k=1 cheaper than plain
    controller = AdaptiveController(profile, ControllerConfig(max_k=4, prior_acceptance=0.0, min_gain=0.0))
    assert controller.step_time(2, 1) >= controller.step_time(2, 0)
    assert controller.step_time(2, 0) <= controller.step_time(4, 0)
    assert controller.best_k(2) == 0  # nothing accepted: drafting only costs


def test_profile_context_buckets():
    profile = StepCostProfile(KEY, decode_s={(128, 1): 1.0, (4096, 1): 5.0})
    assert profile.decode_time(1, context_len=300) == 1.0
    assert profile.decode_time(1, context_len=3000) == 5.0
    assert profile.decode_time(1) == 1.0  # no context given: the shortest bucket


def test_profile_step_costs_on_tiny_model_is_complete():
    target = tiny_llama(layers=2, hidden=32)
    drafter = self_draft(target, 1)
    profile = profile_step_costs(target, drafter, [1, 2], [1, 2], context_len=[4, 8], repeats=1, progress=False)
    assert profile.missing() == []
    assert len(profile.decode_s) == 4 and len(profile.verify_s) == 8 and len(profile.draft_s) == 8
    assert all(t > 0 for t in [*profile.decode_s.values(), *profile.verify_s.values(), *profile.draft_s.values()])
    assert profile.key.dtype == "float32" and profile.key.device.startswith("cpu")
    assert profile.key.drafter.startswith("LlamaForCausalLM-1L")
    assert AdaptiveController(profile).choose_k(2) in range(5)


def test_profilers_time_forwards_without_autograd():
    """Both profilers run under inference mode: forwards that record a graph time more than the engine runs."""
    target = tiny_llama(layers=2, hidden=32)
    drafter = self_draft(target, 1)
    modes = []
    target.register_forward_hook(lambda module, args, out: modes.append(torch.is_inference_mode_enabled()))
    profile_step_costs(target, drafter, [1], [1], context_len=4, repeats=1, progress=False)
    profile_engine_steps(target, drafter, [1], [1], context_len=4, steps=2, progress=False)
    assert modes and all(modes)


def test_engine_step_profile_is_complete_and_drives_the_controller(tmp_path):
    target = tiny_llama(layers=2, hidden=32)
    drafter = self_draft(target, 1)
    profile = profile_engine_steps(target, drafter, [1, 3], [1, 2], context_len=8, steps=3, progress=False)
    assert profile.missing() == [] and profile.has_spec_times
    assert set(profile.decode_s) == {(8, 1), (8, 3)} and set(profile.engine_s) == {(8, b, k) for b in (1, 3) for k in (1, 2)}
    assert not profile.draft_s and not profile.verify_s  # whole steps, not parts
    assert profile.step_time(3, 2) == profile.engine_s[(8, 3, 2)] > 0
    profile.save(tmp_path / "p.json")
    assert StepCostProfile.load(tmp_path / "p.json", profile.key) == profile
    assert AdaptiveController(profile, ControllerConfig(max_k=2)).choose_k(2) in range(3)  # a profiled k


@pytest.mark.parametrize("rounds", [1, 2])
def test_profile_rounds_put_a_drifting_machine_into_every_k_alike(monkeypatch, rounds):
    """Each timing call runs 10% slower than the one before (a machine slowing down); with two rounds,
    the second in reverse k order, every k of a batch size meets the same mean drift, so the ratios
    between ks are the true ones; one round times the later ks slower and puts them out of scale."""
    calls = []
    true = {0: 1.0, 1: 1.2, 2: 1.5}

    def drifting(engine, prompts, k, steps, warmup_steps):
        calls.append((len(prompts), k))
        return [true[k] * len(prompts) * (1.0 + 0.1 * len(calls))] * steps

    monkeypatch.setattr(engine_profile_module, "engine_step_times", drifting)
    target = tiny_llama(layers=2, hidden=32)
    profile = profile_engine_steps(target, self_draft(target, 1), [1, 4], [1, 2], context_len=8, steps=2,
                                   progress=False, rounds=rounds)
    assert len(calls) == rounds * 2 * 3
    if rounds == 2:
        assert calls[6:9] == [(1, 2), (1, 1), (1, 0)]  # the second round walks the ks backwards
    ratios = [profile.engine_s[(8, b, k)] / profile.decode_s[(8, b)] for b in (1, 4) for k in (1, 2)]
    expected = [true[k] for _ in (1, 4) for k in (1, 2)]
    if rounds == 2:
        assert ratios == pytest.approx(expected)
    else:
        assert all(r > e * 1.05 for r, e in zip(ratios, expected))
    with pytest.raises(ValueError, match="rounds"):
        profile_engine_steps(target, self_draft(target, 1), [1], [1], progress=False, rounds=0)


def test_engine_step_times_count_only_steps_at_the_full_k_and_batch():
    target = tiny_llama(layers=2, hidden=32)
    exact = self_draft(target, 2)  # accepts every greedy draft: a row emits k + 1 tokens per step
    engine = SpeculativeEngine(target, exact)
    times = engine_step_times(engine, [[1, 2, 3], [4, 5, 6]], k=3, steps=4, warmup_steps=1)
    assert len(times) == 4 and all(t > 0 for t in times)


# ---------------------------------------------------------------- acceptance


def test_acceptance_converges_to_synthetic_rate_and_tracks_a_change():
    """Decay 0.99 and 32 rows a step: about 6400 effective drafts at position 1 and 1400 at
    position 4 (reached by 0.6^3), standard errors 0.006 and 0.013, so 0.05 is over 3.8 sigma."""
    rng = random.Random(0)
    estimate = AcceptanceEstimate(max_k=4, decay=0.99, prior=0.3)
    assert estimate.rates() == [0.3] * 4  # nothing seen: the prior
    for _ in range(1500):
        estimate.observe(geometric_record(rng, 32, 4, 0.6))
    assert estimate.rates() == pytest.approx([0.6] * 4, abs=0.05)
    assert estimate.expected_tokens(4) == pytest.approx((1 - 0.6**5) / (1 - 0.6), rel=0.05)
    assert estimate.expected_tokens(0) == 1.0
    for _ in range(1500):  # the actor drifts
        estimate.observe(geometric_record(rng, 32, 4, 0.85))
    assert estimate.rates() == pytest.approx([0.85] * 4, abs=0.05)


def test_acceptance_extrapolates_to_positions_never_drafted():
    estimate = AcceptanceEstimate(max_k=4, decay=0.9, prior=0.7)
    for _ in range(50):
        estimate.observe(StepRecord(4, 1, [1, 0, 0, 0], 0.0, 0.0))
    beta_1 = estimate.rates()[0]
    drafted = 4 * (1 - 0.9**50) / (1 - 0.9)  # decayed count of rows that drafted position 1
    assert beta_1 == pytest.approx((drafted / 4 + 2.0 * 0.7) / (drafted + 2.0))  # 2 pseudo-drafts at the prior
    assert estimate.rates()[1:] == pytest.approx([beta_1] * 3)
    estimate.observe(StepRecord(4, 0, [0, 0, 0, 0], 0.0, 0.0))  # a plain step is no evidence
    assert estimate.rates()[0] == beta_1


# ---------------------------------------------------------------- engine


def test_engine_with_controller_keeps_greedy_output_and_turns_sd_off_where_it_loses():
    """Synthetic costs: memory-bound up to 4 tokens, so batch 4 loses at any acceptance, batch 1 wins."""
    target = tiny_llama(seed=5)
    profile = synthetic_profile(lambda tokens: max(0.01, tokens * 0.01 / 4), draft_ratio=0.01)
    config = ControllerConfig(max_k=3, candidates=(0, 1, 2, 3), probe_interval=4, calibration_decay=0.0)
    controller = AdaptiveController(profile, config)  # no calibration: the synthetic costs are the truth here
    engine = SpeculativeEngine(target, self_draft(target, 1), controller)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    for prompts in ([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], [[11, 12, 13]], [[14, 15], [16]]):
        out = engine.generate(prompts, params)
        assert out.token_ids == SpeculativeEngine(target).generate(prompts, params).token_ids
        assert all(step.k == 0 for step in out.stats.steps if step.batch_size >= 4)
        small = [step.k for step in out.stats.steps if step.batch_size < 4]
        assert not small or small[0] > 0  # where SD wins the prior starts it
    assert controller.acceptance.drafted[0] > 0  # the controller saw the engine's steps


class _Recorder(FixedK):
    """FixedK that keeps every step record the engine feeds it."""

    def __init__(self, k: int):
        super().__init__(k)
        self.records: list[StepRecord] = []

    def observe(self, record: StepRecord) -> None:
        self.records.append(record)


def test_engine_marks_the_rows_with_the_fewest_tokens_as_lagging():
    target = tiny_llama(seed=4)
    policy = _Recorder(3)
    engine = SpeculativeEngine(target, self_draft(target, 1), policy)
    cap = 20
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12]]
    engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=cap))
    lengths = [1] * 5  # the prefill emits each row's first token; no stop tokens, so rows end at the cap
    uneven = 0
    for record in policy.records:
        assert record.lagging == [n == min(lengths) for n in lengths]
        uneven += not all(record.lagging)
        grown = [n + a + 1 for n, a in zip(lengths, record.num_accepted)]
        lengths = [n for n in grown if n < cap]
    assert uneven > 0  # rows did drift apart, so the marks were tested on a real straggler


def test_engine_times_whole_steps_and_feeds_the_calibration():
    target = tiny_llama(seed=3)
    profile = synthetic_profile(lambda tokens: max(0.01, tokens * 0.01 / 4), draft_ratio=0.01)
    controller = AdaptiveController(profile, ControllerConfig(max_k=2, candidates=(0, 1, 2), probe_interval=2))
    engine = SpeculativeEngine(target, self_draft(target, 1), controller)
    out = engine.generate([[1, 2, 3], [4, 5]] * 3, SamplingParams(temperature=0.0, max_new_tokens=24))
    steps = out.stats.steps
    assert steps and all(s.step_time_s >= s.draft_time_s + s.target_time_s > 0 for s in steps)
    assert out.stats.step_time_s == pytest.approx(sum(s.step_time_s for s in steps))
    assert controller.calibration.log_ratio  # the measured times reached the controller


def test_rows_leaving_the_batch_are_not_charged_to_the_step(monkeypatch):
    """Dropping finished rows copies the caches whatever k is; the step's time, which the controller
    calibrates on, must not include it (else the k in use when rows finish would look dear)."""
    import time as time_module

    from respec_verl.speculation import engine as engine_module

    drop = engine_module._Run._drop_finished

    def slow_drop(self, keep):
        if len(keep) < len(self.alive):
            time_module.sleep(1.0)
        drop(self, keep)

    monkeypatch.setattr(engine_module._Run, "_drop_finished", slow_drop)
    target = tiny_llama(seed=6)
    out = SpeculativeEngine(target).generate([[1, 2, 3], [4, 5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=6))
    assert len(out.token_ids[0]) == 6 and all(s.step_time_s < 1.0 for s in out.stats.steps)


def observe_steps(cal: StepTimeCalibration, k: int, ratio: float, batch_size: int, n: int) -> None:
    """`n` engine steps at k and `batch_size` that took `ratio` times their profiled 1 s."""
    for _ in range(n):
        cal.observe(k, ratio, 1.0, batch_size=batch_size)


def test_a_plain_ratio_borrowed_from_batch_1_does_not_keep_speculation_on_at_batch_16():
    """bench/controller.py at batch 16 (docs/notebook/controller.md 2g): plain measured 1.25x its profile at
    batch 1 only, k = 3 measured as profiled at batch 16; the borrowed plain ratio must not make
    plain look 25% dearer there than the speculative steps measured in that bucket say."""
    cal = StepTimeCalibration(decay=0.5)
    observe_steps(cal, 0, 1.25, 1, 4)  # the first step at each k is warm-up, and is skipped
    assert cal.ratio(0, 16) == pytest.approx(1.25)  # no evidence at batch 16 yet: the shared ratio
    observe_steps(cal, 3, 0.96, 16, 4)
    assert cal.ratio(0, 16) == pytest.approx(0.96, rel=0.01)  # capped at the bucket's measured k = 3
    assert cal.ratio(0, 1) == pytest.approx(1.25)  # batch 1's own plain cell is kept
    assert cal.ratio(0, 4) == pytest.approx(1.25)  # a bucket with no speculative evidence: the shared one
    observe_steps(cal, 0, 1.0, 16, 2)
    assert cal.ratio(0, 16) == pytest.approx(1.0)  # measured plain steps at batch 16 override the cap
    slower = StepTimeCalibration(decay=0.5)  # every step 30% slower: the cap changes nothing
    for b in (1, 16):
        for k in (0, 3):
            observe_steps(slower, k, 1.3, b, 3)
    assert slower.ratio(0, 16) == pytest.approx(1.3) and slower.ratio(0, 8) == pytest.approx(1.3)


def test_the_controller_leaves_speculation_once_its_steps_are_measured_where_plain_was_borrowed():
    """The scenario of docs/notebook/controller.md 2g on a synthetic profile: plain decoding measured only at batch
    1 (the steps the length cap cuts to k = 0), 1.25x dearer than profiled there; speculation costs
    what the profile says. At a batch where speculation loses on the true costs but wins against the
    inflated plain ratio, the controller must turn it off once its steps there are measured; before
    the cap it never measured plain there and speculated to the end."""
    profile = synthetic_profile(roofline)
    config = ControllerConfig(prior_acceptance=0.7, probe_interval=0)
    controller = AdaptiveController(profile, config)
    truth = AdaptiveController(profile, dataclasses.replace(config, calibration_decay=0.0))  # the profile is exact
    rng = random.Random(0)

    def step(b: int, k: int) -> None:
        record = timed_record(rng, profile, b, k, 1.25 if b == 1 else 1.0, 1.0)
        controller.observe(record)
        truth.observe(record)  # the same acceptance evidence

    for _ in range(6):  # at batch 1: speculative steps as profiled, and plain ones 1.25x their profile
        for k in (2, 2, 0):
            step(1, k)
    batch = max(b for b in range(2, 65) if truth.best_k(b) == 0 and controller.best_k(b) > 0)
    ks = []
    for _ in range(20):
        ks.append(controller.choose_k(batch))
        step(batch, ks[-1])
    assert ks[0] > 0  # on the borrowed plain ratio it speculates at first...
    assert ks[-1] == 0 == truth.best_k(batch)  # ...and turns it off on its own measured steps, as it should


def test_a_speculative_ratio_borrowed_into_a_bucket_is_at_least_its_measured_plain_ratio():
    """docs/notebook/controller.md 2g at batch 64: k = 3 measured at 0.75 of its profile at batch 2 only, plain at
    1.1x at batch 64; the borrowed 0.75 must not make speculation look cheap at batch 64."""
    cal = StepTimeCalibration(decay=0.5)
    observe_steps(cal, 3, 0.75, 2, 4)  # the first step at each k is warm-up, and is skipped
    assert cal.ratio(3, 64) == pytest.approx(0.75)  # nothing measured at batch 64 yet: the shared ratio
    observe_steps(cal, 0, 1.1, 64, 3)
    assert cal.ratio(3, 64) == pytest.approx(1.1)  # floored at the bucket's measured plain ratio
    assert cal.ratio(2, 64) == pytest.approx(1.1)  # an unmeasured k borrows, and is floored alike
    assert cal.ratio(3, 2) == pytest.approx(0.75)  # batch 2's own cell is kept
    assert cal.ratio(3, 8) == pytest.approx(0.75)  # a bucket with no plain evidence: the shared one
    observe_steps(cal, 3, 0.9, 64, 2)
    assert cal.ratio(3, 64) == pytest.approx(0.9)  # measured speculative steps at batch 64 override the floor


def test_cells_learnt_at_different_machine_speeds_stay_comparable():
    """k = 1 costs 1.3x its profile and plain 1.0x; then the whole machine slows by 1.4 while only plain
    runs. Kept per cell, plain's ratio would take all of the slowdown and k = 1's none, so k = 1
    would look cheaper than plain (1.3 / 1.4); net of the drift it stays the dearer of the two."""
    cal = StepTimeCalibration(decay=0.8)
    for k, ratio in ((1, 1.3), (0, 1.0), (1, 1.3), (0, 1.0)):
        observe_steps(cal, k, ratio, 16, 6)  # each k's first step, and k = 1's after plain, are skipped
    assert cal.ratio(1, 16) / cal.ratio(0, 16) == pytest.approx(1.3)
    observe_steps(cal, 0, 1.4, 16, 40)  # then the machine 1.4x slower, seen only on the plain steps it runs
    assert cal.ratio(0, 16) == pytest.approx(1.4, rel=0.01)  # the step it runs is predicted as measured
    assert cal.ratio(1, 16) > 1.3 * 1.2  # most of the slowdown carried over to the k it does not run
    assert 1.1 < cal.ratio(1, 16) / cal.ratio(0, 16) <= 1.3
    observe_steps(cal, 1, 1.3 * 1.4, 16, 6)  # k = 1 measured again at the slow speed: it learns the rest
    assert cal.ratio(1, 16) / cal.ratio(0, 16) == pytest.approx(1.3, rel=0.05)
    restored = StepTimeCalibration(decay=0.8)
    restored.load_state_dict(json.loads(json.dumps(cal.state_dict())))
    assert restored.drift == cal.drift != 0.0 and restored.ratio(1, 16) == cal.ratio(1, 16)
    assert restored.state_dict() == cal.state_dict()  # drift, cells and their ages


def test_a_machine_wide_slowdown_during_plain_steps_does_not_switch_speculation_on():
    profile = synthetic_profile(roofline)
    config = ControllerConfig(prior_acceptance=0.7, probe_interval=0)
    truth = AdaptiveController(profile, dataclasses.replace(config, calibration_decay=0.0))

    def margin(b: int) -> float:  # how much dearer plain may look before speculation wins
        return truth.score(b, 0) / max(truth.score(b, k) for k in range(1, 5))

    batch = next(b for b in range(64, 0, -1) if 1.15 < margin(b) < 1.35)
    best = max(range(1, 5), key=lambda k: truth.score(batch, k))
    controller = AdaptiveController(profile, config)
    rng = random.Random(0)
    for k in (best,) * 6 + (0,) * 6:  # both measured as profiled at this batch size
        controller.observe(timed_record(rng, profile, batch, k, 1.0, 1.0))
    assert controller.best_k(batch) == 0
    for _ in range(40):  # then every step 1.4x slower, plain decoding the only one running
        controller.observe(timed_record(rng, profile, batch, 0, 1.4, 1.4))
    assert controller.best_k(batch) == 0
