"""A tiny random Llama on disk, with SmolLM2's tokenizer: a stand-in actor for end-to-end runs.

verl and vLLM load models from a folder, so tests that run the real trainer need one. This writes
a Hugging Face `LlamaForCausalLM` folder (safetensors, config, generation config) with SmolLM2's
vocabulary (49152) and special tokens, and copies the tokenizer files of the local SmolLM2 folder
(`respec_verl.models.smollm2.smollm2_path()`), so prompts, chat template and stop tokens behave
as with SmolLM2 while each forward costs next to nothing.

`init_std` is larger than Hugging Face's 0.02 on purpose: with 0.02 a random model spreads its
probability almost uniformly over the 49152 tokens (about 2e-5 each), and a rollout-vs-trainer
probability comparison would pass whatever the engines computed. At the default the sampled
tokens carry probabilities of order 0.1-1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from respec_verl.storage.atomic_dir import staged_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
VOCAB_SIZE = 49152  # SmolLM2's tokenizer
BOS, EOS = 1, 2  # <|im_start|>, <|im_end|> as in SmolLM2's config


HEAD_DIM = 32  # the smallest head size vLLM's CPU attention supports (16 fails at the first request)


def tiny_llama_config(num_layers: int = 2, hidden_size: int = 64, tie_word_embeddings: bool = True, init_std: float = 1.0):
    """The `LlamaConfig` of the tiny model: SmolLM2's vocabulary and special tokens, 32-dim heads, GQA."""
    from transformers import LlamaConfig

    if hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size = {hidden_size} is not valid; allowed: a multiple of {HEAD_DIM}")
    heads = hidden_size // HEAD_DIM
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=HEAD_DIM,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )


def save_tiny_llama(
    path: str | Path,
    num_layers: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    init_std: float = 1.0,
    tokenizer_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the tiny model folder at `path` (atomically: built beside it, then renamed); returns it.

    An existing folder is kept as it is unless `overwrite`. The tokenizer files come from
    `tokenizer_dir`, by default the local SmolLM2 folder.
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and not overwrite:
        return path
    if tokenizer_dir is None:
        from respec_verl.models.smollm2 import smollm2_path

        tokenizer_dir = smollm2_path()
    tokenizer_dir = Path(tokenizer_dir)

    torch.manual_seed(seed)
    config = tiny_llama_config(num_layers, hidden_size, tie_word_embeddings, init_std)
    model = LlamaForCausalLM(config).eval()

    with staged_folder(path) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy2(tokenizer_dir / name, staging / name)
        (staging / "respec_tiny.json").write_text(
            json.dumps({"num_layers": num_layers, "hidden_size": hidden_size, "seed": seed, "init_std": init_std})
        )
    return path
