"""`bench.controller_resolution`: the held-out best static k and the spread arithmetic."""

from __future__ import annotations

import pytest

from bench import controller_resolution as resolution


def _runs(**tokens_per_s):
    return {name.replace("k", "k=") if name.startswith("k") else name: {"tokens_per_s_runs": v}
            for name, v in tokens_per_s.items()}


def test_the_best_static_k_is_chosen_on_the_other_rounds():
    # k=2 wins by median only through one lucky round: against it the controller looks 5% slow
    runs = _runs(controller=[10.0, 10.0, 10.0], k1=[10.0, 10.0, 10.0], k2=[9.0, 11.0, 10.5])
    assert resolution.held_out_ratios(runs) == pytest.approx([10 / 9, 1.0, 1.0])
    result = {"by_batch_size": [{"batch_size": 4, "runs": runs, "controller_over_best_static": 10 / 10.5}]}
    row = resolution.analyse(result)[0]
    assert row["held_out"] == pytest.approx(1.0) and row["rounds"] == 3
    assert row["per_round"] == pytest.approx([10 / 9, 1.0, 1.0]) and row["min"] == pytest.approx(1.0)


def test_spread_and_rounds_needed():
    out = resolution.resolution([0.9, 1.0, 1.1])
    assert out["sd_log"] == pytest.approx(0.10038, abs=1e-4)  # the sample sd of log 0.9, log 1, log 1.1
    assert out["rounds_for_2pct"] == 26  # (0.10038 / 0.02) ** 2 = 25.2 rounds
    assert (out["min"], out["max"], out["held_out"]) == (0.9, 1.1, 1.0)


def test_one_round_cannot_hold_one_out():
    with pytest.raises(ValueError, match="two rounds"):
        resolution.held_out_ratios(_runs(controller=[10.0], k1=[9.0]))
