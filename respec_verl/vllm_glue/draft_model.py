"""vLLM's model class for respec's reduced-vocabulary drafters (`draft_model` speculative method).

vLLM's `draft_model` method runs any causal LM with the target's vocabulary. For a small target the
drafter's full output layer is most of its cost (SmolLM2-135M: 49152 x 576, a fifth of the whole
model), so respec's self-drafts predict over a few thousand frequent tokens only, as EAGLE-3 heads
do (`drafter_dir.py` describes the folder). This class is vLLM's `LlamaForCausalLM` with that head:
`compute_logits` scores the draft vocabulary and spreads it over the target's (-inf elsewhere), so
vLLM's proposer and rejection sampler see ordinary full-vocabulary logits. A token outside the
draft vocabulary is never proposed, which costs acceptance, never correctness: verification is
against the target's own distribution. Probabilistic drafting samples in the draft vocabulary
(`draft_sampling.py`): the class installs that path when vLLM builds it.

Registered with vLLM's model registry by `respec_verl.vllm_glue.models.register` (a
`vllm.general_plugins` entry point), so it loads in every vLLM process without being imported
elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import maybe_prefix

from respec_verl.upstream.vllm_compat import init_llama_model
from respec_verl.vllm_glue import draft_sampling


class RespecDraftLlamaForCausalLM(LlamaForCausalLM):
    """A Llama whose output layer covers `config.draft_vocab_size` tokens, mapped by `draft_to_target`."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        self.config = config
        self.draft_vocab_size = int(config.draft_vocab_size)
        self.model = init_llama_model(self, vllm_config, maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(
            self.draft_vocab_size,
            config.hidden_size,
            quant_config=vllm_config.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        self.logits_processor = LogitsProcessor(self.draft_vocab_size, scale=getattr(config, "logit_scale", 1.0))
        # target token id of each draft output; zeros until the weights arrive (dummy loading skips ints)
        self.draft_to_target = nn.Parameter(torch.zeros(self.draft_vocab_size, dtype=torch.long), requires_grad=False)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        draft_sampling.install(RespecDraftLlamaForCausalLM)

    def compute_draft_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Logits over the draft vocabulary [N, draft_vocab_size]; `draft_to_target` names their ids."""
        return self.logits_processor(self.lm_head, hidden_states)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        draft_logits = self.compute_draft_logits(hidden_states)
        if draft_logits is None:
            return None
        logits = draft_logits.new_full((draft_logits.shape[0], self.config.vocab_size), float("-inf"))
        logits[:, self.draft_to_target] = draft_logits
        return logits
