"""Adaptive controller vs its static per-batch-size schedule vs every static k vs plain decoding, side by side.

SmolLM2-135M-Instruct target, a 2-layer reduced-vocabulary self-draft distilled on the target's
answers to the workload's kinds of prompts (templated questions, and long texts like the long-tail
rollout's stragglers). The step costs are profiled first through the engine loop (`profile_engine_steps`, whole
engine steps per batch size and k); then, for each batch size, the same prompts run under plain
decoding, each static k, the static schedule (`AdaptiveController.schedule()` taken once after
the warm-up and frozen: what vLLM's `num_speculative_tokens_per_batch_size` would run) and the
controller, `--repeats` times in a rotating order (more at the
batch sizes whose runs are short, with `--min-seconds`), and each configuration's median tokens/s
is compared (a single run at a batch size is noisy by several percent, and the best of several
noisy static runs is biased upward); beside it, the median of the ratios within each round, which
cancels the machine's drift between rounds (`paired`). One controller serves every
run, as in a training job, so it carries its acceptance estimate from one batch to the next. Finally one long-tail rollout (64 requests, a few of which run to a long cap while the rest
stop early, as in an RL rollout) runs under the controller, the static schedule, the best static k
and plain decoding:
with `--task long` (the default) the long-answer task's questions at its cap (numbered lists of
5-15 items; the answers that lose count run on to the cap), with `--task add` sums with a few long
stories among them. The drafter is also distilled on the task's answers to other questions.
Writes JSON and a PNG plot.

    python -m bench.controller --out bench/results/controller.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from respec_verl.data.questions import make_long_tail_questions, make_questions
from respec_verl.data.tasks import DEFAULT_TASK, TASKS, get_task
from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
from respec_verl.storage.json_file import write_json_atomic
from respec_verl.models.smollm2 import MODEL_NAME, encode_chat, load_smollm2
from respec_verl.speculation import AdaptiveController, ControllerConfig, FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.engine_profile import profile_engine_steps
from respec_verl.speculation.profile import ProfileKey


class ScheduledK:
    """A frozen per-batch-size table of inclusive (lo, hi, k) ranges: the controller's static baseline."""

    def __init__(self, schedule: list[tuple[int, int, int]]):
        self.schedule = schedule

    def choose_k(self, batch_size: int) -> int:
        return next((k for lo, hi, k in self.schedule if lo <= batch_size <= hi), self.schedule[-1][2])

    def observe(self, record) -> None:
        pass


class TracedController(AdaptiveController):
    """The controller, keeping each decision's scores per candidate k, so a run's choices can be read afterwards."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace: list[dict] = []

    def choose_k(self, batch_size: int) -> int:
        k = super().choose_k(batch_size)
        scores = {str(j): round(self.score(batch_size, j), 2) for j in self.candidates}
        self.trace.append({"batch_size": batch_size, "k": k, "scores": scores})
        return k


def timed(engine: SpeculativeEngine, prompts, params) -> dict:
    trace = getattr(engine.k_policy, "trace", None)
    first = len(trace) if trace is not None else 0
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    wall = time.perf_counter() - start
    decisions = {"decisions": trace[first:]} if trace is not None else {}
    return {
        "tokens_per_s": out.stats.generated_tokens / wall,
        "wall_s": wall,
        "accept_length": out.stats.mean_accept_length,
        "steps": [(s.batch_size, s.k) for s in out.stats.steps],
        "step_times_s": [s.step_time_s for s in out.stats.steps],
        **decisions,
    }


def repeated(engines: dict[str, SpeculativeEngine], prompts, params, repeats: int, min_seconds: float = 0.0,
             max_repeats: int = 30) -> dict[str, dict]:
    """Each engine in rounds, the order rotated every round; per engine the run with the median tokens/s.

    At least `repeats` rounds, more (up to `max_repeats`) until the slowest engine of the first
    round has run about `min_seconds` in all (the others, as many rounds, a little less): a batch
    of one runs for about a second, and a handful of such runs is noisier than the differences
    between ks. The median run is kept whole (its steps and acceptance), with every round's tokens/s
    beside it, in round order.
    """
    names = list(engines)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    rounds, round_ = repeats, 0
    while round_ < rounds:
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            runs[name].append(timed(engines[name], prompts, params))
        if round_ == 0 and min_seconds > 0:
            slowest = max(r[0]["wall_s"] for r in runs.values())
            rounds = max(repeats, min(max_repeats, math.ceil(min_seconds / slowest)))
        round_ += 1
    out = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["tokens_per_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in results)
        median["tokens_per_s_runs"] = [r["tokens_per_s"] for r in results]
        out[name] = median
    return out


def paired_ratio(runs: dict[str, dict], name: str, baseline: str) -> float:
    """Median over rounds of name's tokens/s over baseline's in the same round.

    The rounds run one after the other, and this machine's speed drifts between them by more than
    the differences measured; a ratio within a round cancels the drift that a ratio of medians keeps.
    """
    pairs = zip(runs[name]["tokens_per_s_runs"], runs[baseline]["tokens_per_s_runs"])
    return statistics.median(a / b for a, b in pairs)


def long_tail_questions(task: str, n: int, seed: int, long_fraction: float) -> list[str]:
    """The long-tail rollout's questions: the long task's own, or (add) sums with a `long_fraction` of long texts."""
    if task == "long":
        return [q for q, _, _ in get_task(task).questions(n, seed)]
    return make_long_tail_questions(n, seed=seed, long_fraction=long_fraction)


def tail_share(run: dict, small_batch: int = 8) -> float:
    """Share of a run's step time spent at live batch sizes <= `small_batch` (where speculation can pay)."""
    total = sum(run["step_times_s"])
    small = sum(t for (b, _), t in zip(run["steps"], run["step_times_s"]) if b <= small_batch)
    return small / total if total else 0.0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = [r["batch_size"] for r in result["by_batch_size"]]
    names = [n for n in result["by_batch_size"][0]["runs"] if n != "plain"]
    for name in names:
        ratios = [r["runs"][name]["tokens_per_s"] / r["runs"]["plain"]["tokens_per_s"] for r in result["by_batch_size"]]
        left.plot(sizes, ratios, marker="o", lw=3 if name == "controller" else 1, label=name)
    left.axhline(1.0, color="grey", ls="--")
    left.set(xscale="log", xlabel="batch size", ylabel="tokens/s over plain decoding", title="Fixed batch")
    left.set_xticks(sizes, [str(s) for s in sizes])
    left.legend(fontsize=8)
    tail = result["long_tail"]["runs"]["controller"]["steps"]
    right.plot([b for b, _ in tail], label="live batch size")
    right.plot([k for _, k in tail], label="k chosen")
    right.set(xlabel="engine step", title="Long-tail rollout under the controller", yscale="symlog")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--ks", default="1,2,3,4,6")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--task", choices=list(TASKS), default=DEFAULT_TASK, help="the long-tail rollout's workload")
    parser.add_argument("--tail-new-tokens", type=int, default=None,
                        help="length cap of the long-tail rollout (default: the task's cap for long, 320 for add)")
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--long-fraction", type=float, default=0.0625,
                        help="--task add: share of long-answer requests in the long-tail rollout (0.0625: about 4 "
                             "stragglers of 64)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per configuration and batch size (median kept)")
    parser.add_argument("--profile-rounds", type=int, default=1,
                        help="passes over the profile's grid, the ks' order reversed every other pass "
                             "(median over all)")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="more runs at a batch size until its slowest configuration has run about this long")
    parser.add_argument("--tail-repeats", type=int, default=2, help="runs per configuration of the long-tail rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/controller.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    ks = [int(k) for k in args.ks.split(",")]

    target32, tokenizer = load_smollm2(torch.float32)
    eos = tokenizer.eos_token_id
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop_token_ids=(eos,))
    # the drafter learns the workload it serves, as an RL drafter learns the task's rollouts: the
    # templated questions, and some long texts like the long-tail rollout's stragglers
    train = [encode_chat(tokenizer, q) for q in make_questions(112, seed=args.seed)]
    tail_cap = args.tail_new_tokens or (get_task(args.task).response_length if args.task == "long" else 320)
    long_train = [encode_chat(tokenizer, q) for q in long_tail_questions(args.task, 16, args.seed + 5, 1.0)]
    long_params = SamplingParams(temperature=0.0, max_new_tokens=tail_cap // 2, stop_token_ids=(eos,))
    answers = actor_answers(target32, train, params) + actor_answers(target32, long_train, long_params)
    drafter, _ = warm_up_self_draft(target32, train + long_train, answers, always_tokens=[eos],
                                    steps=args.distill_steps, seed=args.seed)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    target = target32.to(dtype)
    drafter.model.to(dtype)

    prompts = [encode_chat(tokenizer, q) for q in make_questions(max(sizes), seed=args.seed + 1)]
    profile_prompts = [encode_chat(tokenizer, q) for q in make_questions(max(sizes), seed=args.seed + 3)]  # not the timed ones
    profile = profile_engine_steps(target, drafter, sizes, ks, context_len=64, prompts=profile_prompts, steps=10,
                                   rounds=args.profile_rounds,
                                   key=ProfileKey.of(target, drafter, model_name=MODEL_NAME))
    controller = TracedController(profile, ControllerConfig(max_k=max(ks), candidates=tuple([0] + ks)))
    timed(SpeculativeEngine(target, drafter, controller), prompts[:4], params)  # warm-up, and a first acceptance estimate
    static_schedule = controller.schedule(max(sizes))
    print(f"static schedule after the warm-up: {static_schedule}", flush=True)

    by_batch = []
    header = " ".join(f"{name:>8}" for name in ["plain"] + [f"k={k}" for k in ks] + ["sched", "ctrl"])
    print(f"{'B':>3} tokens/s: {header} | ctrl/best-static ctrl/plain | paired by round: the same, ctrl/sched")
    engines = {"plain": SpeculativeEngine(target)}
    engines.update({f"k={k}": SpeculativeEngine(target, drafter, FixedK(k)) for k in ks})
    engines["schedule"] = SpeculativeEngine(target, drafter, ScheduledK(static_schedule))
    engines["controller"] = SpeculativeEngine(target, drafter, controller)
    for batch in sizes:
        runs = repeated(engines, prompts[:batch], params, args.repeats, args.min_seconds)
        best_name = max((f"k={k}" for k in ks), key=lambda name: runs[name]["tokens_per_s"])
        row = {"batch_size": batch, "runs": runs, "best_static": best_name,
               "rounds": len(runs["plain"]["tokens_per_s_runs"]),
               "controller_over_best_static": runs["controller"]["tokens_per_s"] / runs[best_name]["tokens_per_s"],
               "controller_over_plain": runs["controller"]["tokens_per_s"] / runs["plain"]["tokens_per_s"],
               "controller_over_schedule": runs["controller"]["tokens_per_s"] / runs["schedule"]["tokens_per_s"],
               "paired": {"controller_over_best_static": paired_ratio(runs, "controller", best_name),
                          "controller_over_plain": paired_ratio(runs, "controller", "plain"),
                          "controller_over_schedule": paired_ratio(runs, "controller", "schedule")}}
        by_batch.append(row)
        cells = " ".join(f"{runs[n]['tokens_per_s']:8.1f}" for n in runs)
        paired = row["paired"]
        print(f"{batch:3d} tokens/s: {cells} | {row['controller_over_best_static']:15.2f} "
              f"{row['controller_over_plain']:10.2f} | paired {paired['controller_over_best_static']:.2f} "
              f"{paired['controller_over_plain']:.2f} {paired['controller_over_schedule']:.2f} ({row['rounds']} rounds)",
              flush=True)

    tail_prompts = [encode_chat(tokenizer, q) for q in long_tail_questions(args.task, 64, args.seed + 2, args.long_fraction)]
    tail_params = SamplingParams(temperature=0.0, max_new_tokens=tail_cap, stop_token_ids=(eos,))
    best_k = max(ks, key=lambda k: sum(r["runs"][f"k={k}"]["tokens_per_s"] / r["runs"]["plain"]["tokens_per_s"] for r in by_batch))
    tail_engines = {name: engines[name] for name in ("plain", f"k={best_k}", "schedule", "controller")}
    tail = repeated(tail_engines, tail_prompts, tail_params, args.tail_repeats)
    plain_tps = tail["plain"]["tokens_per_s"]
    share = tail_share(tail["plain"])
    print(f"long tail: plain decoding spends {share:.0%} of its step time at live batch sizes <= 8")
    for name, r in tail.items():
        print(f"long tail {name:>10}: {r['tokens_per_s']:6.1f} tokens/s, {r['tokens_per_s'] / plain_tps:.2f}x plain, "
              f"{r['wall_s']:.0f}s")
    print(f"long tail, paired by round: controller {paired_ratio(tail, 'controller', 'plain'):.2f}x plain, "
          f"{paired_ratio(tail, 'controller', f'k={best_k}'):.2f}x k={best_k}, "
          f"{paired_ratio(tail, 'controller', 'schedule'):.2f}x the static schedule")

    result = {"args": vars(args), "profile": profile.to_dict(), "schedule": controller.schedule(max(sizes)),
              "static_schedule": static_schedule,
              "by_batch_size": by_batch,
              "long_tail": {"best_static_k": best_k, "runs": tail, "plain_time_share_at_batch_le_8": share,
                            "controller_over_plain": tail["controller"]["tokens_per_s"] / plain_tps,
                            "controller_over_best_static":
                                tail["controller"]["tokens_per_s"] / tail[f"k={best_k}"]["tokens_per_s"],
                            "paired": {
                                "controller_over_plain": paired_ratio(tail, "controller", "plain"),
                                "controller_over_best_static": paired_ratio(tail, "controller", f"k={best_k}"),
                                "controller_over_schedule": paired_ratio(tail, "controller", "schedule")}},
              "controller_state": controller.state_dict()}
    out = Path(args.out)
    write_json_atomic(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"schedule (vLLM num_speculative_tokens_per_batch_size): {result['schedule']}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
