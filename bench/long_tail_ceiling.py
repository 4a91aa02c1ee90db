"""How much a self-draft can speed up the long-tail rollout's stragglers on this machine.

`bench.controller`'s long-tail rollout (64 requests, a few long texts among short sums) asks
for 1.5x plain decoding. Whatever the controller does, the whole rollout is no faster than its
parts: where the batch is large it runs plain (speculation loses there), and in the tail, where
only the long texts run, it is at best as fast as the best static k on those texts alone. This
measures that best case, so the bar can be put against what the hardware and the drafter allow:

1. the long texts' prompts are held out of every drafter's training (each long prompt template and
   subject pair the rollout uses is dropped from the training set);
2. several drafter recipes are distilled (`--recipes`): controller.py's (2 layers, 150 steps, a few
   greedy long answers at half the cap) and richer ones (every other long prompt, greedy and sampled
   answers at the full cap, 600 steps, 2 or 4 layers);
3. the stragglers alone run at batch 1 and at batch n (all of them) under plain decoding and every
   static k of every recipe, rounds interleaved; per configuration the median over rounds of its
   tokens/s over plain's in the same round (`paired`, which cancels the machine's drift);
4. the 64-request rollout runs once under plain decoding, to measure the share f of its wall time
   (prefill included) spent with at most 8 rows live, where the stragglers run; with the tail at
   the best ratio s measured in (3) and everything else at parity, the whole rollout is at most
   1 / ((1 - f) + f / s), and 1.5x would need s >= f / (1/1.5 - (1 - f)) in the tail.

    python -m bench.long_tail_ceiling --out bench/results/long_tail_ceiling.json
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from bench import controller as controller_bench
from respec_verl.data.questions import LONG, SUBJECTS, make_long_tail_questions, make_questions
from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
from respec_verl.storage.json_file import write_json_atomic
from respec_verl.models.smollm2 import encode_chat, load_smollm2
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine

# name -> (layers, distillation steps, long-text data: "few" = controller.py's, "rich" = every other prompt, 3 answers)
RECIPES = {"bench": (2, 150, "few"), "rich2": (2, 600, "rich"), "rich4": (4, 600, "rich")}


def whole_rollout_bound(tail_share: float, tail_speedup: float) -> float:
    """Amdahl: the rollout's speed-up with its tail sped up by `tail_speedup` and the rest at parity."""
    if not 0.0 <= tail_share <= 1.0 or tail_speedup <= 0:
        raise ValueError(f"need 0 <= tail_share <= 1 and tail_speedup > 0, got {tail_share}, {tail_speedup}")
    return 1.0 / ((1.0 - tail_share) + tail_share / tail_speedup)


def tail_speedup_needed(tail_share: float, target: float) -> float:
    """The tail's speed-up that brings the whole rollout to `target` (inf where the rest alone is too slow)."""
    slack = 1.0 / target - (1.0 - tail_share)
    return tail_share / slack if slack > 0 else math.inf


def share_with_few_live(steps: list[tuple[int, int]], step_times_s: list[float], wall_s: float, live: int) -> float:
    """Share of a run's wall time (prefill and all) spent in steps with at most `live` rows left."""
    return sum(t for (b, _), t in zip(steps, step_times_s) if b <= live) / wall_s


def training_data(target, tokenizer, held_out: set[str], kind: str, cap: int, seed: int):
    """Prompts and the target's answers for one recipe: the templated questions plus long texts."""
    eos = tokenizer.eos_token_id
    short = [encode_chat(tokenizer, q) for q in make_questions(112, seed=seed)]
    answers = actor_answers(target, short, SamplingParams(temperature=0.0, max_new_tokens=32, stop_token_ids=(eos,)))
    if kind == "few":  # controller.py's: 16 long prompts, greedy, half the cap
        longs = [q for q in make_long_tail_questions(16, seed=seed + 5, long_fraction=1.0) if q not in held_out]
        long_prompts = [encode_chat(tokenizer, q) for q in longs]
        long_answers = actor_answers(target, long_prompts, SamplingParams(temperature=0.0, max_new_tokens=cap // 2,
                                                                          stop_token_ids=(eos,)))
    else:  # every other long prompt: greedy and two samples at T = 0.7, at the full cap
        longs = [t.format(s=s) for t in LONG for s in SUBJECTS if t.format(s=s) not in held_out]
        once = [encode_chat(tokenizer, q) for q in longs]
        long_prompts = once * 3
        long_answers = actor_answers(target, once, SamplingParams(temperature=0.0, max_new_tokens=cap, stop_token_ids=(eos,)))
        for sample in (1, 2):
            params = SamplingParams(temperature=0.7, max_new_tokens=cap, stop_token_ids=(eos,))
            long_answers += SpeculativeEngine(target).generate(
                once, params, seeds=[1000 * sample + i for i in range(len(once))]).token_ids
    return short + long_prompts, answers + long_answers, len(longs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="the rollout's dtype (drafters train in fp32)")
    parser.add_argument("--recipes", default="bench,rich2,rich4", help=f"comma-separated, of {sorted(RECIPES)}")
    parser.add_argument("--ks", default="1,2,3,4")
    parser.add_argument("--tail-new-tokens", type=int, default=320, help="the long texts' length cap, as in controller.py")
    parser.add_argument("--long-fraction", type=float, default=0.0625, help="as in controller.py")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/long_tail_ceiling.json")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; allowed: {sorted(RECIPES)}")
    ks = [int(k) for k in args.ks.split(",")]
    torch.manual_seed(args.seed)

    target32, tokenizer = load_smollm2(torch.float32)
    eos = tokenizer.eos_token_id
    rollout = make_long_tail_questions(64, seed=args.seed + 2, long_fraction=args.long_fraction)  # controller.py's
    long_texts = {t.format(s=s) for t in LONG for s in SUBJECTS}
    stragglers = [q for q in rollout if q in long_texts]
    held_out = set(stragglers)
    print(f"stragglers (held out of every drafter's training): {stragglers}", flush=True)

    data_cache: dict[str, tuple] = {}
    drafters, training = {}, {}
    for name in recipes:
        layers, steps, kind = RECIPES[name]
        if kind not in data_cache:
            data_cache[kind] = training_data(target32, tokenizer, held_out, kind, args.tail_new_tokens, args.seed)
        prompts, answers, n_long = data_cache[kind]
        start = time.perf_counter()
        drafter, losses = warm_up_self_draft(target32, prompts, answers, num_layers=layers, always_tokens=[eos],
                                             steps=steps, seed=args.seed)
        training[name] = {"layers": layers, "steps": steps, "long_prompts": n_long, "pairs": len(prompts),
                          "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": time.perf_counter() - start}
        print(f"{name}: {training[name]}", flush=True)
        drafters[name] = drafter

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    target = copy.deepcopy(target32).to(dtype)
    del target32
    engines = {"plain": SpeculativeEngine(target)}
    for name, drafter in drafters.items():
        drafter.model.to(dtype)
        engines.update({f"{name} k={k}": SpeculativeEngine(target, drafter, FixedK(k)) for k in ks})

    params = SamplingParams(temperature=0.0, max_new_tokens=args.tail_new_tokens, stop_token_ids=(eos,))
    straggler_prompts = [encode_chat(tokenizer, q) for q in stragglers]
    by_batch = []
    for batch in sorted({1, len(stragglers)}):
        runs = controller_bench.repeated(engines, straggler_prompts[:batch], params, args.rounds)
        paired = {name: controller_bench.paired_ratio(runs, name, "plain") for name in runs if name != "plain"}
        best = max(paired, key=paired.get)
        by_batch.append({"batch_size": batch, "runs": runs, "paired_over_plain": paired, "best": best,
                         "best_over_plain": paired[best]})
        print(f"stragglers alone, batch {batch}: plain {runs['plain']['tokens_per_s']:.1f} tokens/s", flush=True)
        for name, ratio in paired.items():
            print(f"  {name:>10}: {ratio:.2f}x plain (acceptance length {runs[name]['accept_length']:.2f})", flush=True)

    whole = controller_bench.timed(engines["plain"], [encode_chat(tokenizer, q) for q in rollout], params)
    live = max(8, len(stragglers))  # generous: controller.py's "small batch", where speculation can pay
    share = share_with_few_live(whole["steps"], whole["step_times_s"], whole["wall_s"], live)
    best_tail = max(row["best_over_plain"] for row in by_batch)
    bound = whole_rollout_bound(share, best_tail)
    needed = tail_speedup_needed(share, 1.5)
    print(f"whole rollout under plain decoding: {whole['wall_s']:.0f} s, {share:.0%} of it with <= {live} rows live; "
          f"best tail ratio {best_tail:.2f}x -> the whole rollout at most {bound:.2f}x plain; "
          f"1.5x would need {needed:.2f}x in the tail", flush=True)

    write_json_atomic(Path(args.out), {
        "args": vars(args), "stragglers": stragglers, "drafters": training, "by_batch_size": by_batch,
        "whole_rollout": {"plain": whole, "live_rows_in_tail": live, "tail_share_of_wall": share,
                          "best_tail_over_plain": best_tail, "bound_over_plain": bound,
                          "tail_speedup_needed_for_1_5x": needed}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
