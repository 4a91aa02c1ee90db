"""End to end: the demo's RL job (verl GRPO, vLLM rollouts) with speculation on and off, same seed.

The two runs go one after the other on the same machine, each with its own folder under --work:
`respec-verl demo`'s job (`respec_verl.demo.DemoJob`) with `actor_rollout_ref.respec.enable=true`,
then with `false`. Reports the rollout-time and step-time ratios (mean over the steps after the
first, which pays the warm-up), and compares the reward curves (per-step binomial bands,
Mann-Whitney U and the paired Wilcoxon test; `respec_verl/run_comparison.py`). Writes JSON and a
PNG plot, and prints the table.

    python bench/e2e.py --steps 6 --out bench/results/e2e.json     # or: respec-verl bench e2e ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from respec_verl.demo import DEFAULT_STEPS, DemoJob, run_job, write_outputs
from respec_verl.json_file import write_json_atomic
from respec_verl.run_comparison import compare_runs, format_table, plot_comparison


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny or a Hugging Face model folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=None, help="GPU host: GPUs per node (untested here)")
    parser.add_argument("--work", default="respec_e2e_runs", help="folder for the two runs (logs, data, metrics)")
    parser.add_argument("--out", default="bench/results/e2e.json", help="JSON result; the plot goes beside it (.png)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for both runs (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    runs, summaries = {}, {}
    for name, spec in (("spec", True), ("plain", False)):
        job = DemoJob(model=args.model, steps=args.steps, seed=args.seed, spec=spec, gpus=args.gpus,
                      overrides=tuple(args.override))
        folder = Path(args.work) / name
        print(f"[{name}] {args.steps} GRPO steps, speculation {'on' if spec else 'off'}, in {folder}", flush=True)
        runs[name] = run_job(job, folder, progress=not args.no_progress)
        summaries[name] = write_outputs(folder.resolve(), job, runs[name])
        rollouts_per_step = job.prompts_per_step * job.group

    comparison = compare_runs(runs["spec"].records, runs["plain"].records)
    out = Path(args.out)
    result = {
        "args": vars(args),
        "comparison": comparison,
        "summaries": summaries,
        "steps": {name: [r.to_json() for r in run.records] for name, run in runs.items()},
    }
    write_json_atomic(out, result)
    plot_comparison(runs["spec"].records, runs["plain"].records, rollouts_per_step, comparison, out.with_suffix(".png"),
                    title=f"GRPO on {args.model}, {args.steps} steps, seed {args.seed}: speculation on vs off")
    print(format_table(comparison, summaries["spec"], summaries["plain"]))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
