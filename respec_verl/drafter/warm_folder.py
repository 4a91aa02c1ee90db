"""A warmed-up self-draft as a model folder: what a serving engine (vLLM's `draft_model`) loads.

ReSpec's Algorithm 1 starts RL with a drafter distilled offline on the actor's own answers to
prompts from the training distribution, so that the first rollouts already speculate usefully.
`write_warm_self_draft` does that for a Hugging Face actor folder: the actor answers the
questions (plain decoding at the rollout temperature), a self-draft of its first layers is
distilled on the answers (`warm_up_self_draft`, full vocabulary, the output layer frozen), and the
result is written with the actor's tokenizer files, complete or not at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from respec_verl.atomic_dir import staged_folder

TOKENIZER_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def write_warm_self_draft(
    actor_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    questions: Sequence[str],
    num_layers: int = 2,
    steps: int = 60,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """Distil a `num_layers` self-draft of the actor on its answers to `questions`; returns (out_dir, losses)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
    from respec_verl.spec.sampling import SamplingParams

    actor_dir = Path(actor_dir)
    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_pretrained(actor_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(actor_dir)
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for q in questions
    ]
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,))
    answers = actor_answers(target, prompts, params)
    drafter, losses = warm_up_self_draft(
        target, prompts, answers, num_layers=num_layers, draft_vocab_size=None, steps=steps, seed=seed, progress=False
    )
    with staged_folder(out_dir) as staging:
        drafter.model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (actor_dir / name).exists() and not (staging / name).exists():
                shutil.copy2(actor_dir / name, staging / name)
    return Path(out_dir), losses
