"""`bench/update_overhead.py`: the run order and the overhead arithmetic (the runs themselves are the benchmark)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "update_overhead", Path(__file__).resolve().parent.parent / "bench" / "update_overhead.py"
)
overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overhead)


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
