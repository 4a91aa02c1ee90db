"""The adaptive speculation controller: profile, acceptance estimate, decision, probe, schedule, state."""

from __future__ import annotations

import json
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
    build_k_policy,
)
from respec_verl.speculation import engine_profile as engine_profile_module
from respec_verl.speculation.engine_profile import engine_step_times, profile_engine_steps
from respec_verl.speculation.forward_profile import profile_step_costs
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


def test_probe_after_a_plain_streak_only_where_speculation_could_win():
    profile = synthetic_profile(roofline, draft_ratio=0.3)  # k=1 needs acceptance > 0.3 at batch 1
    controller = AdaptiveController(profile, ControllerConfig(probe_interval=5))
    for _ in range(100):  # acceptance collapses: plain decoding
        controller.observe(StepRecord(1, 4, [0], 0.0, 0.0))
    for _ in range(5):
        assert controller.choose_k(1) == 0
        controller.observe(StepRecord(1, 0, [0], 0.0, 0.0))
    assert controller.choose_k(1) == 1  # probing at the smallest k
    controller.observe(StepRecord(1, 1, [0], 0.0, 0.0))  # rejected again
    assert controller.choose_k(1) == 0
    for _ in range(10):  # batch 64 loses even at perfect acceptance: never probed
        assert controller.choose_k(64) == 0
        controller.observe(StepRecord(64, 0, [0] * 64, 0.0, 0.0))


def test_probes_bring_speculation_back_once_drafts_are_accepted_again():
    """A collapsed estimate recovers through the probes alone when the drafter gets good again."""
    profile = synthetic_profile(roofline, draft_ratio=0.3)
    controller = AdaptiveController(profile, ControllerConfig(probe_interval=8))
    for _ in range(100):
        controller.observe(StepRecord(2, 4, [0, 0], 0.0, 0.0))
    assert controller.best_k(2) == 0
    without = AdaptiveController(profile, ControllerConfig(probe_interval=0))
    without.load_state_dict(controller.state_dict())
    for policy in (controller, without):
        for _ in range(200):
            k = policy.choose_k(2)
            policy.observe(StepRecord(2, k, [k, k], 0.0, 0.0))  # every draft accepted now
    assert controller.choose_k(2) > 0
    assert without.choose_k(2) == 0  # without probes a plain run never learns it


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
    assert controller.schedule(1) == [(1, 1, controller.best_k(1))]
    with pytest.raises(ValueError, match="max_batch_size"):
        controller.schedule(0)


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


def test_a_state_saved_with_the_removed_mechanisms_still_loads():
    """Checkpoints written before the calibration and straggler model were removed resume."""
    controller = AdaptiveController(synthetic_profile(roofline))
    controller.observe(StepRecord(2, 2, [1, 2], 0.0, 0.0))
    old = {**controller.state_dict(), "calibration": {"log_ratio": {"1": 0.1}}, "stragglers": {},
           "current_k": 2, "probe_left": 0}
    restored = AdaptiveController.from_state_dict(json.loads(json.dumps(old)))
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
        ("min_gain", -0.1, "[0, 10)"),
        ("ema_decay", 1.0, "[0, 1)"),
        ("ema_decay", "0.9", "[0, 1)"),
        ("prior_acceptance", -0.1, "[0, 1]"),
        ("prior_strength", 0, "> 0"),
        ("probe_interval", -3, "integer >= 0"),
    ],
)
def test_config_errors_name_key_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        ControllerConfig(**{field: value})
    message = str(info.value)
    assert f"actor_rollout_ref.respec.controller.{field} = {value!r}" in message
    assert allowed in message


def test_removed_keys_are_not_accepted():
    with pytest.raises(TypeError, match="calibration_decay"):
        ControllerConfig(calibration_decay=0.8)


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


def test_monotone_grid_is_ordered_both_ways_and_keeps_an_ordered_grid():
    rng = random.Random(1)
    truth = [[0.1 * (b + 1) + 0.05 * k * (b + 1) for k in range(5)] for b in range(7)]
    for _ in range(20):
        fitted = monotone_grid([[t * rng.uniform(0.7, 1.3) for t in row] for row in truth])
        assert all(a <= b + 1e-12 for row in fitted for a, b in zip(row, row[1:]))
        assert all(fitted[i][j] <= fitted[i + 1][j] + 1e-12 for i in range(6) for j in range(5))
    flat = [t for row in truth for t in row]
    assert [t for row in monotone_grid(truth) for t in row] == pytest.approx(flat)  # an ordered grid is its own fit


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


def test_offline_bare_forward_profile_is_complete_and_runs_without_autograd():
    """Both profilers run under inference mode: forwards that record a graph time more than the engine runs."""
    target = tiny_llama(layers=2, hidden=32)
    drafter = self_draft(target, 1)
    modes = []
    target.register_forward_hook(lambda module, args, out: modes.append(torch.is_inference_mode_enabled()))
    profile = profile_step_costs(target, drafter, [1, 2], [1, 2], context_len=[4, 8], repeats=1, progress=False)
    assert profile.missing() == []
    assert len(profile.decode_s) == 4 and len(profile.verify_s) == 8 and len(profile.draft_s) == 8
    assert all(t > 0 for t in [*profile.decode_s.values(), *profile.verify_s.values(), *profile.draft_s.values()])
    assert profile.key.dtype == "float32" and profile.key.device.startswith("cpu")
    assert profile.key.drafter.startswith("LlamaForCausalLM-1L")
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
    controller = AdaptiveController(profile, ControllerConfig(max_k=3, candidates=(0, 1, 2, 3), probe_interval=4))
    engine = SpeculativeEngine(target, self_draft(target, 1), controller)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    for prompts in ([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], [[11, 12, 13]], [[14, 15], [16]]):
        out = engine.generate(prompts, params)
        assert out.token_ids == SpeculativeEngine(target).generate(prompts, params).token_ids
        assert all(step.k == 0 for step in out.stats.steps if step.batch_size >= 4)
        small = [step.k for step in out.stats.steps if step.batch_size < 4]
        assert not small or small[0] > 0  # where SD wins the prior starts it
    assert controller.acceptance.drafted[0] > 0  # the controller saw the engine's steps


def test_engine_times_whole_steps():
    target = tiny_llama(seed=3)
    engine = SpeculativeEngine(target, self_draft(target, 1), FixedK(2))
    out = engine.generate([[1, 2, 3], [4, 5]] * 3, SamplingParams(temperature=0.0, max_new_tokens=24))
    steps = out.stats.steps
    assert steps and all(s.step_time_s >= s.draft_time_s + s.target_time_s > 0 for s in steps)
    assert out.stats.step_time_s == pytest.approx(sum(s.step_time_s for s in steps))


def test_rows_leaving_the_batch_are_not_charged_to_the_step(monkeypatch):
    """Dropping finished rows copies the caches whatever k is; the step's time, which the controller
    profile measures, must not include it (else the k in use when rows finish would look dear)."""
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
