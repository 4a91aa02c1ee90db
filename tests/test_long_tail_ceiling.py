"""`bench.long_tail_ceiling`: the bound on the whole rollout and what the tail would need (the runs are the benchmark)."""

from __future__ import annotations

import math

import pytest

from bench import long_tail_ceiling as ceiling


def test_the_bound_is_amdahl_s_law():
    # half the time in the tail, the tail twice as fast: 0.5 + 0.25 of the time is left
    assert ceiling.whole_rollout_bound(0.5, 2.0) == pytest.approx(1 / 0.75)
    assert ceiling.whole_rollout_bound(0.0, 10.0) == pytest.approx(1.0)
    assert ceiling.whole_rollout_bound(1.0, 1.3) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="tail_share"):
        ceiling.whole_rollout_bound(1.2, 2.0)


def test_the_tail_speedup_needed_inverts_the_bound():
    needed = ceiling.tail_speedup_needed(0.8, 1.5)
    assert ceiling.whole_rollout_bound(0.8, needed) == pytest.approx(1.5)
    # with half the time outside the tail, even an instant tail gives only 2x: 1.5x needs 3x there
    assert ceiling.tail_speedup_needed(0.5, 1.5) == pytest.approx(3.0)
    # the rest alone takes more than 1/1.5 of the time: no tail speed-up is enough
    assert ceiling.tail_speedup_needed(0.3, 1.5) == math.inf


def test_the_tail_share_counts_steps_with_few_rows_live_against_the_whole_wall_time():
    steps = [(64, 0), (64, 0), (9, 0), (8, 0), (4, 2)]
    times = [1.0, 1.0, 0.5, 0.5, 1.0]
    # 1.5 s of steps at <= 8 rows live, of 5.0 s of wall time (1 s of it prefill, outside any step)
    assert ceiling.share_with_few_live(steps, times, wall_s=5.0, live=8) == pytest.approx(0.3)
    assert ceiling.share_with_few_live(steps, times, wall_s=5.0, live=4) == pytest.approx(0.2)
