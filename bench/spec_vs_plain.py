"""Speculative vs plain decoding on SmolLM2-135M-Instruct, measured side by side in one run.

For each dtype, batch size and k it runs the same prompts through `SpeculativeEngine` with a
self-draft distilled briefly on the target's own outputs (full and reduced draft vocabulary) and
prints tokens/s of SD over plain decoding, measured acceptance, the measured draft/target cost ratio
c, the cost-model bound AL / (1 + k c) (= (1 - a^(k+1)) / ((1 - a)(1 + k c)) for i.i.d. acceptance
a, i.e. the speed-up if verifying k+1 tokens cost one decode step), and the process peak RSS.

    python bench/spec_vs_plain.py --out bench/results/spec_vs_plain.json
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from respec_verl.data.questions import make_questions
from respec_verl.drafter import Drafter
from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
from respec_verl.storage.json_file import write_json_atomic
from respec_verl.models.smollm2 import encode_chat, load_smollm2
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine

def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train_drafters(target32, tokenizer, args) -> dict[str, Drafter]:
    """Self-drafts distilled on the fp32 target's greedy answers to held-in prompts."""
    prompts = [encode_chat(tokenizer, q) for q in make_questions(args.train_prompts, seed=args.seed)]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop_token_ids=(tokenizer.eos_token_id,))
    answers = actor_answers(target32, prompts, params)
    common = dict(num_layers=args.draft_layers, steps=args.distill_steps, lr=args.lr, seed=args.seed)
    reduced, _ = warm_up_self_draft(target32, prompts, answers, draft_vocab_size=args.draft_vocab,
                                    always_tokens=[tokenizer.eos_token_id], **common)
    full, _ = warm_up_self_draft(target32, prompts, answers, draft_vocab_size=None, top_k=64, **common)
    return {"reduced": reduced, "full": full}


def run(engine: SpeculativeEngine, prompts, params) -> dict:
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    wall = time.perf_counter() - start
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--ks", default="1,2,3,4,6,8", help="draft lengths for the reduced-vocabulary draft")
    parser.add_argument("--full-ks", default="1,2,4", help="draft lengths for the full-vocabulary draft")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-vocab", type=int, default=2048)
    parser.add_argument("--train-prompts", type=int, default=128)
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/spec_vs_plain.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    target32, tokenizer = load_smollm2(torch.float32)
    drafters32 = train_drafters(target32, tokenizer, args)
    eval_prompts = [encode_chat(tokenizer, q) for q in make_questions(64, seed=args.seed + 1)]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, stop_token_ids=(tokenizer.eos_token_id,))
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    rows = []
    print(f"{'dtype':5} {'draft':7} {'B':>3} {'k':>2} {'tok/s':>7} {'SD/plain':>8} {'AL':>5} {'acc':>5} {'c':>5} {'bound':>5} {'%bound':>6} {'RSS GiB':>7}")
    for name in args.dtypes.split(","):
        dtype = dtypes[name]
        target = target32 if dtype == torch.float32 else copy.deepcopy(target32).to(dtype)
        drafters = {v: Drafter(copy.deepcopy(d.model).to(dtype), d.draft_to_target, d.version) for v, d in drafters32.items()}
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            prompts = eval_prompts[:batch]
            run(SpeculativeEngine(target), prompts, SamplingParams(temperature=0.0, max_new_tokens=4))  # warm-up
            plain = run(SpeculativeEngine(target), prompts, params)
            grid = [("reduced", int(k)) for k in args.ks.split(",")] + [("full", int(k)) for k in args.full_ks.split(",")]
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
    write_json_atomic(args.out, {"args": vars(args), "torch_threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
