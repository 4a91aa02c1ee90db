"""Runs of the same RL job, speculation on and off: how much faster, and did learning change?

Speed: the ratio of the mean rollout time (verl's `timing_s/gen`) and of the mean step time over
the steps after the first (which pays the warm-up), plain over speculative (> 1: SD is faster), per
seed and as mean ± sd over seeds; and the rollout's share of the step.

Learning: speculative decoding is lossless, so with the same seed and data order the two reward
curves should differ only by sampling noise. Two tests compare the per-step mean rewards over all
(seed, step) pairs: Mann-Whitney U (two-sided; the steps of each side as two samples) and the
Wilcoxon signed-rank test paired by (seed, step) (both runs see the same prompts at the same step).
A p-value above 0.05 means the test cannot tell the curves apart at that level; with few steps it
has little power, so read it together with the mean difference.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from respec_verl.demo.report import RLStep, after_warmup, rollout_share, save_figure


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_after_warmup(records: Sequence[RLStep], name: str) -> float | None:
    return _mean([v for v in (getattr(r, name) for r in after_warmup(records)) if v is not None])


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


def paired_rewards(spec: Sequence[RLStep], plain: Sequence[RLStep]) -> tuple[list[float], list[float]]:
    """The two runs' rewards at the steps both logged one, in the SD run's order."""
    by_step = {r.step: r.reward for r in plain if r.reward is not None}
    pairs = [(r.reward, by_step[r.step]) for r in spec if r.reward is not None and r.step in by_step]
    return [s for s, _ in pairs], [p for _, p in pairs]


def compare_runs(spec: Sequence[RLStep], plain: Sequence[RLStep]) -> dict:
    """Speed ratios (plain / SD, after the first step) and the reward comparison, by step."""
    rewards = compare_rewards(*paired_rewards(spec, plain))
    speed = {}
    for name in ("rollout_s", "step_s"):
        on, off = mean_after_warmup(spec, name), mean_after_warmup(plain, name)
        speed[f"{name}_spec"] = on
        speed[f"{name}_plain"] = off
        speed[f"{name}_speedup"] = off / on if on and off else None
    return {**speed, **rewards}


def _spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, min and max of per-seed figures."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": _mean(values), "sd": sd, "min": min(values), "max": max(values), "per_seed": list(values)}


def compare_seeds(runs: Mapping[int, tuple[Sequence[RLStep], Sequence[RLStep]]]) -> dict:
    """SD on vs off over several seeds: each seed's speed ratios and rollout shares with their spread,
    and one reward comparison over every (seed, step) pair (both runs of a seed see the same prompts)."""
    per_seed = {seed: compare_runs(spec, plain) for seed, (spec, plain) in runs.items()}
    spec_rewards, plain_rewards = [], []
    for spec, plain in runs.values():
        on, off = paired_rewards(spec, plain)
        spec_rewards += on
        plain_rewards += off
    out = {"seeds": list(runs), "per_seed": per_seed}
    for name in ("rollout_s_speedup", "step_s_speedup"):
        values = [c[name] for c in per_seed.values() if c[name] is not None]
        out[name] = _spread(values) if values else None
    for label, index in (("rollout_share_spec", 0), ("rollout_share_plain", 1)):
        values = [v for v in (rollout_share(pair[index]) for pair in runs.values()) if v is not None]
        out[label] = _spread(values) if values else None
    out["rewards"] = compare_rewards(spec_rewards, plain_rewards)
    return out


def plot_seeds(runs: Mapping[int, tuple[Sequence[RLStep], Sequence[RLStep]]], comparison: dict,
               path: str | os.PathLike, title: str = "") -> Path:
    """Rewards (each seed thin, the mean over seeds thick), rollout times, and each seed's speed ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (reward_ax, time_ax, ratio_ax) = plt.subplots(1, 3, figsize=(17, 4.8))
    for index, label, color in ((0, "SD on", "tab:green"), (1, "SD off", "tab:blue")):
        by_step: dict[int, list[float]] = {}
        for pair in runs.values():
            records = pair[index]
            points = [(r.step, r.reward) for r in records if r.reward is not None]
            if points:
                reward_ax.plot(*zip(*points), color=color, alpha=0.25, linewidth=1)
            for step, reward in points:
                by_step.setdefault(step, []).append(reward)
            time_ax.plot([r.step for r in records], [r.rollout_s if r.rollout_s is not None else float("nan")
                                                     for r in records], marker="o", color=color, alpha=0.6)
        steps = sorted(by_step)
        reward_ax.plot(steps, [_mean(by_step[s]) for s in steps], marker="o", color=color, linewidth=2.5,
                       label=f"{label} (mean over seeds)")
        time_ax.plot([], [], marker="o", color=color, label=f"rollout, {label} (one line per seed)")
    rewards = comparison["rewards"]
    note = (f"Mann-Whitney p = {rewards['mann_whitney_p']:.2f}, Wilcoxon (paired) p = {rewards['wilcoxon_p']:.2f}"
            if rewards.get("mann_whitney_p") is not None and rewards.get("wilcoxon_p") is not None else "too few steps")
    reward_ax.set(xlabel="RL step", ylabel="mean reward", ylim=(-0.05, 1.05), title=f"Reward: {note}")
    reward_ax.legend()
    time_ax.set(xlabel="RL step", ylabel="seconds", title="Rollout time per step (timing_s/gen)")
    time_ax.legend()
    seeds = [str(s) for s in comparison["seeds"]]
    width = 0.38
    for offset, name, label in ((-width / 2, "rollout_s_speedup", "rollout"), (width / 2, "step_s_speedup", "whole step")):
        values = [comparison["per_seed"][s][name] or float("nan") for s in comparison["seeds"]]
        ratio_ax.bar([i + offset for i in range(len(seeds))], values, width, label=label)
    ratio_ax.axhline(1.0, color="k", linewidth=0.8)
    ratio_ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    ratio_ax.set(ylabel="time SD off / SD on (> 1: SD faster)", title="Speed-up per seed (steps after the first)")
    ratio_ax.legend()
    return save_figure(fig, path, title)


def format_seeds_table(comparison: dict) -> str:
    """The multi-seed benchmark's table (Markdown)."""

    def spread(entry, spec=".2f"):
        if entry is None:
            return "-"
        return (f"{entry['mean']:{spec}} ± {entry['sd']:{spec}} (min {entry['min']:{spec}}, max {entry['max']:{spec}})")

    rewards = comparison["rewards"]
    lines = [
        f"| over seeds {', '.join(map(str, comparison['seeds']))} | mean ± sd (min, max) |",
        "|---|---|",
        f"| rollout time, SD off / SD on | {spread(comparison['rollout_s_speedup'])} |",
        f"| step time, SD off / SD on | {spread(comparison['step_s_speedup'])} |",
        f"| rollout share of the step, SD off | {spread(comparison['rollout_share_plain'])} |",
        f"| rollout share of the step, SD on | {spread(comparison['rollout_share_spec'])} |",
        f"| mean reward, SD on / SD off | {rewards['reward_mean_spec']:.3f} / {rewards['reward_mean_plain']:.3f} |"
        if rewards["reward_mean_spec"] is not None else "| mean reward | - |",
    ]
    p_mw, p_w = rewards["mann_whitney_p"], rewards["wilcoxon_p"]
    lines.append(
        f"\nrewards over {rewards['steps']} (seed, step) pairs: Mann-Whitney p = "
        f"{'-' if p_mw is None else f'{p_mw:.3f}'}, Wilcoxon signed-rank (paired) p = {'-' if p_w is None else f'{p_w:.3f}'}; "
        + ("the tests cannot tell the curves apart at 0.05" if rewards["indistinguishable_at_0.05"]
           else "a test finds a difference at 0.05")
    )
    return "\n".join(lines)
