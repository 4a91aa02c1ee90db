"""What the drafter update adds to an RL step: async, sync and no update, in interleaved runs.

The demo's RL job (`respec-verl demo`: verl's `main_ppo`, our GRPO recipe, SmolLM2-135M-Instruct,
speculative vLLM rollouts with the warmed-up self-draft) runs once per mode and round:

- async: the drafter update overlapped with the actor update (the default: `evolution.overlap`
  `actor_update`, `compute_dtype: auto`, bfloat16 on a CPU with bf16 instructions);
- async-fp32: the same with `evolution.compute_dtype=float32` (the default before 2026-12-04);
- rollout: `evolution.overlap=rollout`, started after the actor update and run on through the
  weight sync and the next rollout;
- serial: `evolution.overlap=none`, the async update's labels, trained right after the actor update;
- sync: `actor_rollout_ref.respec.evolution.async_update=false`, after it, on the updated actor's labels;
- off: `actor_rollout_ref.respec.evolution.interval=0`, never updated (speculation still on).

Rounds alternate the order (async, sync, off, then off, sync, async, ...), so a machine that
drifts over the half hour the runs take weighs on every mode alike; single runs of this job
spread by several seconds per step. Every run reuses the first run's warmed-up drafter and
step-cost profile. Reports,
per mode, the mean step time over steps 2..N (step 1 pays vLLM's warm-up) and its phases
(`timing_s/update_actor`, `update_weights`, `gen`), and the overhead of each mode over "off",
overall and per round. Writes JSON.

    python bench/update_overhead.py --steps 6 --rounds 2 --out bench/results/update_overhead.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from respec_verl.demo import DemoJob, run_job
from respec_verl.json_file import write_json_atomic

EVOLUTION = "actor_rollout_ref.respec.evolution"
MODES = {
    "async": [],
    "async-fp32": [f"{EVOLUTION}.compute_dtype=float32"],
    "rollout": [f"{EVOLUTION}.overlap=rollout"],
    "serial": [f"{EVOLUTION}.overlap=none"],
    "sync": [f"{EVOLUTION}.async_update=false"],
    "off": [f"{EVOLUTION}.interval=0"],
}
PROFILE = Path("checkpoints/respec/step_costs.json")  # the controller's, measured at a run's start
PHASES = ("timing_s/step", "timing_s/update_actor", "timing_s/update_weights", "timing_s/gen", "timing_s/old_log_prob")


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
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="async,sync,off", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="respec_overhead_runs")
    parser.add_argument("--out", default="bench/results/update_overhead.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: {', '.join(unknown) or 'none given'}; allowed: {', '.join(MODES)}")
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be >= 2 (step 1 is left out) and --rounds >= 1")

    work = Path(args.work).resolve()
    job = DemoJob(model=args.model, steps=args.steps, seed=args.seed)
    first: Path | None = None  # the first run's folder: its warmed-up drafter and step-cost profile
    runs = []
    for r, mode in run_order(modes, args.rounds):
        folder = work / f"{mode}_{r}"
        if first is not None:
            reuse_setup(first, folder)
        print(f"[round {r}, {mode}] {args.steps} GRPO steps, overrides {MODES[mode]}", flush=True)
        result = run_job(replace(job, overrides=tuple(MODES[mode])), folder, progress=not args.no_progress)
        first = first or folder
        phases = phase_means(result.metrics, 2, args.steps)
        runs.append({"round": r, "mode": mode, "phases": phases,
                     "step_s": {s: m.get("timing_s/step") for s, m in sorted(result.metrics.items())}})
        print(f"[round {r}, {mode}] mean step {phases['timing_s/step']:.1f} s, update_actor "
              f"{phases['timing_s/update_actor']:.1f} s, update_weights {phases['timing_s/update_weights']:.2f} s",
              flush=True)
        write_json_atomic(Path(args.out), {"args": vars(args), "runs": runs, **summarise(runs, modes)})  # so far

    summary = summarise(runs, modes)
    print(f"\nmeans over {args.rounds} round(s), steps 2-{args.steps}:")
    print(f"{'mode':>6} " + " ".join(f"{p.split('/')[-1]:>14}" for p in PHASES))
    for mode, phases in summary["mean"].items():
        print(f"{mode:>6} " + " ".join(f"{phases[p]:14.2f}" for p in PHASES))
    for mode, value in summary.get("overhead", {}).items():
        rounds = ", ".join(f"{100 * v:+.1f}%" for v in summary["overhead_per_round"][mode])
        print(f"{mode} adds {100 * value:+.1f}% to the step time over no update (per round: {rounds})")
    write_json_atomic(Path(args.out), {"args": vars(args), "runs": runs, **summary})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
