"""Shared fixtures: tiny random causal LMs built from a config, and the real SmolLM2 (slow)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab_size: int = 97, seed: int = 0, layers: int = 4, hidden: int = 64, init_std: float = 0.2):
    """A random Llama whose greedy outputs vary (a larger init than HF's avoids one repeated token)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=init_std,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct in float32 (exact greedy comparisons)."""
    from respec_verl.models.smollm2 import load_smollm2

    return load_smollm2(dtype=torch.float32)
