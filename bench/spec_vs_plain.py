"""Speculative vs plain decoding on SmolLM2-135M-Instruct, measured side by side in one run.

For each dtype, batch size and k it runs the same prompts through `SpeculativeEngine` with a
self-draft distilled briefly on the target's own outputs (full and reduced draft vocabulary) and
prints tokens/s of SD over plain decoding, measured acceptance, the measured draft/target cost ratio
c, the cost-model bound AL / (1 + k c) (= (1 - a^(k+1)) / ((1 - a)(1 + k c)) for i.i.d. acceptance
a, i.e. the speed-up if verifying k+1 tokens cost one decode step), and the process peak RSS.

    python -m bench.spec_vs_plain --out bench/results/spec_vs_plain.json
"""

from __future__ import annotations

import copy
import resource

import torch

from bench.common import greedy, greedy_answers, int_list, save_result, script_parser, timed, torch_dtype
from respec_verl.data.questions import make_questions
from respec_verl.drafter import Drafter
from respec_verl.drafter.warmup import warm_up_self_draft
from respec_verl.models.smollm2 import encode_chat, load_smollm2
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train_drafters(target32, tokenizer, args) -> dict[str, Drafter]:
    """Self-drafts distilled on the fp32 target's greedy answers to held-in prompts."""
    prompts, answers = greedy_answers(target32, tokenizer, make_questions(args.train_prompts, seed=args.seed),
                                      args.new_tokens)
    common = dict(num_layers=args.draft_layers, steps=args.distill_steps, lr=args.lr, seed=args.seed)
    reduced, _ = warm_up_self_draft(target32, prompts, answers, draft_vocab_size=args.draft_vocab,
                                    always_tokens=[tokenizer.eos_token_id], **common)
    full, _ = warm_up_self_draft(target32, prompts, answers, draft_vocab_size=None, top_k=64, **common)
    return {"reduced": reduced, "full": full}


def run(engine: SpeculativeEngine, prompts, params) -> dict:
    wall, out = timed(engine.generate, prompts, params)
    stats = out.stats
    return {
        "tokens": stats.generated_tokens,
        "wall_s": wall,
        "tokens_per_s": stats.generated_tokens / wall,
        "accept_length": stats.mean_accept_length,
        "acceptance_rate": stats.acceptance_rate,
        "draft_s_per_token_step": stats.draft_time_s / max(1, sum(s.k for s in stats.steps)),
        "target_s_per_step": stats.target_time_s / max(1, len(stats.steps)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--batch-sizes", type=int_list, default="1,2,4,8,16,32")
    parser.add_argument("--ks", type=int_list, default="1,2,3,4,6,8", help="draft lengths for the reduced-vocabulary draft")
    parser.add_argument("--full-ks", type=int_list, default="1,2,4", help="draft lengths for the full-vocabulary draft")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-vocab", type=int, default=2048)
    parser.add_argument("--train-prompts", type=int, default=128)
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/spec_vs_plain.json")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    target32, tokenizer = load_smollm2(torch.float32)
    drafters32 = train_drafters(target32, tokenizer, args)
    eval_prompts = [encode_chat(tokenizer, q) for q in make_questions(64, seed=args.seed + 1)]
    params = greedy(tokenizer, args.new_tokens)
    rows = []
    print(f"{'dtype':5} {'draft':7} {'B':>3} {'k':>2} {'tok/s':>7} {'SD/plain':>8} {'AL':>5} {'acc':>5} {'c':>5} {'bound':>5} {'%bound':>6} {'RSS GiB':>7}")
    for name in args.dtypes.split(","):
        dtype = torch_dtype(name)
        target = target32 if dtype == torch.float32 else copy.deepcopy(target32).to(dtype)
        drafters = {v: Drafter(copy.deepcopy(d.model).to(dtype), d.draft_to_target, d.version) for v, d in drafters32.items()}
        for batch in args.batch_sizes:
            prompts = eval_prompts[:batch]
            run(SpeculativeEngine(target), prompts, SamplingParams(temperature=0.0, max_new_tokens=4))  # warm-up
            plain = run(SpeculativeEngine(target), prompts, params)
            grid = [("reduced", k) for k in args.ks] + [("full", k) for k in args.full_ks]
            for variant, k in grid:
                res = run(SpeculativeEngine(target, drafters[variant], FixedK(k)), prompts, params)
                c = res["draft_s_per_token_step"] / plain["target_s_per_step"]
                bound = res["accept_length"] / (1 + k * c)
                row = {"dtype": name, "drafter": variant, "batch_size": batch, "k": k, "plain": plain, "sd": res,
                       "speedup": res["tokens_per_s"] / plain["tokens_per_s"], "cost_ratio_c": c, "bound": bound,
                       "fraction_of_bound": res["tokens_per_s"] / plain["tokens_per_s"] / bound, "peak_rss_gib": peak_rss_gib()}
                rows.append(row)
                print(f"{name:5} {variant:7} {batch:3d} {k:2d} {res['tokens_per_s']:7.1f} {row['speedup']:8.2f} "
                      f"{res['accept_length']:5.2f} {res['acceptance_rate']:5.2f} {c:5.3f} {bound:5.2f} "
                      f"{100 * row['fraction_of_bound']:5.0f}% {row['peak_rss_gib']:7.2f}", flush=True)
    save_result(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
