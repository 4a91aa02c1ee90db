"""A self-draft checkpoint folder cut from the actor's: what vLLM loads as the drafter at start.

vLLM takes its drafter as a model folder. A self-draft is the actor's embedding, first N decoder
layers, final norm and output layer, so the folder is written by slicing the actor's safetensors
shards (no model is built, so this is cheap even for a large actor) and editing its config. With
a draft vocabulary the output layer keeps only those rows and the folder is a reduced-vocabulary
drafter (`respec_verl.drafter.drafter_dir`), which vLLM runs through respec's model class. The
folder is written beside and renamed into place: a crash never leaves half a drafter that a later
run would load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from respec_verl.storage.atomic_dir import staged_folder
from respec_verl.drafter.drafter_dir import DRAFT_TO_TARGET, REDUCED_ARCHITECTURE, copy_tokenizer_files

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
EMBEDDING = "model.embed_tokens.weight"
OUTPUT_LAYER = "lm_head.weight"


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a parameter name (`model.layers.3.mlp...` -> 3), None outside layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def write_self_draft_dir(
    actor_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_layers: int,
    draft_vocab: Sequence[int] | torch.Tensor | None = None,
) -> Path:
    """Write the actor's first `num_layers` decoder layers (plus embedding, norm, head) to `out_dir`.

    `draft_vocab`: target token ids the drafter predicts over (None: the full vocabulary). Returns
    `out_dir`. An existing `out_dir` is replaced only once the new folder is complete.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    actor_dir, out_dir = Path(actor_dir), Path(out_dir)
    config = json.loads((actor_dir / "config.json").read_text(encoding="utf-8"))
    total = int(config["num_hidden_layers"])
    if not 1 <= num_layers <= total:
        raise ValueError(
            f"actor_rollout_ref.respec.drafter.self_draft_layers = {num_layers} is not valid for "
            f"{actor_dir} ({total} layers); allowed: 1..{total}"
        )
    shards = sorted(actor_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {actor_dir}: a self-draft is cut from safetensors")

    config["num_hidden_layers"] = num_layers
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:num_layers]
    tensors = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                index = layer_index(name)
                if index is None or index < num_layers:
                    tensors[name] = f.get_tensor(name)
    if draft_vocab is not None:
        ids = torch.as_tensor(draft_vocab, dtype=torch.long).unique()
        vocab_size = int(config["vocab_size"])
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"draft vocabulary ids must lie in [0, {vocab_size}) and not be empty")
        head = tensors.get(OUTPUT_LAYER, tensors[EMBEDDING])  # tied models store only the embedding
        tensors[OUTPUT_LAYER] = head[ids].clone()
        tensors[DRAFT_TO_TARGET] = ids
        config.update(architectures=[REDUCED_ARCHITECTURE], draft_vocab_size=int(ids.numel()), tie_word_embeddings=False)
    with staged_folder(out_dir) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        copy_tokenizer_files(actor_dir, staging)
    return out_dir
