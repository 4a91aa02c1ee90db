"""A warmed-up self-draft as a model folder: what a serving engine (vLLM's `draft_model`) loads.

ReSpec's Algorithm 1 starts RL with a drafter distilled offline on the actor's own answers to
prompts from the training distribution, so that the first rollouts already speculate usefully.
`write_warm_self_draft` does that for a Hugging Face actor folder: the actor answers the
questions (plain decoding at the rollout temperature), a self-draft of its first layers is
distilled on the answers (`warm_up_self_draft`; with `draft_vocab_size` over the most frequent
answer tokens, padded with the tokenizer's most frequent merges), and the result is written as a
drafter folder (`drafter_dir`) with the actor's tokenizer files, complete or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from respec_verl.drafter.drafter_dir import save_drafter_dir
from respec_verl.models.smollm2 import encode_chat


def write_warm_self_draft(
    actor_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    questions: Sequence[str],
    num_layers: int = 2,
    steps: int = 60,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    draft_vocab_size: int | None = None,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """Distil a `num_layers` self-draft of the actor on its answers to `questions`; returns (out_dir, losses)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
    from respec_verl.speculation.sampling import SamplingParams

    actor_dir = Path(actor_dir)
    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_pretrained(actor_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(actor_dir)
    prompts = [encode_chat(tokenizer, q) for q in questions]
    stops = stop_token_ids(tokenizer, target)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=stops)
    answers = actor_answers(target, prompts, params)
    drafter, losses = warm_up_self_draft(
        target, prompts, answers, num_layers=num_layers, draft_vocab_size=draft_vocab_size, always_tokens=stops,
        steps=steps, seed=seed, progress=False,
    )
    save_drafter_dir(drafter, out_dir, tokenizer_from=actor_dir)
    return Path(out_dir), losses


def stop_token_ids(tokenizer, model) -> tuple[int, ...]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return tuple(sorted({int(t) for t in (*eos, tokenizer.eos_token_id) if t is not None}))
