"""A self-draft checkpoint folder cut from the actor's: what vLLM's `draft_model` method loads at start.

vLLM takes its drafter as a model folder. A self-draft is the actor's embedding, first N decoder
layers, final norm and output layer, so the folder is written by slicing the actor's safetensors
shards (no model is built, so this is cheap even for a large actor) and editing its config. vLLM's
`draft_model` method needs the actor's vocabulary, so the output layer is kept whole. The folder
is written beside and renamed into place: a crash never leaves half a drafter that a later run
would load.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from respec_verl.atomic_dir import staged_folder

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Files a tokenizer may consist of; vLLM reads the drafter's config and weights, verl the tokenizer.
_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a parameter name (`model.layers.3.mlp...` -> 3), None outside layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def write_self_draft_dir(actor_dir: str | os.PathLike, out_dir: str | os.PathLike, num_layers: int) -> Path:
    """Write the actor's first `num_layers` decoder layers (plus embedding, norm, head) to `out_dir`.

    Returns `out_dir`. An existing `out_dir` is replaced only once the new folder is complete.
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
    with staged_folder(out_dir) as staging:
        tensors = {}
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    index = layer_index(name)
                    if index is None or index < num_layers:
                        tensors[name] = f.get_tensor(name)
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        for name in _SIDE_FILES:
            if (actor_dir / name).exists():
                shutil.copy2(actor_dir / name, staging / name)
    return out_dir
