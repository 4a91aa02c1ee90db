"""What the drafter update adds to an RL step: async, sync and no update, in interleaved runs.

The demo's RL job (`respec-verl demo`: verl's `main_ppo`, our GRPO recipe, SmolLM2-135M-Instruct,
speculative vLLM rollouts with the warmed-up self-draft) runs once per mode and round:

- async: the drafter update overlapped with the actor update (`evolution.overlap=actor_update`,
  the default on an accelerator and, until 2026-12-06, on a CPU; `compute_dtype: auto`, bfloat16
  on a CPU with bf16 instructions);
- async-fp32: the same with `evolution.compute_dtype=float32` (the default before 2026-12-04);
- default: the recipe's settings as they are (`overlap: auto`, "none" on a CPU);
- rollout: `evolution.overlap=rollout`, started after the actor update and run on through the
  weight sync and the next rollout;
- serial: `evolution.overlap=none`, the async update's labels, trained right after the actor update;
- sync: `actor_rollout_ref.respec.evolution.async_update=false`, after it, on the updated actor's labels;
- off: `actor_rollout_ref.respec.evolution.interval=0`, never updated (speculation still on);
- alternate: `evolution.interval=2`, one long run whose drafter updates at every other step (the
  recipe's overlap; `--override` sets another, for example `evolution.overlap=actor_update`).

Runs of different modes start minutes apart on a machine whose speed drifts by 10-25% over that
time, so many rounds are needed to resolve a few percent. `alternate` compares within one run
instead: each step that updated the drafter against the mean of its two neighbours, which did not
(a steady trend over the run cancels), over every such step of a long run (`within_run_overhead`).
The labels are taken and buffered at every step in both kinds of step, so their cost, logged at
each step as `respec/drafter/label_time_s`, is added on; the estimate is for the default
`interval=1`, where every step pays both.

Rounds alternate the order (async, sync, off, then off, sync, async, ...), so a machine that
drifts over the half hour the runs take weighs on every mode alike; single runs of this job
spread by several seconds per step. Every run reuses the first run's warmed-up drafter and
step-cost profile. Reports,
per mode, the mean step time over steps 2..N (step 1 pays vLLM's warm-up) and its phases
(`timing_s/update_actor`, `update_weights`, `gen`), and the overhead of each mode over "off",
overall and per round. Writes JSON.

    python -m bench.update_overhead --steps 6 --rounds 2 --out bench/results/update_overhead.json
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from bench.common import pyplot, save_result, script_parser
from respec_verl.demo.run import DemoJob, run_job

EVOLUTION = "actor_rollout_ref.respec.evolution"
MODES = {
    "async": [f"{EVOLUTION}.overlap=actor_update"],
    "async-fp32": [f"{EVOLUTION}.overlap=actor_update", f"{EVOLUTION}.compute_dtype=float32"],
    "default": [],
    "rollout": [f"{EVOLUTION}.overlap=rollout"],
    "serial": [f"{EVOLUTION}.overlap=none"],
    "sync": [f"{EVOLUTION}.async_update=false"],
    "off": [f"{EVOLUTION}.interval=0"],
    "alternate": [f"{EVOLUTION}.interval=2"],
}
PROFILE = Path("checkpoints/respec/step_costs.json")  # the controller's, measured at a run's start
PHASES = ("timing_s/step", "timing_s/update_actor", "timing_s/update_weights", "timing_s/gen", "timing_s/old_log_prob")
VERSION, LABEL_TIME = "respec/drafter/version", "respec/drafter/label_time_s"


def run_order(modes: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, mode) in the order they run: each round reverses the one before."""
    return [(r, m) for r in range(rounds) for m in (modes if r % 2 == 0 else modes[::-1])]


def reuse_setup(source: Path, folder: Path) -> None:
    """Give `folder` the drafter and the step-cost profile of `source`: the same in every run, measured once."""
    for part in (Path("warm_drafter"), PROFILE):
        if (source / part).exists() and not (folder / part).exists():
            (folder / part).parent.mkdir(parents=True, exist_ok=True)
            if (source / part).is_dir():
                shutil.copytree(source / part, folder / part)
            else:
                shutil.copy2(source / part, folder / part)


def phase_means(metrics: dict[int, dict[str, float]], first: int, last: int) -> dict[str, float]:
    """Mean of each phase over steps first..last (steps that logged it)."""
    out = {}
    for phase in PHASES:
        values = [metrics[s][phase] for s in range(first, last + 1) if phase in metrics.get(s, {})]
        out[phase] = statistics.fmean(values) if values else float("nan")
    return out


def within_run_overhead(metrics: dict[int, dict[str, float]], first: int = 2) -> dict:
    """The drafter update's cost within one run whose drafter updated at some steps and not at others.

    An update step is one whose drafter version rose over the step before. Each update step whose
    two neighbours (from `first` on) did not update gives one sample per phase: its time minus the
    mean of its neighbours', so a trend that is steady over three steps cancels. The step overhead
    of a sample is that difference plus the labels' cost (paid at every step, so absent from the
    difference) over the neighbours' step time less the labels' cost (a step with no drafter work).
    Returns per-phase mean differences, the overhead's mean, standard error and a one-sided 95%
    upper bound (Student's t), and the samples. `overhead_ex_gen` is the same without the
    rollout's difference: the update does no work in the rollout, whose time follows the longest
    answer (the noisiest phase) and the drafter's age, which alternates here too (an update step's
    rollout ran on the drafter of two steps back, a neighbour's on the one of one step back), so
    this is the update's own cost, less noisy; `overhead` keeps everything.
    """
    from scipy import stats

    steps = sorted(s for s in metrics if s >= first and VERSION in metrics[s] and "timing_s/step" in metrics[s])
    updated = {s for s in steps if s - 1 in metrics and VERSION in metrics[s - 1]
               and metrics[s][VERSION] > metrics[s - 1][VERSION]}
    samples = []
    for s in steps:
        if s not in updated or s - 1 not in steps or s + 1 not in steps or {s - 1, s + 1} & updated:
            continue
        near = (metrics[s - 1], metrics[s + 1])
        diff = {p: metrics[s][p] - (near[0][p] + near[1][p]) / 2 for p in PHASES if all(p in m for m in (metrics[s], *near))}
        label_s = statistics.fmean(m.get(LABEL_TIME, 0.0) for m in (metrics[s], *near))
        plain_step = (near[0]["timing_s/step"] + near[1]["timing_s/step"]) / 2 - label_s
        sample = {"step": s, "diff_s": diff, "label_s": label_s,
                  "overhead": (diff["timing_s/step"] + label_s) / plain_step}
        if "timing_s/gen" in diff:
            sample["overhead_ex_gen"] = (diff["timing_s/step"] - diff["timing_s/gen"] + label_s) / plain_step
        samples.append(sample)
    out: dict = {"update_steps": sorted(updated), "samples": samples, "n": len(samples)}
    if len(samples) >= 2:
        t95 = float(stats.t.ppf(0.95, len(samples) - 1))
        for name in ("overhead", "overhead_ex_gen"):
            values = [x[name] for x in samples if name in x]
            if len(values) == len(samples):
                mean, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
                out.update({f"{name}_mean": mean, f"{name}_se": se, f"{name}_upper95": mean + t95 * se})
        out.update(diff_mean_s={p: statistics.fmean(x["diff_s"][p] for x in samples if p in x["diff_s"]) for p in PHASES
                                if any(p in x["diff_s"] for x in samples)},
                   label_mean_s=statistics.fmean(x["label_s"] for x in samples))
    return out


def plot_within_run(run: dict, path: Path) -> None:
    """Step times of an alternate run, the update steps marked, and each sample's overhead beside the 5% bar."""
    from respec_verl.demo.report import save_figure

    within = run["within_run"]
    steps = {int(s): t for s, t in run["step_s"].items() if t is not None and int(s) >= 2}
    updated = set(within["update_steps"])
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    for mark, label, chosen in (("o", "drafter update", True), ("x", "no update", False)):
        xs = [s for s in sorted(steps) if (s in updated) == chosen]
        left.plot(xs, [steps[s] for s in xs], mark, label=label)
    left.set(xlabel="RL step", ylabel="step time (s)", title="step time, update every other step")
    left.legend()
    samples = within["samples"]
    right.bar([x["step"] for x in samples], [100 * x["overhead"] for x in samples], color="tab:blue")
    if "overhead_mean" in within:
        right.axhline(100 * within["overhead_mean"], color="k", label=f"mean {100 * within['overhead_mean']:+.1f}%")
        right.axhline(100 * within["overhead_upper95"], color="k", ls=":",
                      label=f"95% upper bound {100 * within['overhead_upper95']:+.1f}%")
    right.axhline(5.0, color="tab:red", ls="--", label="bar: 5%")
    right.set(xlabel="update step", ylabel="overhead (%)", title="update step vs its neighbours, plus the labels")
    right.legend(fontsize=8)
    save_figure(fig, path)


def within_text(within: dict) -> str:
    if "overhead_mean" not in within:
        return f"too few update steps with non-update neighbours ({within['n']}) for a within-run overhead"
    diff = within["diff_mean_s"]
    ex_gen = ""
    if "overhead_ex_gen_mean" in within:
        ex_gen = (f" (without the rollout's difference {100 * within['overhead_ex_gen_mean']:+.1f}% +- "
                  f"{100 * within['overhead_ex_gen_se']:.1f}, bound {100 * within['overhead_ex_gen_upper95']:+.1f}%)")
    return (f"the drafter update adds {100 * within['overhead_mean']:+.1f}% +- {100 * within['overhead_se']:.1f} (SE) "
            f"to the step, one-sided 95% upper bound {100 * within['overhead_upper95']:+.1f}%{ex_gen}, over {within['n']} update "
            f"steps against their neighbours (update_actor {diff.get('timing_s/update_actor', math.nan):+.2f} s, "
            f"update_weights {diff.get('timing_s/update_weights', math.nan):+.2f} s, gen {diff.get('timing_s/gen', math.nan):+.2f} s; "
            f"labels {within['label_mean_s']:.2f} s at every step)")


def summarise(runs: list[dict], modes: list[str], baseline: str = "off") -> dict:
    """Per mode: mean phases over its runs; overhead of its step time over the baseline's, overall and per round."""
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in modes}
    means = {m: {p: statistics.fmean(r["phases"][p] for r in rs) for p in PHASES} for m, rs in by_mode.items() if rs}
    out = {"mean": means}
    if baseline in means:
        base = means[baseline]["timing_s/step"]
        out["overhead"] = {m: means[m]["timing_s/step"] / base - 1 for m in means if m != baseline}
        per_round = {}
        for m in means:
            if m == baseline:
                continue
            per_round[m] = []
            for r in sorted({run["round"] for run in runs}):
                this = [x for x in by_mode[m] if x["round"] == r]
                ref = [x for x in by_mode[baseline] if x["round"] == r]
                if this and ref:
                    per_round[m].append(this[0]["phases"]["timing_s/step"] / ref[0]["phases"]["timing_s/step"] - 1)
        out["overhead_per_round"] = per_round
    within = {f"{r['mode']}_{r['round']}": r["within_run"] for r in runs if "within_run" in r}
    if within:
        out["within_run"] = within
    return out


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="async,sync,off", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="respec_overhead_runs")
    parser.add_argument("--out", default="bench/results/update_overhead.json")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a verl key for every run, after the mode's (repeatable), e.g. "
                             "actor_rollout_ref.respec.evolution.overlap=actor_update with --modes alternate")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: {', '.join(unknown) or 'none given'}; allowed: {', '.join(MODES)}")
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be >= 2 (step 1 is left out) and --rounds >= 1")
    bad = [o for o in args.override if "=" not in o]
    if bad:
        parser.error(f"--override takes KEY=VALUE, got {', '.join(bad)}")
    if "alternate" in modes and args.steps < 5:
        parser.error("--steps must be >= 5 with the alternate mode (its first sample is step 4 against steps 3 and 5)")

    work = Path(args.work).resolve()
    job = DemoJob(model=args.model, steps=args.steps, seed=args.seed)
    first: Path | None = None  # the first run's folder: its warmed-up drafter and step-cost profile
    runs = []
    for r, mode in run_order(modes, args.rounds):
        folder = work / f"{mode}_{r}"
        if first is not None:
            reuse_setup(first, folder)
        overrides = (*MODES[mode], *args.override)
        print(f"[round {r}, {mode}] {args.steps} GRPO steps, overrides {list(overrides)}", flush=True)
        result = run_job(replace(job, overrides=overrides), folder, progress=not args.no_progress)
        first = first or folder
        phases = phase_means(result.metrics, 2, args.steps)
        runs.append({"round": r, "mode": mode, "phases": phases,
                     "step_s": {s: m.get("timing_s/step") for s, m in sorted(result.metrics.items())}})
        if mode == "alternate":
            runs[-1]["within_run"] = within_run_overhead(result.metrics)
            print(f"[round {r}, {mode}] {within_text(runs[-1]['within_run'])}", flush=True)
        print(f"[round {r}, {mode}] mean step {phases['timing_s/step']:.1f} s, update_actor "
              f"{phases['timing_s/update_actor']:.1f} s, update_weights {phases['timing_s/update_weights']:.2f} s",
              flush=True)
        save_result(args.out, {"args": vars(args), "runs": runs, **summarise(runs, modes)})  # so far

    summary = summarise(runs, modes)
    print(f"\nmeans over {args.rounds} round(s), steps 2-{args.steps}:")
    print(f"{'mode':>6} " + " ".join(f"{p.split('/')[-1]:>14}" for p in PHASES))
    for mode, phases in summary["mean"].items():
        print(f"{mode:>6} " + " ".join(f"{phases[p]:14.2f}" for p in PHASES))
    for mode, value in summary.get("overhead", {}).items():
        rounds = ", ".join(f"{100 * v:+.1f}%" for v in summary["overhead_per_round"][mode])
        print(f"{mode} adds {100 * value:+.1f}% to the step time over no update (per round: {rounds})")
    for name, within in summary.get("within_run", {}).items():
        print(f"{name}: {within_text(within)}")
    alternate = [run for run in runs if "within_run" in run]
    save_result(args.out, {"args": vars(args), "runs": runs, **summary},
                (lambda _, png: plot_within_run(alternate[0], png)) if alternate else None)


if __name__ == "__main__":
    main(sys.argv[1:])
