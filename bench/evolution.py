"""Drafter evolution in verl's own GRPO trainer: frozen vs uniform KD vs reward-weighted KD vs oracle.

One real RL run: `respec-verl demo`'s job (verl's `main_ppo`, our GRPO recipe with
`actor_rollout_ref.respec.enable=true`, SmolLM2-135M-Instruct, vLLM rollouts that speculate with
a warmed-up self-draft, the drafter distilled every step under the reward-weighted KD loss,
asynchronously during the actor update) for `--steps` steps, with `respec.record.dir` set, so the
run keeps every drafter update's training data (rollouts, rewards, the actor's labels) and the
actor every `--snapshot-every` steps. Then, offline, on that same actor trajectory:

- frozen: the warm-up drafter, never updated;
- uniform: the warm-up drafter replaying the recorded updates with uniform KD weights (the ablation);
- reward: the same replay with the reward weights, which is the run's own drafter;
- oracle: a fresh self-draft distilled on each snapshot actor's own answers, with the warm-up's recipe;

and each one's acceptance length (k = `--k`, at the rollout temperature, held-out problems) is
measured on each actor snapshot with the core engine. Two short extra runs of the same job measure
the step time with the drafter update synchronous and off, against the first steps of the main
(async) run. Writes JSON and a PNG plot.

    python -m bench.evolution --task long --out bench/results/evolution_long.json   # or: respec-verl bench evolution
"""

from __future__ import annotations

import copy
import shutil
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

from bench.common import fixed_k_rollouts, load_actor, pyplot, save_result, script_parser
from respec_verl.data.tasks import DEFAULT_TASK, TASKS, get_task
from respec_verl.demo.report import RLStep, read_jsonl, save_figure, write_jsonl
from respec_verl.demo.run import TASK_SETTINGS, DemoJob, run_job
from respec_verl.drafter import Drafter, DrafterLearner, LearnerConfig
from respec_verl.drafter.drafter_dir import load_drafter_dir
from respec_verl.drafter.recording import recorded_updates
from respec_verl.speculation import SamplingParams

POLICIES = ("frozen", "uniform", "reward", "oracle")
RECORDS = "finished_run.jsonl"


def run_rl(job: DemoJob, folder: Path, extra: list[str], progress: bool, reuse: bool) -> list[RLStep]:
    """The run's per-step records; with `reuse`, those of an earlier finished run in `folder`."""
    job = replace(job, overrides=(*job.overrides, *extra))
    done = folder / RECORDS
    if reuse and done.exists():
        print(f"[{folder.name}] reusing the finished run's {done}", flush=True)
        return read_jsonl(done)
    print(f"[{folder.name}] {job.steps} GRPO steps in verl, overrides {list(extra)}", flush=True)
    done.unlink(missing_ok=True)
    records = run_job(job, folder, progress=progress).records
    write_jsonl(done, records)  # written last: its presence means the run finished
    return records


def mean_step_s(records: list[RLStep], steps: int) -> float:
    """Mean step time over steps 2..steps (step 1 pays the warm-up), the same steps in every run."""
    times = [r.step_s for r in records if 2 <= r.step <= steps and r.step_s is not None]
    return statistics.fmean(times) if times else float("nan")


def timing(job: DemoJob, records: list[RLStep], work: Path, args) -> dict[str, float]:
    """Mean step time of the main (async) run's first steps and of two short runs: update synchronous, and off."""
    short = replace(job, steps=args.timing_steps)
    overrides = {"sync": "actor_rollout_ref.respec.evolution.async_update=false",
                 "off": "actor_rollout_ref.respec.evolution.interval=0"}
    times = {"async": mean_step_s(records, args.timing_steps)}
    for name, override in overrides.items():
        run = run_rl(short, work / name, [override], not args.no_progress, args.reuse)
        times[name] = mean_step_s(run, args.timing_steps)
    return times


def replayed_drafters(frozen: Drafter, updates, weighting: str, snapshot_steps: list[int], config: LearnerConfig):
    """The drafter after each snapshot step's updates, replaying the recorded ones in order."""
    learner = DrafterLearner(copy.deepcopy(frozen), replace(config, weighting=weighting, async_update=False))
    by_step, done = {0: learner.latest()}, 0
    for step, (_, rollouts) in enumerate(updates, start=1):
        learner.add_labelled(rollouts)
        learner.update(step)
        done = step
        if step in snapshot_steps:
            by_step[step] = learner.latest()
    return by_step, done, learner.metrics


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--task", choices=list(TASKS), default=DEFAULT_TASK)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--snapshot-every", type=int, default=10)
    parser.add_argument("--timing-steps", type=int, default=5,
                        help="steps of the sync and no-update runs; 0 skips them (bench.update_overhead "
                             "measures the overhead in interleaved runs)")
    parser.add_argument("--lr", type=float, default=DemoJob.lr,
                        help="the actor's learning rate; a higher one moves the actor further from the frozen drafter")
    parser.add_argument("--drafter-steps", type=int, default=LearnerConfig.steps_per_update,
                        help="optimizer steps per drafter update (evolution.steps_per_update), "
                             "in the run and the replays")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--k", type=int, default=4, help="draft length of the acceptance measurement")
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=128,
                        help="answer tokens of the acceptance measurement (at most the task's cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="respec_evolution_runs", help="folder for the runs and their records")
    parser.add_argument("--out", default=None, help="JSON (default bench/results/evolution_<task>.json); PNG beside it")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the RL runs already finished in --work (same settings) and redo only the offline part")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from respec_verl.drafter.warm_folder import stop_token_ids, write_warm_self_draft
    from respec_verl.models.smollm2 import encode_chat
    from respec_verl.verl_glue.launch import resolve_model

    work = Path(args.work).resolve()
    if args.timing_steps < 0:
        parser.error(f"--timing-steps = {args.timing_steps} is not valid; allowed: an integer >= 0")
    if args.lr <= 0:
        parser.error(f"--lr = {args.lr} is not valid; allowed: a number > 0")
    if args.drafter_steps < 1:
        parser.error(f"--drafter-steps = {args.drafter_steps} is not valid; allowed: an integer >= 1")
    job = DemoJob(model=args.model, task=args.task, steps=args.steps, seed=args.seed, lr=args.lr,
                  overrides=(f"actor_rollout_ref.respec.evolution.steps_per_update={args.drafter_steps}",))
    record = work / "evolving" / "record"
    if not (args.reuse and (work / "evolving" / RECORDS).exists()):
        shutil.rmtree(record, ignore_errors=True)  # an earlier run's snapshots would mix in
    records = run_rl(job, work / "evolving", [f"actor_rollout_ref.respec.record.dir={record}",
                                              f"actor_rollout_ref.respec.record.actor_every={args.snapshot_every}"],
                     not args.no_progress, args.reuse)
    step_time = timing(job, records, work, args) if args.timing_steps else {}

    # offline: every policy on every actor snapshot of the evolving run
    warm_dir = work / "evolving" / "warm_drafter"
    if not (warm_dir / "config.json").exists():  # no warm-up (a tiny smoke run): the drafter cut at start
        warm_dir = work / "evolving" / "checkpoints" / "respec" / "self_draft"
    frozen = load_drafter_dir(warm_dir)
    updates = recorded_updates(record / "updates")
    snapshot_steps = sorted(int(p.name.rsplit("_", 1)[1]) for p in record.glob("actor_step_*"))
    learner_config = LearnerConfig(seed=job.seed, temperature=job.temperature, steps_per_update=args.drafter_steps)
    drafters = {"frozen": {}}
    drafters["reward"], replayed, reward_metrics = replayed_drafters(frozen, updates, "reward", snapshot_steps, learner_config)
    drafters["uniform"], _, _ = replayed_drafters(frozen, updates, "uniform", snapshot_steps, learner_config)
    base_actor = resolve_model(args.model, work / "evolving")
    tokenizer = AutoTokenizer.from_pretrained(base_actor)
    task = get_task(args.task)
    prompts = [encode_chat(tokenizer, q) for q, _, _ in task.questions(args.eval_prompts, seed=args.seed + 20_000)]
    warm_up = TASK_SETTINGS[args.task]
    questions = [q for q, _, _ in task.questions(warm_up.warmup_questions, seed=job.seed + 10_000)]  # the warm-up's
    evaluation = []
    for step in [0, *snapshot_steps]:
        actor_dir = base_actor if step == 0 else record / f"actor_step_{step}"
        actor = load_actor(actor_dir)
        params = SamplingParams(temperature=job.temperature, max_new_tokens=min(args.eval_tokens, job.response_length),
                                stop_token_ids=stop_token_ids(tokenizer, actor))
        oracle_dir, _ = write_warm_self_draft(
            actor_dir, work / "oracle" / f"step_{step}", questions, steps=job.warmup_steps,
            max_new_tokens=warm_up.warmup_tokens, temperature=job.temperature, draft_vocab_size=job.draft_vocab_size,
            seed=job.seed,
        )
        row = {"step": step}
        for name, drafter in (("frozen", frozen), ("uniform", drafters["uniform"].get(step, frozen)),
                              ("reward", drafters["reward"].get(step, frozen)), ("oracle", load_drafter_dir(oracle_dir))):
            row[name] = fixed_k_rollouts(actor, drafter, prompts, params, args.k).stats.mean_accept_length
        evaluation.append(row)
        print(f"actor after {step:3d} updates: " + ", ".join(f"{n} {row[n]:.2f}" for n in POLICIES), flush=True)

    last = evaluation[-1]
    in_run_loss = [r.drafter_loss for r in records if r.drafter_loss is not None]
    result = {
        "args": vars(args),
        "job": {**asdict(job), "overrides": list(job.overrides)},
        "history": [r.to_json() for r in records],
        "evaluation": evaluation,
        "step_time_s": step_time,
        "reward_over_frozen": last["reward"] / last["frozen"],
        "reward_over_oracle": last["reward"] / last["oracle"],
        "async_overhead": step_time["async"] / step_time["off"] - 1 if step_time else None,
        "sync_overhead": step_time["sync"] / step_time["off"] - 1 if step_time else None,
        "replay": {"updates_recorded": len(updates), "updates_replayed": replayed,
                   "last_replayed_loss": reward_metrics.get("respec/drafter/loss"),
                   "last_in_run_loss": in_run_loss[-1] if in_run_loss else None},
    }
    out = Path(args.out or f"bench/results/evolution_{args.task}.json")
    print(f"after {last['step']} steps: reward-weighted / frozen = {result['reward_over_frozen']:.2f}, "
          f"/ oracle = {result['reward_over_oracle']:.2f}")
    if step_time:
        print(f"step time async {step_time['async']:.1f} s, sync {step_time['sync']:.1f} s, no update "
              f"{step_time['off']:.1f} s (async adds {100 * result['async_overhead']:.0f}%, sync "
              f"{100 * result['sync_overhead']:.0f}%)")
    save_result(out, result, plot)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    timed = bool(result["step_time_s"])
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4.2))
    left, mid = axes[0], axes[1]
    steps = [r["step"] for r in result["evaluation"]]
    for name in POLICIES:
        left.plot(steps, [r[name] for r in result["evaluation"]], marker="o", label=name)
    left.set(xlabel="actor after N updates", ylabel="acceptance length", title="Drafter policies on each actor snapshot")
    left.legend()
    hist = result["history"]
    mid.plot([h["step"] for h in hist], [h["reward"] for h in hist], label="mean reward")
    mid.plot([h["step"] for h in hist], [h["accept_length"] for h in hist], label="rollout acceptance length (vLLM)")
    mid.set(xlabel="RL step", title="The verl run (reward-weighted drafter in the loop)")
    mid.legend()
    if timed:
        right = axes[2]
        right.bar(list(result["step_time_s"]), list(result["step_time_s"].values()))
        right.set(ylabel="seconds per RL step", title="Drafter update: async / sync / off")
    save_figure(fig, path)


if __name__ == "__main__":
    main(sys.argv[1:])
