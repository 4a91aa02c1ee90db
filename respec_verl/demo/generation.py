"""`respec-verl demo --generation-only`: speculative generation on a real model, no RL, on CPU in a few minutes.

It distils a cheap self-draft on SmolLM2's own answers, then answers held-out questions with and
without speculation, and shows the three things a user should see: identical greedy outputs,
the acceptance, and the speed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from respec_verl.data.questions import make_questions
from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
from respec_verl.models.smollm2 import encode_chat, load_smollm2
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine


def run_generation_demo(out: str = "respec_demo", seed: int = 0, distill_steps: int = 80, k: int = 3, num_prompts: int = 8) -> dict:
    torch.manual_seed(seed)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    target, tokenizer = load_smollm2(torch.float32)
    params = SamplingParams(temperature=0.0, max_new_tokens=48, stop_token_ids=(tokenizer.eos_token_id,))
    train = [encode_chat(tokenizer, q) for q in make_questions(64, seed=seed)]
    print(f"[1/3] SmolLM2-135M answers {len(train)} warm-up questions")
    answers = actor_answers(target, train, params)
    print(f"[2/3] distilling a 2-layer, 2048-token self-draft on them ({distill_steps} steps)")
    drafter, losses = warm_up_self_draft(
        target, train, answers, always_tokens=[tokenizer.eos_token_id], steps=distill_steps, seed=seed
    )
    held_out = [encode_chat(tokenizer, q) for q in make_questions(num_prompts, seed=seed + 1)]
    print(f"[3/3] answering {len(held_out)} held-out questions one at a time, plain vs speculative (k={k})")
    results = {}
    for name, engine in (("plain", SpeculativeEngine(target)), ("speculative", SpeculativeEngine(target, drafter, FixedK(k)))):
        start, tokens, outputs, accepted, drafted = time.perf_counter(), 0, [], 0, 0
        for prompt in held_out:
            gen = engine.generate([prompt], params)
            outputs += gen.token_ids
            tokens += gen.stats.generated_tokens
            accepted += sum(gen.stats.accepted_per_pos)
            drafted += sum(gen.stats.drafted_per_pos)
        wall = time.perf_counter() - start
        results[name] = {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "outputs": outputs,
                         "acceptance_rate": accepted / drafted if drafted else None}
    summary = {
        "greedy_outputs_identical": results["plain"]["outputs"] == results["speculative"]["outputs"],
        "plain_tokens_per_s": results["plain"]["tokens_per_s"],
        "speculative_tokens_per_s": results["speculative"]["tokens_per_s"],
        "speedup": results["speculative"]["tokens_per_s"] / results["plain"]["tokens_per_s"],
        "acceptance_rate": results["speculative"]["acceptance_rate"],
        "distill_loss_first_last": [losses[0], losses[-1]],
        "k": k,
        "example": tokenizer.decode(results["speculative"]["outputs"][0]),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({key: v for key, v in summary.items()}, indent=1))
    return summary
