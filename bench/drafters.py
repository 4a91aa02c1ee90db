"""Plain decoding against the self-draft, history and hybrid drafters on the long task, side by side.

Acceptance run (CPU, SmolLM2-135M-Instruct): for each scenario (a starting batch of B rows made of
GRPO groups of `--group` answers to B/group prompts, and the long-tail rollout: `--long-tail` rows
that finish one by one), every drafter runs two epochs over the same prompts with fresh seeds, one
after the other, so that machine drift hits all of them alike. History (and the hybrid's history)
starts empty in each scenario: epoch 1 drafts only from the prompt and the siblings generated side by
side, epoch 2 also from epoch 1's answers. Per drafter, scenario and epoch it reports tokens per
verification step (vLLM's acceptance length), the drafting cost per drafted token over a plain
target step, tokens/s and its ratio to plain decoding in the same scenario and epoch.

    python -m bench.drafters --out bench/results/drafters_long.json

GPU projection (needs only torch and transformers on the GPU host): times the core engine's decode,
verify and self-draft steps on random weights of the actor's shape and of a 7B shape, and projects
each drafter's speed-up from those costs and the tokens per step that the acceptance run measured
(acceptance does not depend on the hardware; step costs do):

    python -m bench.drafters --project bench/results/drafters_long.json --device cuda \
        --out bench/results/drafters_projection_h100.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from bench.common import (SMOLLM2_135M, greedy_answers, int_list, pyplot, random_llama, save_result, script_parser, timed,
                          torch_dtype)
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine

DRAFTERS = ("plain", "self_draft", "history", "hybrid")

# Random-weight shapes for the projection: the actor's, and a 7B actor's (Qwen2.5-7B-like).
SHAPES = {
    "smollm2-135m": SMOLLM2_135M,
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
}


def scenarios(batch_sizes: list[int], group: int, long_tail: int, long_tail_groups: list[int]) -> list[dict]:
    """(name, batch, group) of each scenario: fixed starting batches, then the long tail per group size."""
    out = [{"name": f"B{b}", "batch": b, "group": min(group, b)} for b in batch_sizes]
    out += [{"name": f"long_tail_g{g}", "batch": long_tail, "group": g} for g in long_tail_groups if long_tail]
    return out


def run_one(engine: SpeculativeEngine, calls: list[tuple[list[list[int]], list[int]]], params: SamplingParams) -> dict:
    """The figures of a scenario's generate calls (prompts and seeds each), summed over the calls.

    Sampled SD emits other samples than plain decoding (the same law, not the same draws), so
    answers, and with them prefill's share of the wall time, differ between drafters: `speedup`
    compares decode throughput (tokens after the first over the time after prefill), `speedup_wall`
    the wall times. More calls (`--calls`) average the answer lengths out.
    """
    tokens = wall = prefill = draft = 0.0
    steps = []
    accepted = drafts = max_len = 0
    for prompts, seeds in calls:
        seconds, out = timed(engine.generate, prompts, params, seeds=seeds)
        wall += seconds
        stats = out.stats
        tokens += stats.generated_tokens
        prefill += stats.prefill_time_s
        draft += stats.draft_time_s
        steps += stats.steps
        accepted += sum(stats.accepted_per_pos)
        drafts += stats.num_drafts
        max_len = max(max_len, *(len(t) for t in out.token_ids))
    rows = sum(len(prompts) for prompts, _ in calls)
    plain = [s.step_time_s for s in steps if s.k == 0]
    spec = [s.step_time_s for s in steps if s.k]
    drafted = sum(s.k * s.batch_size for s in steps if s.k)
    looked_up = sum(s.batch_size for s in steps if s.draft_time_s > 0)  # row-steps that asked the drafter
    return {
        "calls": len(calls),
        "tokens": int(tokens),
        "wall_s": wall,
        "prefill_s": prefill,
        "tokens_per_s": tokens / wall,
        "decode_tokens_per_s": (tokens - rows) / (wall - prefill),
        "tokens_per_step": 1.0 + accepted / drafts if drafts else 1.0,
        "spec_steps": len(spec),
        "plain_steps": len(plain),
        "draft_time_s": draft,
        "draft_s_per_token": draft / drafted if drafted else 0.0,
        "draft_s_per_row_step": draft / looked_up if looked_up else 0.0,
        "mean_k": sum(s.k for s in steps if s.k) / len(spec) if spec else 0.0,
        "plain_step_s": statistics.median(plain) if plain else None,
        "spec_step_s": statistics.median(spec) if spec else None,
        "max_answer_tokens": max_len,
    }


def measure_acceptance(args, save=None) -> dict:
    from respec_verl.data.tasks import get_task
    from respec_verl.drafter import HistoryConfig, HistoryDrafter, HybridDrafter
    from respec_verl.drafter.hybrid import RowChoices
    from respec_verl.drafter.warmup import warm_up_self_draft
    from respec_verl.models.smollm2 import encode_chat, load_smollm2

    torch.manual_seed(args.seed)
    target, tokenizer = load_smollm2(dtype=torch_dtype(args.dtype))
    task = get_task(args.task)
    cap = args.max_new_tokens or task.response_length
    stop = (tokenizer.eos_token_id,)
    questions = [q for q, _, _ in task.questions(args.warmup_prompts + 512, args.seed)]
    pool = [encode_chat(tokenizer, q) for q in questions[args.warmup_prompts:]]

    def warm_up():
        warm_prompts, answers = greedy_answers(target, tokenizer, questions[:args.warmup_prompts], cap)
        return warm_up_self_draft(target, warm_prompts, answers, num_layers=args.draft_layers,
                                  draft_vocab_size=args.draft_vocab, always_tokens=stop, steps=args.warmup_steps,
                                  seed=args.seed)[0]

    warmup_s, model = timed(warm_up)
    history_config = HistoryConfig(min_match=args.min_match, max_match=args.max_match)
    params = SamplingParams(temperature=args.temperature, max_new_tokens=cap, stop_token_ids=stop)
    ks = {"plain": 0, "self_draft": args.k_self_draft, "history": args.k_history, "hybrid": args.k_hybrid}

    results, next_prompt = [], 0

    def document() -> dict:
        done = [dict(r) for r in results]
        add_ratios(done)
        return {"args": vars(args), "warmup_s": warmup_s, "results": done,
                "history_lookup_s_per_row": history_lookup_cost(done)}

    for scenario in scenarios(args.batch_sizes, args.group, args.long_tail, args.long_tail_groups):
        long_tail = scenario["name"].startswith("long_tail")
        n_prompts = -(-scenario["batch"] // scenario["group"])
        groups = []
        for _ in range(args.calls):
            prompts = [p for p in pool[next_prompt:next_prompt + n_prompts] for _ in range(scenario["group"])]
            groups.append(prompts[:scenario["batch"]])
            next_prompt += n_prompts
        for name in DRAFTERS:
            drafter = {
                "plain": lambda: None,
                "self_draft": lambda: model,
                "history": lambda: HistoryDrafter(history_config),
                "hybrid": lambda: HybridDrafter(HistoryDrafter(history_config), model, args.strong_match),
            }[name]()
            engine = SpeculativeEngine(target, drafter, FixedK(ks[name]), pad_token_id=tokenizer.pad_token_id or 0)
            for epoch in range(1, args.epochs + 1):
                if name == "hybrid":
                    drafter.choices = RowChoices()  # per epoch
                calls = [(prompts, [args.seed * 1_000_003 + epoch * 10_007 + call * 1009 + row
                                    for row in range(len(prompts))]) for call, prompts in enumerate(groups)]
                schedule = None
                if long_tail and name != "plain":  # as the controller would: speculate where it paid
                    schedule = MeasuredSchedule(ks[name], fixed_batch_speedups(results, name, epoch))
                    engine.k_policy = schedule
                row = {**scenario, "drafter": name, "k": ks[name], "epoch": epoch,
                       "schedule": None if schedule is None else schedule.table,
                       **run_one(engine, calls, params)}
                if name == "hybrid":
                    row["history_share"] = drafter.choices.history_share
                    row["model_skipped_steps"] = drafter.choices.model_skipped_steps
                results.append(row)
                print(f"{scenario['name']:>14} {name:>10} epoch {epoch}: {row['tokens_per_s']:7.1f} tok/s, "
                      f"{row['tokens_per_step']:.2f} tokens/step", file=sys.stderr, flush=True)
        if save is not None:  # every finished scenario is kept, so a stopped run still reports
            save(document())
    return document()


class MeasuredSchedule:
    """k where the drafter beat plain decoding at the nearest measured batch size at or below the
    live one, 0 elsewhere: the static per-batch-size schedule, read off this run's fixed-batch table."""

    def __init__(self, k: int, speedups: dict[int, float]):
        self.k = k
        self.table = {b: (k if ratio > 1.0 else 0) for b, ratio in sorted(speedups.items())}

    def choose_k(self, batch_size: int) -> int:
        below = [b for b in self.table if b <= batch_size] or [min(self.table, default=1)]
        return self.table.get(max(below), self.k)

    def observe(self, record) -> None:
        pass


def fixed_batch_speedups(results: list[dict], drafter: str, epoch: int) -> dict[int, float]:
    """{starting batch: decode tokens/s over plain's} of the fixed-batch scenarios measured so far."""
    plain = {r["batch"]: r["decode_tokens_per_s"] for r in results
             if r["drafter"] == "plain" and r["epoch"] == epoch and r["name"].startswith("B")}
    return {r["batch"]: r["decode_tokens_per_s"] / plain[r["batch"]] for r in results
            if r["drafter"] == drafter and r["epoch"] == epoch and r["name"].startswith("B") and r["batch"] in plain}


def add_ratios(results: list[dict]) -> None:
    """Decode throughput (`speedup`) and wall-time throughput (`speedup_wall`) over plain decoding's
    in the same scenario and epoch."""
    plain = {(r["name"], r["epoch"]): r for r in results if r["drafter"] == "plain"}
    for r in results:
        base = plain[(r["name"], r["epoch"])]
        r["speedup"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        r["speedup_wall"] = r["tokens_per_s"] / base["tokens_per_s"]


def history_lookup_cost(results: list[dict]) -> float:
    """Seconds of one history lookup for one row, the history drafter's whole drafting cost (median)."""
    per_row = [r["draft_s_per_row_step"] for r in results if r["drafter"] == "history" and r["draft_s_per_row_step"]]
    return statistics.median(per_row) if per_row else 0.0


def project(args) -> dict:
    """Step costs on `--device` for each shape, and each drafter's projected speed-up from them."""
    import json

    from respec_verl.drafter.self_draft import self_draft
    from respec_verl.speculation.forward_profile import profile_step_costs

    measured = json.loads(Path(args.project).read_text())
    rows = [r for r in measured["results"] if r["epoch"] == max(r["epoch"] for r in measured["results"])]
    device = torch.device(args.device)
    ks = sorted({r["k"] for r in rows if r["k"]})
    batch_sizes = sorted({r["batch"] for r in rows} | set(args.batch_sizes))
    out = {"args": vars(args), "acceptance_from": args.project, "shapes": {}}
    for shape in args.shapes:
        torch.manual_seed(0)
        target = random_llama(device, args.dtype, **SHAPES[shape], max_position_embeddings=4096,
                              tie_word_embeddings=False)
        drafter = self_draft(target, args.draft_layers)
        profile = profile_step_costs(target, drafter, batch_sizes, ks, context_len=args.context_len,
                                     repeats=args.repeats)
        out["shapes"][shape] = {
            "decode_s": {str(b): profile.decode_time(b) for b in batch_sizes},
            "verify_s": {f"{b},{k}": profile.verify_s[(args.context_len, b, k)] for b in batch_sizes for k in ks},
            "draft_s": {f"{b},{k}": profile.draft_s[(args.context_len, b, k)] for b in batch_sizes for k in ks},
            "projected": projected_speedups(rows, profile, args.context_len, measured["history_lookup_s_per_row"]),
        }
        del target, drafter
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def projected_speedups(rows: list[dict], profile, ctx: int, lookup_s: float) -> list[dict]:
    """Tokens per engine step x decode step / time per engine step, per fixed-batch scenario of the
    last epoch, with the measured mix of speculative and plain steps.

    A scenario is costed at its starting batch size. A speculative step verifies the mean draft
    length the run used (rounded up to a profiled k) and pays its drafting: the self-draft's k
    passes, a lookup per row for history, both for the hybrid on the steps where its model ran; a
    plain step costs a decode (and history's lookup that found nothing).
    """
    out = []
    for r in rows:
        if r["drafter"] == "plain" or not r["name"].startswith("B"):  # the long tail's batch is not one size
            continue
        b, steps = r["batch"], r["spec_steps"] + r["plain_steps"]
        spec_share = r["spec_steps"] / steps if steps else 0.0
        k = min((k for k in profile.ks if k >= math.ceil(r["mean_k"])), default=r["k"])
        decode = profile.decode_time(b)
        verify = profile.verify_s[(ctx, b, k)] if spec_share else decode
        model_draft = profile.draft_s[(ctx, b, r["k"])]
        lookup = lookup_s * b if r["drafter"] != "self_draft" else 0.0
        if r["drafter"] == "self_draft":
            draft = model_draft
        elif r["drafter"] == "history":
            draft = lookup
        else:
            draft = lookup + model_draft * (1.0 - r["model_skipped_steps"] / max(1, r["spec_steps"]))
        tokens = spec_share * r["tokens_per_step"] + (1.0 - spec_share)
        time_per_step = spec_share * (verify + draft) + (1.0 - spec_share) * (decode + lookup)
        out.append({"name": r["name"], "drafter": r["drafter"], "batch": b, "k": r["k"], "verified_k": k,
                    "speculative_share": spec_share, "tokens_per_step": r["tokens_per_step"],
                    "projected_speedup": tokens * decode / time_per_step})
    return out


def plot(doc: dict, path: Path) -> None:
    from respec_verl.demo.report import save_figure

    plt = pyplot()
    results = doc["results"]
    names = list(dict.fromkeys(r["name"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in DRAFTERS[1:]:
        for epoch, style in ((1, "--"), (2, "-")):
            rows = {r["name"]: r for r in results if r["drafter"] == name and r["epoch"] == epoch}
            if not rows:
                continue
            xs = [n for n in names if n in rows]
            axes[0].plot(xs, [rows[n]["speedup"] for n in xs], style, marker="o", label=f"{name} epoch {epoch}")
            axes[1].plot(xs, [rows[n]["tokens_per_step"] for n in xs], style, marker="o", label=f"{name} epoch {epoch}")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("decode throughput over plain decoding")
    axes[1].set_ylabel("tokens per verification step")
    for ax in axes:
        ax.set_xlabel("scenario (starting batch; long tail = batch shrinking to 1)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    save_figure(fig, path, f"drafters on the {doc['args']['task']} task, {doc['args']['dtype']}, "
                       f"T={doc['args']['temperature']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--task", default="long")
    parser.add_argument("--dtype", default=None, help="default: float32, bfloat16 for a --project on cuda")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's response cap")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--group", type=int, default=4, help="answers per prompt in the fixed-batch scenarios")
    parser.add_argument("--long-tail", type=int, default=64, help="rows of the long-tail rollout (0: none)")
    parser.add_argument("--long-tail-groups", type=int_list, default=[4, 8])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1, help="generate calls per scenario (prompt groups)")
    parser.add_argument("--k-self-draft", type=int, default=3)
    parser.add_argument("--k-history", type=int, default=6)
    parser.add_argument("--k-hybrid", type=int, default=4)
    parser.add_argument("--min-match", type=int, default=2)
    parser.add_argument("--max-match", type=int, default=8)
    parser.add_argument("--strong-match", type=int, default=4)
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-vocab", type=int, default=2048)
    parser.add_argument("--warmup-prompts", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project", default=None, help="an acceptance JSON of this script: project it on --device")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=["smollm2-135m", "7b"])
    parser.add_argument("--context-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.project and args.device.startswith("cuda") else "float32"
    for shape in args.shapes:
        if shape not in SHAPES:
            parser.error(f"--shapes: {shape!r} is not valid; allowed: {', '.join(SHAPES)}")
    if args.epochs < 1 or args.group < 1 or args.calls < 1:
        parser.error("--epochs, --group and --calls must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.project:
        save_result(args.out, project(args), device=args.device)
        return

    def save(doc: dict) -> None:
        save_result(args.out, doc, plot)

    save(measure_acceptance(args, save))


if __name__ == "__main__":
    main()
