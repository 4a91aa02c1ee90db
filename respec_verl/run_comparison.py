"""Two runs of the same RL job, speculation on and off: how much faster, and did learning change?

Speed: the ratio of the mean rollout time (verl's `timing_s/gen`) and of the mean step time over
the steps after the first (which pays the warm-up), plain over speculative (> 1: SD is faster).

Learning: speculative decoding is lossless, so with the same seed and data order the two reward
curves should differ only by sampling noise. Each step's reward is a mean over `n` 0/1 rewards;
its 95% band is the binomial one, mean ± 1.96 sqrt(p (1 - p) / n). Two tests compare the per-step
mean rewards: Mann-Whitney U (two-sided; the steps of each run as two samples) and the Wilcoxon
signed-rank test paired by step (both runs see the same prompts at the same step). A p-value above
0.05 means the test cannot tell the curves apart at that level; with few steps it has little power,
so read it together with the mean difference and the bands.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from respec_verl.run_report import RLStep, after_warmup, save_figure


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_after_warmup(records: Sequence[RLStep], name: str) -> float | None:
    return _mean([v for v in (getattr(r, name) for r in after_warmup(records)) if v is not None])


def reward_band(reward: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The binomial band of a mean of `n` 0/1 rewards, clipped to [0, 1]."""
    half = z * math.sqrt(max(reward * (1.0 - reward), 0.0) / n)
    return max(0.0, reward - half), min(1.0, reward + half)


def compare_rewards(spec: Sequence[float], plain: Sequence[float]) -> dict:
    """Mann-Whitney U on the two sets of per-step rewards, Wilcoxon signed-rank on the paired steps."""
    from scipy import stats

    out: dict = {
        "steps": min(len(spec), len(plain)),
        "reward_mean_spec": _mean(list(spec)),
        "reward_mean_plain": _mean(list(plain)),
    }
    out["reward_mean_diff"] = (
        out["reward_mean_spec"] - out["reward_mean_plain"] if spec and plain else None
    )
    out["mann_whitney_p"] = float(stats.mannwhitneyu(spec, plain, alternative="two-sided").pvalue) if spec and plain else None
    diffs = [s - p for s, p in zip(spec, plain)]
    if not diffs:
        out["wilcoxon_p"] = None
    elif all(d == 0 for d in diffs):
        out["wilcoxon_p"] = 1.0  # identical curves: no evidence of a difference
    else:
        out["wilcoxon_p"] = float(stats.wilcoxon(diffs, zero_method="zsplit").pvalue)
    tested = [p for p in (out["mann_whitney_p"], out["wilcoxon_p"]) if p is not None]
    out["indistinguishable_at_0.05"] = bool(tested) and min(tested) > 0.05
    return out


def compare_runs(spec: Sequence[RLStep], plain: Sequence[RLStep]) -> dict:
    """Speed ratios (plain / SD, after the first step) and the reward comparison, by step."""
    by_step_plain = {r.step: r for r in plain}
    paired = [(s, by_step_plain[s.step]) for s in spec if s.step in by_step_plain and s.reward is not None
              and by_step_plain[s.step].reward is not None]
    rewards = compare_rewards([s.reward for s, _ in paired], [p.reward for _, p in paired])
    speed = {}
    for name in ("rollout_s", "step_s"):
        on, off = mean_after_warmup(spec, name), mean_after_warmup(plain, name)
        speed[f"{name}_spec"] = on
        speed[f"{name}_plain"] = off
        speed[f"{name}_speedup"] = off / on if on and off else None
    return {**speed, **rewards}


def plot_comparison(spec: Sequence[RLStep], plain: Sequence[RLStep], rollouts_per_step: int, comparison: dict,
                    path: str | os.PathLike, title: str = "") -> Path:
    """Left: both reward curves with their bands and the tests' p-values; right: rollout and step times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (reward_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for records, label, color in ((spec, "SD on", "tab:green"), (plain, "SD off", "tab:blue")):
        points = [(r.step, r.reward) for r in records if r.reward is not None]
        if not points:
            continue
        steps, rewards = zip(*points)
        low, high = zip(*(reward_band(r, rollouts_per_step) for r in rewards))
        reward_ax.plot(steps, rewards, marker="o", color=color, label=label)
        reward_ax.fill_between(steps, low, high, color=color, alpha=0.15)
    p_mw, p_w = comparison.get("mann_whitney_p"), comparison.get("wilcoxon_p")
    note = (f"Mann-Whitney p = {p_mw:.2f}, Wilcoxon (paired) p = {p_w:.2f}"
            if p_mw is not None and p_w is not None else "not enough steps to test")
    reward_ax.set(xlabel="RL step", ylabel=f"mean reward (band: 95%, n = {rollouts_per_step})", ylim=(-0.05, 1.05),
                  title=f"Reward: {note}")
    reward_ax.legend()
    for records, label, color in ((spec, "SD on", "tab:green"), (plain, "SD off", "tab:blue")):
        steps = [r.step for r in records]
        time_ax.plot(steps, [r.rollout_s if r.rollout_s is not None else float("nan") for r in records],
                     marker="o", color=color, label=f"rollout, {label}")
        time_ax.plot(steps, [r.step_s if r.step_s is not None else float("nan") for r in records],
                     marker="s", linestyle="--", color=color, label=f"whole step, {label}")
    speedup = comparison.get("rollout_s_speedup")
    time_ax.set(xlabel="RL step", ylabel="seconds",
                title="Time per step" + (f": rollout time SD off / SD on = {speedup:.2f}x" if speedup else ""))
    time_ax.legend()
    return save_figure(fig, path, title)


def format_table(comparison: dict, spec_summary: dict, plain_summary: dict) -> str:
    """The benchmark's table (Markdown)."""

    def f(value, spec=".2f"):
        return "-" if value is None else format(value, spec)

    rows = [
        ("rollout time per step (s)", f(comparison["rollout_s_spec"], ".1f"), f(comparison["rollout_s_plain"], ".1f"),
         f(comparison["rollout_s_speedup"]) + "x"),
        ("step time (s)", f(comparison["step_s_spec"], ".1f"), f(comparison["step_s_plain"], ".1f"),
         f(comparison["step_s_speedup"]) + "x"),
        ("mean reward", f(comparison["reward_mean_spec"]), f(comparison["reward_mean_plain"]),
         f"diff {f(comparison['reward_mean_diff'], '+.3f')}"),
        ("acceptance length", f(spec_summary.get("accept_length_last")), "-", ""),
        ("drafter version (last)", f(spec_summary.get("drafter_version_last"), ".0f"), "-", ""),
        ("run wall time (min)", f(spec_summary["wall_s"] / 60, ".1f"), f(plain_summary["wall_s"] / 60, ".1f"), ""),
        ("peak memory (GiB, host)", f(spec_summary["peak_host_used_gib"], ".1f"),
         f(plain_summary["peak_host_used_gib"], ".1f"), ""),
    ]
    lines = ["| | SD on | SD off | SD off / SD on |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append(
        f"\nrewards: Mann-Whitney p = {f(comparison['mann_whitney_p'], '.3f')}, Wilcoxon signed-rank (paired by step) "
        f"p = {f(comparison['wilcoxon_p'], '.3f')} over {comparison['steps']} steps; "
        + ("the tests cannot tell the curves apart at 0.05" if comparison["indistinguishable_at_0.05"]
           else "a test finds a difference at 0.05")
    )
    return "\n".join(lines)
