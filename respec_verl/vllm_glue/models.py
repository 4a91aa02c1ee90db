"""respec's model classes in vLLM's registry: the `vllm.general_plugins` entry point.

vLLM calls every general plugin once per process (API server, engine core, workers) before it
resolves a model's architecture. Registration by "module:Class" string keeps vLLM's own lazy
loading: nothing of respec's vLLM glue is imported until a drafter folder names the class.
"""

from __future__ import annotations

from respec_verl.drafter.drafter_dir import REDUCED_ARCHITECTURE

MODEL_CLASSES = {REDUCED_ARCHITECTURE: "respec_verl.vllm_glue.draft_model:RespecDraftLlamaForCausalLM"}


def register() -> None:
    """Add respec's drafter architectures to vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for architecture, target in MODEL_CLASSES.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, target)
