"""A drafter as a model folder: what serving engines load at start, and what we push to them later.

A full-vocabulary drafter is a plain Hugging Face causal-LM folder. A reduced-vocabulary drafter
(`Drafter.draft_to_target` set; its output layer has one row per draft-vocabulary token, as
EAGLE-3's d2t heads) is the same folder with three additions, which vLLM reads through respec's
model class `respec_verl.vllm_glue.draft_model.RespecDraftLlamaForCausalLM`:

- `config.json`: `architectures = ["RespecDraftLlamaForCausalLM"]` and `draft_vocab_size`; the
  `vocab_size` stays the target's (the input embedding is the target's full one);
- `model.safetensors`: `lm_head.weight` of shape [draft_vocab_size, hidden] and `draft_to_target`,
  the target token id of each draft output (int64, absolute ids).

`Drafter.serving_tensors` lists the tensors under the names a loader expects, tied ones included: a
model with tied embeddings has one `named_parameters()` entry for both the embedding and the
output layer, and an engine that keeps its own packed copy of the output layer (vLLM-CPU) would
keep stale weights there if `lm_head.weight` were left out.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from respec_verl.storage.atomic_dir import staged_folder
from respec_verl.drafter.drafter import DRAFT_TO_TARGET, Drafter

REDUCED_ARCHITECTURE = "RespecDraftLlamaForCausalLM"
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


def drafter_config(drafter: Drafter) -> dict:
    """The folder's config.json: the drafter's HF config, marked as reduced-vocabulary when it is."""
    config = drafter.model.config.to_dict()
    if drafter.draft_to_target is not None:
        config["architectures"] = [REDUCED_ARCHITECTURE]
        config["draft_vocab_size"] = int(drafter.draft_to_target.numel())
        config["tie_word_embeddings"] = False
    return config


def save_drafter_dir(
    drafter: Drafter, out_dir: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None
) -> Path:
    """Write `drafter` as a folder (complete or not at all); tokenizer files are copied from `tokenizer_from`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        tensors = {name: t.contiguous().cpu() for name, t in drafter.serving_tensors()}
        if drafter.model.config.tie_word_embeddings and drafter.draft_to_target is None:
            tensors.pop("lm_head.weight", None)  # as Hugging Face saves tied models: the loader re-ties it
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(drafter_config(drafter), indent=2), encoding="utf-8")
        if tokenizer_from is not None:
            copy_tokenizer_files(Path(tokenizer_from), staging)
    return out_dir


def copy_tokenizer_files(source: Path, dest: Path, names: Sequence[str] = TOKENIZER_FILES) -> None:
    for name in names:
        if (source / name).exists() and not (dest / name).exists():
            shutil.copy2(source / name, dest / name)


def load_drafter_dir(path: str | os.PathLike, dtype: torch.dtype = torch.float32, version: int = 0) -> Drafter:
    """Read a drafter folder (full or reduced vocabulary) back into a `Drafter`."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if raw.get("architectures") != [REDUCED_ARCHITECTURE]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        return Drafter(model, version=version)
    draft_vocab_size = int(raw["draft_vocab_size"])
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "draft_vocab_size")}
    config = AutoConfig.for_model(**raw)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.set_output_embeddings(torch.nn.Linear(config.hidden_size, draft_vocab_size, bias=False, dtype=dtype))
    tensors = load_file(str(path / "model.safetensors"))
    draft_to_target = tensors.pop(DRAFT_TO_TARGET).to(torch.long)
    if draft_to_target.numel() != draft_vocab_size:
        raise ValueError(f"{path}: {DRAFT_TO_TARGET} has {draft_to_target.numel()} ids, config says {draft_vocab_size}")
    model.load_state_dict(tensors, strict=True)
    return Drafter(model.eval(), draft_to_target=draft_to_target, version=version)
