"""Probabilistic drafting over the draft vocabulary only, for respec's reduced-vocabulary drafters.

With `draft_sample_method="probabilistic"` vLLM's proposer samples each draft token from the full
logits the draft model returns (`compute_probs_and_sample_next_token`): a temperature divide, a
softmax, a tensor of exponential noise, a clone and an argmax, all over the target's vocabulary,
for every row and every drafted position. For `RespecDraftLlamaForCausalLM` those logits are -inf
outside a few thousand draft ids (SmolLM2: 2048 of 49152), so all but 4% of that work, the random
numbers above all, is spent on zeros, and on a CPU that work can outweigh the small draft
model's forward (`bench/vllm_cpu_steps.py`, docs/notebook/verl-e2e-and-demo.md, section 5).

`sample_reduced_draft` does the same sampling in the draft vocabulary and spreads the result: the
same q (softmax of the draft logits at the request's temperature, zero outside the draft
vocabulary), a token drawn from q by the same exponential race, and the full-vocabulary q that
vLLM's rejection sampler reads. Verification is unchanged, so speculation stays lossless.
`install` puts it in front of vLLM's `SpecDecodeBaseProposer._sample_draft_tokens` for proposers
whose model is respec's reduced-vocabulary class; every other proposer keeps vLLM's own path.
Proposed upstream in `docs/upstream/vllm-draft-model-reduced-vocab.md`.
"""

from __future__ import annotations

import torch

from respec_verl.upstream.vllm_compat import (
    SAMPLING_EPS,
    probabilistic_draft_probs,
    sample_draft_tokens_method,
    set_sample_draft_tokens_method,
)

_PATCH_MARK = "_respec_reduced_draft_sampling"
_enabled = True  # set_enabled(False): vLLM's own path, for the benchmark's side-by-side


def sample_reduced_draft(
    draft_logits: torch.Tensor,
    draft_to_target: torch.Tensor,
    vocab_size: int,
    temperature: torch.Tensor,
    all_random: bool = True,
    use_fp64_noise: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft tokens [N] (target ids) and their distribution q [N, vocab_size] (float32).

    draft_logits [N, draft_vocab] are the draft head's logits; draft_to_target [draft_vocab] maps
    each to a target id; temperature [N] is per row, and rows below vLLM's epsilon are greedy
    (argmax of q, as vLLM does) unless `all_random` says there are none.
    """
    temperature = temperature.to(torch.float32)
    is_greedy = None if all_random else temperature < SAMPLING_EPS
    if is_greedy is not None:
        temperature = torch.where(is_greedy, torch.ones_like(temperature), temperature)
    probs = (draft_logits.to(torch.float32) / temperature.view(-1, 1)).softmax(dim=-1)
    noise = torch.empty(probs.shape, dtype=torch.float64 if use_fp64_noise else torch.float32, device=probs.device)
    noise.exponential_(generator=generator)
    picked = (probs / noise).argmax(dim=-1)  # the exponential race: argmax p_i / E_i is distributed as p
    if is_greedy is not None:
        picked = torch.where(is_greedy, probs.argmax(dim=-1), picked)
    full = probs.new_zeros((probs.shape[0], vocab_size))
    full[:, draft_to_target] = probs
    return draft_to_target[picked], full


def _patched(original, model_class: type):
    def sample_draft_tokens(self, hidden_states: torch.Tensor, sampling_metadata):
        model = getattr(self, "model", None)
        if (not _enabled or not isinstance(model, model_class) or not probabilistic_draft_probs(self)
                or sampling_metadata.all_greedy or self.use_heterogeneous_vocab):
            return original(self, hidden_states, sampling_metadata)
        draft_logits = model.compute_draft_logits(hidden_states)
        temperature = sampling_metadata.temperature
        if temperature.shape[0] != draft_logits.shape[0]:  # parallel drafting: K rows per request, as vLLM
            temperature = temperature.repeat_interleave(draft_logits.shape[0] // temperature.shape[0], dim=0)
        return sample_reduced_draft(draft_logits, model.draft_to_target, model.config.vocab_size, temperature,
                                    all_random=sampling_metadata.all_random, use_fp64_noise=self.use_fp64_gumbel)

    setattr(sample_draft_tokens, _PATCH_MARK, original)
    return sample_draft_tokens


def install(model_class: type) -> None:
    """Route probabilistic drafting of `model_class` drafters through `sample_reduced_draft` (idempotent).

    Called by `RespecDraftLlamaForCausalLM` (with itself) as vLLM builds it. The class needs
    `compute_draft_logits(hidden_states)` and `draft_to_target`.
    """
    current = sample_draft_tokens_method()
    if not hasattr(current, _PATCH_MARK):
        set_sample_draft_tokens_method(_patched(current, model_class))


def set_enabled(enabled: bool) -> None:
    """Whether installed patches sample in the draft vocabulary (True) or take vLLM's own path (False)."""
    global _enabled
    _enabled = bool(enabled)
