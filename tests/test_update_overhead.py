"""`bench.update_overhead`: the run order and the overhead arithmetic (the runs themselves are the benchmark)."""

from __future__ import annotations

import math
import statistics

import pytest

from bench import update_overhead as overhead


def test_rounds_alternate_the_order_of_the_modes():
    order = overhead.run_order(["async", "sync", "off"], 3)
    assert order == [(0, "async"), (0, "sync"), (0, "off"), (1, "off"), (1, "sync"), (1, "async"),
                     (2, "async"), (2, "sync"), (2, "off")]


def _run(round_: int, mode: str, step_s: float) -> dict:
    phases = {p: float("nan") for p in overhead.PHASES}
    phases["timing_s/step"] = step_s
    return {"round": round_, "mode": mode, "phases": phases}


def test_overhead_is_against_the_mean_of_the_runs_without_update_and_per_round():
    runs = [_run(0, "async", 33.0), _run(0, "off", 30.0), _run(1, "off", 32.0), _run(1, "async", 32.0)]
    summary = overhead.summarise(runs, ["async", "off"])
    assert summary["mean"]["async"]["timing_s/step"] == pytest.approx(32.5)
    assert summary["overhead"]["async"] == pytest.approx(32.5 / 31.0 - 1)
    assert summary["overhead_per_round"]["async"] == pytest.approx([0.1, 0.0])


def test_phase_means_leave_out_step_one_and_unlogged_phases():
    metrics = {1: {"timing_s/step": 99.0}, 2: {"timing_s/step": 30.0, "timing_s/gen": 4.0}, 3: {"timing_s/step": 34.0}}
    means = overhead.phase_means(metrics, 2, 3)
    assert means["timing_s/step"] == 32.0 and means["timing_s/gen"] == 4.0
    assert math.isnan(means["timing_s/update_actor"])


def test_later_runs_reuse_the_first_runs_drafter_and_profile(tmp_path):
    first, later = tmp_path / "async_0", tmp_path / "off_0"
    (first / "warm_drafter").mkdir(parents=True)
    (first / "warm_drafter" / "config.json").write_text("{}")
    (first / overhead.PROFILE).parent.mkdir(parents=True)
    (first / overhead.PROFILE).write_text('{"key": 1}')
    overhead.reuse_setup(first, later)
    assert (later / "warm_drafter" / "config.json").read_text() == "{}"
    assert (later / overhead.PROFILE).read_text() == '{"key": 1}'
    (later / overhead.PROFILE).write_text("kept")
    overhead.reuse_setup(first, later)  # what a folder has already stays
    assert (later / overhead.PROFILE).read_text() == "kept"


def _alternating_run(steps: int, update_cost: float, label_s: float, noise=None) -> dict[int, dict[str, float]]:
    """A run whose drafter updates at even steps, costing `update_cost` s, on a step time that falls 0.5 s a step."""
    metrics, version = {}, 1.0
    for s in range(1, steps + 1):
        if s % 2 == 0:
            version += 1
        step = 30.0 - 0.5 * s + (update_cost if s % 2 == 0 else 0.0) + (noise[s] if noise else 0.0)
        gen = 4.0 + (noise[s] if noise else 0.0)  # the rollout carries the noise
        metrics[s] = {"timing_s/step": step, "timing_s/update_actor": step - 10.0, "timing_s/gen": gen,
                      overhead.VERSION: version, overhead.LABEL_TIME: label_s}
    return metrics


def test_within_run_overhead_cancels_a_steady_trend_and_adds_the_labels():
    within = overhead.within_run_overhead(_alternating_run(9, update_cost=2.0, label_s=0.3))
    assert within["update_steps"] == [2, 4, 6, 8]
    # step 2's neighbour, step 1, is the warm-up: left out
    assert [x["step"] for x in within["samples"]] == [4, 6, 8]
    for x in within["samples"]:
        assert x["diff_s"]["timing_s/step"] == pytest.approx(2.0)  # the -0.5 s/step trend cancels
        neighbours = 30.0 - 0.5 * x["step"]  # the mean of steps s-1 and s+1 on the trend
        assert x["overhead"] == pytest.approx((2.0 + 0.3) / (neighbours - 0.3))
    assert within["overhead_se"] > 0 and within["overhead_upper95"] > within["overhead_mean"]
    assert within["diff_mean_s"]["timing_s/update_actor"] == pytest.approx(2.0)


def test_within_run_overhead_needs_non_update_neighbours_on_both_sides():
    metrics = _alternating_run(8, update_cost=1.0, label_s=0.0)
    assert [x["step"] for x in overhead.within_run_overhead(metrics)["samples"]] == [4, 6]  # 8 has no step 9
    every_step = {s: {**m, overhead.VERSION: float(s)} for s, m in metrics.items()}  # interval 1: all neighbours updated
    within = overhead.within_run_overhead(every_step)
    assert within["n"] == 0 and "overhead_mean" not in within
    assert "too few" in overhead.within_text(within)


def test_within_run_overhead_has_the_spread_of_its_samples():
    noise = {s: (0.8 if s % 4 == 0 else -0.8) if s % 2 == 0 else 0.0 for s in range(1, 22)}
    within = overhead.within_run_overhead(_alternating_run(21, update_cost=1.0, label_s=0.0, noise=noise))
    diffs = [x["diff_s"]["timing_s/step"] for x in within["samples"]]
    assert sorted(set(round(d, 6) for d in diffs)) == [0.2, 1.8]
    for x in within["samples"]:  # the rollout's noise is all there is: without it the cost is exact
        neighbours = 30.0 - 0.5 * x["step"]
        assert x["overhead_ex_gen"] == pytest.approx(1.0 / neighbours)
    assert within["overhead_ex_gen_se"] < within["overhead_se"] / 5  # what is left is the trend in the ratio
    assert within["overhead_se"] == pytest.approx(statistics.stdev(x["overhead"] for x in within["samples"])
                                                  / math.sqrt(within["n"]))


def test_the_alternate_run_is_plotted(tmp_path):
    metrics = _alternating_run(9, update_cost=2.0, label_s=0.3)
    run = {"step_s": {str(s): m["timing_s/step"] for s, m in metrics.items()},
           "within_run": overhead.within_run_overhead(metrics)}
    overhead.plot_within_run(run, tmp_path / "overhead.png")
    assert (tmp_path / "overhead.png").stat().st_size > 10_000
