"""End to end: the demo's RL job (verl GRPO, vLLM rollouts) with speculation on and off, over seeds.

For each seed, two runs of `respec-verl demo`'s job (`respec_verl.demo.run.DemoJob`) go one after the
other on the same machine, each in its own folder under --work: `actor_rollout_ref.respec.enable=true`
and `false`, from the same seed (same prompts and data order). The order alternates between seeds
(on, off; off, on; ...) so that a drift of the machine's speed does not favour one side. Reports, per
seed and as mean ± sd over the seeds: the rollout-time and step-time ratios (means over the steps
after the first, which pays the warm-up), and the rollout's share of the step with speculation off
and on; and compares the reward curves over every (seed, step) pair (Mann-Whitney U and the paired
Wilcoxon test; `respec_verl/demo/comparison.py`). Writes JSON and a PNG plot, and prints the table.

    python -m bench.e2e --task long --seeds 0,1,2 --out bench/results/e2e_long.json
    respec-verl bench e2e --task add --seeds 0 --steps 8 --out bench/results/e2e.json

`--report-only` runs nothing: it rebuilds the comparison from the runs that finished under --work
(each run folder's metrics.jsonl and summary.json), e.g. after an interrupted benchmark; seeds
without both runs are left out, and the JSON says which seeds it holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import save_result, script_parser
from respec_verl.data.tasks import DEFAULT_TASK, TASKS
from respec_verl.demo.comparison import compare_seeds, format_seeds_table, plot_seeds
from respec_verl.demo.report import read_jsonl
from respec_verl.demo.run import DEFAULT_STEPS, DemoJob, run_job, write_outputs
from respec_verl.verl_glue.launch import DTYPE_CHOICES


def seeds_arg(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds = {text!r} is not valid; allowed: distinct integers, e.g. 0,1,2")
    return seeds


def run_order(index: int) -> tuple[tuple[str, bool], ...]:
    """SD on first for even-numbered seeds, off first for odd ones."""
    pair = (("spec", True), ("plain", False))
    return pair if index % 2 == 0 else pair[::-1]


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--task", choices=list(TASKS), default=DEFAULT_TASK)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny or a Hugging Face model folder")
    parser.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="CPU runs: auto follows the CPU's bf16 flags")
    parser.add_argument("--gpus", type=int, default=None, help="GPU host: GPUs per node (untested here)")
    parser.add_argument("--work", default="respec_e2e_runs", help="folder for the runs (logs, data, metrics)")
    parser.add_argument("--out", default=None, help="JSON result (default bench/results/e2e_<task>.json); PNG beside it")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every run (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="run nothing; compare the finished runs under --work")
    args = parser.parse_args(argv)
    out = Path(args.out or f"bench/results/e2e_{args.task}.json")
    if args.report_only:
        records, summaries = finished_runs(Path(args.work), args.seeds)
        if not records:
            parser.error(f"--report-only: no seed of {args.seeds} has both runs finished under --work {args.work}")
        dtype = next(iter(summaries.values()))["job"]["dtype"]
        report(args, records, summaries, out, dtype)
        return

    records, summaries = {}, {}
    for index, seed in enumerate(args.seeds):
        runs = {}
        for name, spec in run_order(index):
            job = DemoJob(model=args.model, task=args.task, dtype=args.dtype, steps=args.steps, seed=seed, spec=spec,
                          gpus=args.gpus, overrides=tuple(args.override))
            folder = Path(args.work) / f"seed{seed}" / name
            print(f"[seed {seed}, {name}] {args.steps} GRPO steps of task {args.task}, speculation "
                  f"{'on' if spec else 'off'}, {job.dtype}, in {folder}", flush=True)
            runs[name] = run_job(job, folder, progress=not args.no_progress)
            summaries[f"seed{seed}/{name}"] = write_outputs(folder.resolve(), job, runs[name])
        records[seed] = (runs["spec"].records, runs["plain"].records)
    report(args, records, summaries, out, job.dtype)


def finished_runs(work: Path, seeds: list[int]) -> tuple[dict, dict]:
    """(records, summaries) of the seeds whose two runs both wrote metrics.jsonl and summary.json."""
    records, summaries = {}, {}
    for seed in seeds:
        folders = {name: work / f"seed{seed}" / name for name in ("spec", "plain")}
        if not all((f / "metrics.jsonl").exists() and (f / "summary.json").exists() for f in folders.values()):
            print(f"seed {seed}: not both runs finished under {work}; left out", file=sys.stderr)
            continue
        for name, folder in folders.items():
            summaries[f"seed{seed}/{name}"] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        records[seed] = (read_jsonl(folders["spec"] / "metrics.jsonl"), read_jsonl(folders["plain"] / "metrics.jsonl"))
    return records, summaries


def report(args: argparse.Namespace, records: dict, summaries: dict, out: Path, dtype: str) -> None:
    """Compare, write the JSON and the PNG, print the table."""
    comparison = compare_seeds(records)
    result = {
        "args": {**vars(args), "dtype": dtype, "seeds_reported": sorted(records)},
        "comparison": comparison,
        "summaries": summaries,
        "steps": {str(seed): {"spec": [r.to_json() for r in spec], "plain": [r.to_json() for r in plain]}
                  for seed, (spec, plain) in records.items()},
    }
    title = f"GRPO on {args.model}, task {args.task}, {args.steps} steps, seeds {sorted(records)}: SD on vs off"
    print(format_seeds_table(comparison))
    save_result(out, result, lambda _, png: plot_seeds(records, comparison, png, title=title))


if __name__ == "__main__":
    main(sys.argv[1:])
