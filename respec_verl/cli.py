"""`respec-verl`: the demo, the benchmarks and the step-cost profiler from one command."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from respec_verl.data.tasks import DEFAULT_TASK, TASKS
from respec_verl.demo.run import DEFAULT_STEPS, TASK_SETTINGS, DemoJob
from respec_verl.verl_glue.launch import DTYPE_CHOICES

BENCHES = {  # `respec-verl bench <name>` runs the module bench.<module> of a source checkout
    "spec": "spec_vs_plain",
    "controller": "controller",
    "evolution": "evolution",
    "e2e": "e2e",
    "vllm-steps": "vllm_cpu_steps",
    "update-overhead": "update_overhead",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="respec-verl",
        description="Speculative rollouts for verl: demo, benchmarks and step-cost profiling.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,profile}")

    demo = sub.add_parser(
        "demo",
        help="a short real GRPO run in verl with speculative rollouts (CPU: wall times in docs/results.md)",
        description="Runs verl's GRPO trainer (python -m verl.trainer.main_ppo, our recipe recipes/respec_grpo) with "
        "actor_rollout_ref.respec.enable=true on a locally generated task (--task): vLLM rollouts speculate with "
        "a self-draft, the adaptive controller picks k per engine step, and the drafter is distilled from the actor "
        "after every update. Shows a progress bar with the live figures and writes metrics.jsonl, metrics.png, "
        "summary.json and verl's log to --out.",
    )
    demo.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"GRPO steps (default {DEFAULT_STEPS})")
    demo.add_argument("--out", default="respec_demo", help="output folder (default respec_demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the task, the data order, vLLM sampling and the drafter")
    demo.add_argument("--no-spec", action="store_true", help="the same job without speculation (respec.enable=false)")
    demo.add_argument("--task", choices=list(TASKS), default=None, help="; ".join(
        f"{name}: {task.describe}" for name, task in TASKS.items()) + f" (default {DEFAULT_TASK})")
    demo.add_argument("--quick", action="store_true", help="the short-answer job: --task add (answers of a few tokens)")
    demo.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="rollout and trainer dtype on a CPU; "
                      "auto (default): bfloat16 where the CPU has bf16 instructions (avx512_bf16, amx_bf16), else float32")
    demo.add_argument("--model", default="smollm2", help="smollm2 (default), tiny (a random 2-layer model, a smoke test; "
                      "--task add unless --task is given) "
                      "or a Hugging Face model folder")
    demo.add_argument("--gpus", type=int, default=None, help="on a GPU host: GPUs per node; runs verl's GPU setup "
                      "instead of the CPU one (untested here)")
    demo.add_argument("--warmup-steps", type=int, default=None, help="distil the self-draft offline on the actor's "
                      "answers for this many steps before RL (ReSpec's initialisation; default: " + ", ".join(
                          f"{s.warmup_steps} for {name}" for name, s in TASK_SETTINGS.items())
                      + "; 0: the drafter is cut from the actor and learns online only)")
    demo.add_argument("--temperature", type=float, default=DemoJob.temperature, help="rollout temperature (default "
                      f"{DemoJob.temperature}, ReSpec's)")
    demo.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="extra Hydra override for main_ppo, applied last (repeatable)")
    demo.add_argument("--timeout", type=float, default=None, help="outer timeout of the run in seconds")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    gen = demo.add_argument_group("generation-only demo (no RL)")
    gen.add_argument("--generation-only", action="store_true", help="instead of the RL run: speculative vs plain "
                     "generation on SmolLM2 with a freshly distilled self-draft (checks greedy outputs are identical)")
    gen.add_argument("--distill-steps", type=int, default=80)
    gen.add_argument("--k", type=int, default=3, help="draft length")
    gen.add_argument("--prompts", type=int, default=8, help="held-out prompts to generate")

    bench = sub.add_parser(
        "bench",
        help="run a benchmark from bench/ (needs a source checkout)",
        description="Runs the module bench.<name> of a source checkout (python -m bench.<name>); extra arguments "
        "are passed on.",
    )
    bench.add_argument(
        "name",
        choices=sorted(BENCHES),
        help="spec: SD vs plain decoding; controller: adaptive k; evolution: drafter evolution in verl's GRPO trainer; "
        "e2e: the demo's RL job with SD on and off; vllm-steps: what a speculative step costs in vLLM-CPU; "
        "update-overhead: the drafter update's share of the RL step (async, sync, off, interleaved runs)",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)")

    profile = sub.add_parser(
        "profile",
        help="measure engine step times on this machine for the adaptive controller",
        description="Times whole steps of respec's core engine with SmolLM2-135M (the target) and a self-draft over "
        "a grid of batch sizes and k, and saves the table as JSON keyed by model, dtype and device, for "
        "AdaptiveController to reuse.",
    )
    profile.add_argument("--out", default=None, help="JSON file (default: the respec_verl cache folder)")
    profile.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    profile.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    profile.add_argument("--ks", default="1,2,3,4,6,8")
    profile.add_argument("--draft-layers", type=int, default=2)
    profile.add_argument("--draft-vocab", type=int, default=2048)
    profile.add_argument("--context-len", type=int, default=128)
    profile.add_argument("--repeats", type=int, default=3, help="timed steps (bare forwards: runs) per cell")
    profile.add_argument("--bare-forward", action="store_true",
                         help="time bare decode, draft and verify forward passes instead: an offline estimate that "
                         "misses sampling and KV rollback, not what the controller should decide on")
    return parser


def run_bench(name: str, args: list[str]) -> None:
    """`python -m bench.<module> args...` in this process (so that `exit_on_sigterm` covers its verl runs)."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "bench" / "__init__.py").exists():
        raise SystemExit(f"respec-verl bench: {checkout / 'bench'} not found; run it from a source checkout of respec_verl")
    if str(checkout) not in sys.path:  # the benchmarks are not installed: they import from the checkout
        sys.path.insert(0, str(checkout))
    sys.argv = [sys.argv[0], *args]
    runpy.run_module(f"bench.{BENCHES[name]}", run_name="__main__", alter_sys=True)


def run_profile(opts: argparse.Namespace) -> None:
    import torch

    from respec_verl.drafter import self_draft
    from respec_verl.models.smollm2 import MODEL_NAME, cache_root, load_smollm2
    from respec_verl.speculation.engine_profile import profile_engine_steps
    from respec_verl.speculation.forward_profile import profile_step_costs
    from respec_verl.speculation.profile import ProfileKey

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[opts.dtype]
    target, _ = load_smollm2(dtype)
    vocab = torch.arange(opts.draft_vocab)  # cost depends on the head's size, not on which ids it holds
    drafter = self_draft(target, opts.draft_layers, draft_vocab=vocab)
    key = ProfileKey.of(target, drafter, model_name=MODEL_NAME)
    batch_sizes, ks = [int(b) for b in opts.batch_sizes.split(",")], [int(k) for k in opts.ks.split(",")]
    if opts.bare_forward:
        table = profile_step_costs(target, drafter, batch_sizes, ks, opts.context_len, opts.repeats, key=key)
    else:
        table = profile_engine_steps(target, drafter, batch_sizes, ks, opts.context_len, opts.repeats, key=key)
    out = Path(opts.out) if opts.out else cache_root() / "step_costs.json"
    table.save(out)
    print(f"saved step costs for {key} to {out}")


def demo_task(opts: argparse.Namespace) -> str:
    """The task of `--task`; `add` for `--quick`, and for `--model tiny` unless `--task` says otherwise
    (a random model's answers all run to the cap: the smoke test stays short)."""
    if opts.quick and opts.task not in (None, "add"):
        raise SystemExit(f"respec-verl demo: --quick runs --task add; it cannot run with --task {opts.task}")
    if opts.quick or (opts.task is None and opts.model == "tiny"):
        return "add"
    return opts.task or DEFAULT_TASK


def run_demo_command(opts: argparse.Namespace) -> None:
    if opts.generation_only:
        from respec_verl.demo.generation import run_generation_demo

        run_generation_demo(out=opts.out, seed=opts.seed, distill_steps=opts.distill_steps, k=opts.k, num_prompts=opts.prompts)
        return
    from respec_verl.demo.run import DemoJob, run_demo

    try:
        job = DemoJob(model=opts.model, task=demo_task(opts), dtype=opts.dtype, steps=opts.steps, seed=opts.seed,
                      spec=not opts.no_spec, gpus=opts.gpus,
                      warmup_steps=opts.warmup_steps, temperature=opts.temperature, overrides=tuple(opts.override))
    except ValueError as e:
        raise SystemExit(f"respec-verl demo: {e}") from None
    run_demo(job, out=opts.out, progress=not opts.no_progress, timeout_s=opts.timeout)


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    from respec_verl.verl_glue.supervisor import exit_on_sigterm

    exit_on_sigterm()  # a `kill` of the demo or a benchmark ends its verl run too, not only Ctrl-C
    if opts.command == "demo":
        run_demo_command(opts)
    elif opts.command == "bench":
        run_bench(opts.name, opts.args)
    else:
        run_profile(opts)


if __name__ == "__main__":
    main()
