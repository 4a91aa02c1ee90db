"""An EAGLE-3 head as the folder vLLM's `eagle3` method loads (`speculative_config.model`).

vLLM's `Eagle3LlamaForCausalLM` reads:

- `config.json`: a Llama config with `num_hidden_layers = 1`, `architectures =
  ["LlamaForCausalLMEagle3"]`, `draft_vocab_size`, `target_hidden_size`,
  `eagle_aux_hidden_state_layer_ids` (the target layers whose residual streams are fused; vLLM's
  model runners capture these from the target) and `eagle_config = {"eagle_aux_hidden_state_layer_ids":
  [...], "use_aux_hidden_state": true}` (from which `llama_eagle3` sizes `fc`);
- `model.safetensors`: `fc.weight`, `midlayer.*` (mapped to its `layers.0.*`, q/k/v and gate/up
  stacked on load), `norm.weight`, `lm_head.weight` [draft_vocab_size, d], and, for a reduced
  vocabulary, `d2t` (int64 offsets: draft id j is target id j + d2t[j]) and `t2d` (bool over the
  target vocabulary, which vLLM skips). No `embed_tokens`: vLLM then shares the target's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from respec_verl.drafter.eagle3 import Eagle3Drafter
from respec_verl.drafter.eagle3_head import Eagle3Head
from respec_verl.storage.atomic_dir import staged_folder


def save_eagle3_dir(drafter: Eagle3Drafter, out_dir: str | os.PathLike) -> Path:
    """Write the head as a vLLM EAGLE-3 folder (complete or not at all)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tensors = {name: t.contiguous().cpu() for name, t in drafter.serving_tensors()}
    if drafter.draft_to_target is not None:
        t2d = torch.zeros(drafter.model.config.vocab_size, dtype=torch.bool)
        t2d[drafter.draft_to_target.cpu()] = True
        tensors["t2d"] = t2d
    with staged_folder(out_dir) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = drafter.model.config.to_dict()
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir


def load_eagle3_dir(
    path: str | os.PathLike, target: torch.nn.Module, dtype: torch.dtype = torch.float32, version: int = 0,
    unroll: int = 3,
) -> Eagle3Drafter:
    """Read a head folder back; the input embedding is the folder's if it has one, else a copy of `target`'s."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config = AutoConfig.for_model(**raw)
    head = Eagle3Head(config)
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("t2d", None)
    d2t = tensors.pop("d2t", None)
    draft_to_target = None if d2t is None else d2t.to(torch.long) + torch.arange(d2t.numel())
    embedding = target.get_input_embeddings().weight
    tensors.setdefault("embed_tokens.weight", embedding.detach().to(device="cpu", copy=True))
    head.load_state_dict(tensors, strict=True)
    head = head.to(dtype=dtype, device=embedding.device).eval()
    if draft_to_target is not None:
        draft_to_target = draft_to_target.to(embedding.device)
    return Eagle3Drafter(head, draft_to_target, version, unroll)
