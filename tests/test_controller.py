"""The adaptive speculation controller: profile, acceptance estimate, decision, schedule, state."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from respec_verl.drafter import self_draft
from respec_verl.spec import (
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
    profile_step_costs,
)
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
    config = ControllerConfig(max_k=1, prior_acceptance=0.5)
    controller = AdaptiveController(threshold_profile(), config)
    assert (controller.best_k(15), controller.best_k(17)) == (1, 0)  # really a threshold
    assert count_switches([controller.choose_k(b) for b in sizes]) == 0

    no_margin = AdaptiveController(threshold_profile(), ControllerConfig(max_k=1, prior_acceptance=0.5, hysteresis=0.0))
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


def test_probe_after_a_plain_streak_only_where_speculation_could_win():
    profile = synthetic_profile(roofline, draft_ratio=0.3)  # k=1 needs acceptance > 0.3 at batch 1
    controller = AdaptiveController(profile, ControllerConfig(probe_interval=5))
    for _ in range(100):  # acceptance collapses: plain decoding
        controller.observe(StepRecord(1, 4, [0], 0.0, 0.0))
    for _ in range(5):
        assert controller.choose_k(1) == 0
        controller.observe(StepRecord(1, 0, [0], 0.0, 0.0))
    assert controller.choose_k(1) == 1  # one probe at the smallest k
    assert controller.current_k == 0
    for _ in range(10):  # batch 64 loses even at perfect acceptance: never probed
        assert controller.choose_k(64) == 0
        controller.observe(StepRecord(64, 0, [0] * 64, 0.0, 0.0))


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
