"""What an RL run with respec did, step by step: records, a summary and a plot from verl's metrics.

verl logs one line of metrics per training step (`launch.parse_step_metrics` reads them). A
`RLStep` keeps the figures a user looks at: the reward, the acceptance of the speculative
rollouts, the k the controller chose per batch size, the drafter's version and loss, and the
rollout and step times. `summarize` condenses a run, `plot_run` draws it. The demo
(`respec-verl demo`) and the end-to-end benchmark (`bench/e2e.py`) both use them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# verl's metric name (or ours, under respec/) for each record field
METRIC_NAMES = {
    "reward": "critic/score/mean",
    "accept_length": "rollout/spec_accept_length",
    "accept_rate": "rollout/spec_accept_rate",
    "k_mean": "respec/controller/k_mean",
    "plain_fraction": "respec/controller/plain_fraction",
    "drafter_version": "respec/drafter/version",
    "drafter_loss": "respec/drafter/loss",
    "rollout_s": "timing_s/gen",
    "step_s": "timing_s/step",
    "response_length": "response_length/mean",
    "response_length_max": "response_length/max",
    "rollout_probs_diff": "training/rollout_probs_diff_mean",
}
K_AT_BATCH = "respec/controller/k_at_batch_"


@dataclass
class RLStep:
    """One RL step. Fields are None where the run did not log them (e.g. acceptance without SD).

    `accept_length` and `accept_rate` are verl's per-rollout means (1 + accepted / verify steps, and
    accepted / drafted), with 0 for a rollout the controller never let speculate. `k_at_batch` maps a
    live batch size to the mean k the controller chose at it, over the engine steps of the run so
    far (cumulative, as the controller reports it).
    """

    step: int
    reward: float | None = None
    accept_length: float | None = None
    accept_rate: float | None = None
    k_mean: float | None = None
    plain_fraction: float | None = None
    k_at_batch: dict[int, float] = field(default_factory=dict)
    drafter_version: float | None = None
    drafter_loss: float | None = None
    rollout_s: float | None = None
    step_s: float | None = None
    response_length: float | None = None
    response_length_max: float | None = None
    rollout_probs_diff: float | None = None

    @classmethod
    def from_metrics(cls, step: int, metrics: Mapping[str, float]) -> "RLStep":
        values = {name: _finite(metrics.get(key)) for name, key in METRIC_NAMES.items()}
        k_at_batch = {
            int(key[len(K_AT_BATCH) :]): float(v)
            for key, v in metrics.items()
            if key.startswith(K_AT_BATCH) and key[len(K_AT_BATCH) :].isdigit() and _finite(v) is not None
        }
        return cls(step=step, k_at_batch=dict(sorted(k_at_batch.items())), **values)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["k_at_batch"] = {str(b): k for b, k in self.k_at_batch.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping) -> "RLStep":
        doc = dict(doc)
        doc["k_at_batch"] = {int(b): float(k) for b, k in doc.get("k_at_batch", {}).items()}
        return cls(**doc)


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def records_from_metrics(metrics: Mapping[int, Mapping[str, float]]) -> list[RLStep]:
    """verl's {step: {name: value}} as records, in step order."""
    return [RLStep.from_metrics(step, metrics[step]) for step in sorted(metrics)]


def non_finite_metrics(metrics: Mapping[int, Mapping[str, float]]) -> list[str]:
    """"step N: name" for every NaN or infinite value verl logged (a sign of a broken run)."""
    return [
        f"step {step}: {name}"
        for step in sorted(metrics)
        for name, value in metrics[step].items()
        if not math.isfinite(value)
    ]


def write_jsonl(path: str | os.PathLike, records: Sequence[RLStep]) -> None:
    """One JSON object per step (missing values are null, so every line is valid JSON)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json(), allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[RLStep]:
    with open(path, encoding="utf-8") as f:
        return [RLStep.from_json(json.loads(line)) for line in f if line.strip()]


def _values(records: Sequence[RLStep], name: str) -> list[float]:
    return [v for v in (getattr(r, name) for r in records) if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def after_warmup(records: Sequence[RLStep]) -> list[RLStep]:
    """The steps after the first (the first pays vLLM's and the trainer's warm-up); all if only one."""
    return list(records[1:]) if len(records) > 1 else list(records)


def summarize(records: Sequence[RLStep], window: int | None = None) -> dict:
    """The run in a few numbers: reward and acceptance at the start and the end, drafter, k, times.

    "first"/"last" are means over the first/last `window` steps (default: 3, at most half the run);
    times are means over the steps after the first.
    """
    window = window or min(3, max(1, len(records) // 2))
    head, tail = list(records[:window]), list(records[-window:])
    versions = _values(records, "drafter_version")
    losses = _values(records, "drafter_loss")
    last_k = next((r.k_at_batch for r in reversed(records) if r.k_at_batch), {})
    return {
        "steps": len(records),
        "reward_first": _mean(_values(head, "reward")),
        "reward_last": _mean(_values(tail, "reward")),
        "reward_mean": _mean(_values(records, "reward")),
        "accept_length_first": _mean(_values(head, "accept_length")),
        "accept_length_last": _mean(_values(tail, "accept_length")),
        "accept_rate_mean": _mean(_values(records, "accept_rate")),
        "k_mean": next((r.k_mean for r in reversed(records) if r.k_mean is not None), None),
        "k_at_batch": {str(b): k for b, k in last_k.items()},
        "drafter_version_first": versions[0] if versions else None,
        "drafter_version_last": versions[-1] if versions else None,
        "drafter_loss_first": losses[0] if losses else None,
        "drafter_loss_last": losses[-1] if losses else None,
        "rollout_s_mean": _mean(_values(after_warmup(records), "rollout_s")),
        "step_s_mean": _mean(_values(after_warmup(records), "step_s")),
        "rollout_share": rollout_share(records),
        "response_length_mean": _mean(_values(records, "response_length")),
        "response_length_max_mean": _mean(_values(records, "response_length_max")),
        "rollout_probs_diff_max": max(_values(records, "rollout_probs_diff"), default=None),
    }


def rollout_share(records: Sequence[RLStep]) -> float | None:
    """The share of a step that the rollout takes (verl's `timing_s/gen` / `timing_s/step`), mean after step 1."""
    return _mean([r.rollout_s / r.step_s for r in after_warmup(records) if r.rollout_s is not None and r.step_s])


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(summary: Mapping) -> str:
    """A few lines for the terminal."""
    lines = [
        f"reward            {_fmt(summary['reward_first'])} (first steps) -> {_fmt(summary['reward_last'])} (last steps)",
        f"acceptance length {_fmt(summary['accept_length_first'])} -> {_fmt(summary['accept_length_last'])}, rate "
        f"{_fmt(summary['accept_rate_mean'])} (verl's per-rollout means; 0 when a rollout never speculated)",
        f"drafter           version {_fmt(summary['drafter_version_first'], '.0f')} -> "
        f"{_fmt(summary['drafter_version_last'], '.0f')}, KD loss {_fmt(summary['drafter_loss_first'], '.3f')} -> "
        f"{_fmt(summary['drafter_loss_last'], '.3f')}",
        "k per batch size  " + (", ".join(f"B={b}: {k:.1f}" for b, k in summary["k_at_batch"].items()) or "-")
        + f" (mean {_fmt(summary['k_mean'])})",
        f"time per step     rollout {_fmt(summary['rollout_s_mean'], '.1f')} s, whole step "
        f"{_fmt(summary['step_s_mean'], '.1f')} s, rollout share {_fmt(summary.get('rollout_share'))} (mean after step 1)",
        f"answers           {_fmt(summary.get('response_length_mean'), '.0f')} tokens on average, the longest of a "
        f"step {_fmt(summary.get('response_length_max_mean'), '.0f')} (means over the steps)",
        f"lossless check    max |p_rollout - p_trainer| = {_fmt(summary['rollout_probs_diff_max'], '.1e')}",
    ]
    return "\n".join(lines)


def plot_run(records: Sequence[RLStep], path: str | os.PathLike, title: str = "") -> Path:
    """Four panels: reward, acceptance with the drafter version, k per batch size, times. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [r.step for r in records]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    reward_ax, accept_ax, k_ax, time_ax = axes.flat

    def series(name):
        return [getattr(r, name) if getattr(r, name) is not None else float("nan") for r in records]

    reward_ax.plot(steps, series("reward"), marker="o")
    reward_ax.set(xlabel="RL step", ylabel="mean reward", title="Reward (GRPO)", ylim=(-0.05, 1.05))

    if _values(records, "accept_length"):
        accept_ax.plot(steps, series("accept_length"), marker="o", color="tab:green", label="acceptance length")
        accept_ax.set(ylabel="acceptance length (verl: 0 if never speculated)")
        version_ax = accept_ax.twinx()
        version_ax.step(steps, series("drafter_version"), where="post", color="tab:gray", label="drafter version")
        version_ax.set(ylabel="drafter version")
        handles = accept_ax.get_legend_handles_labels()[0] + version_ax.get_legend_handles_labels()[0]
        accept_ax.legend(handles, [h.get_label() for h in handles], loc="lower right")
    else:
        accept_ax.text(0.5, 0.5, "speculation off", ha="center", va="center", transform=accept_ax.transAxes)
    accept_ax.set(xlabel="RL step", title="Speculative rollouts and the evolving drafter")

    last_k = next((r.k_at_batch for r in reversed(records) if r.k_at_batch), {})
    if last_k:
        k_ax.plot(list(last_k), list(last_k.values()), marker="o", color="tab:purple")
        k_ax.set_xscale("log", base=2)
        k_ax.set(xlabel="live batch size (sequences in the engine step)", ylabel="mean k chosen (0 = plain)")
    else:
        k_ax.text(0.5, 0.5, "no controller choices", ha="center", va="center", transform=k_ax.transAxes)
    k_ax.set(title="Adaptive controller: draft length per batch size")

    time_ax.plot(steps, series("step_s"), marker="o", label="whole step")
    time_ax.plot(steps, series("rollout_s"), marker="o", label="rollout (timing_s/gen)")
    time_ax.set(xlabel="RL step", ylabel="seconds", title="Time per step")
    time_ax.legend()
    return save_figure(fig, path, title)


def save_figure(fig, path: Path, title: str | None = None) -> Path:
    """Title, lay out, write (creating the folder) and close a matplotlib figure; returns `path`."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
