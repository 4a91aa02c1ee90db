"""vLLM's layerwise reload as one bracket: load checkpoint-format weights into a model that vLLM has post-processed.

vLLM's CPU backend (and quantised GPU layers) repack each Linear into kernel format after loading,
so a second `load_weights` finds no `weight_loader`. vLLM's own answer,
`GPUModelRunner.reload_weights(is_checkpoint_format=True)`, is `initialize_layerwise_reload` ...
`finalize_layerwise_reload`; `layerwise_reload` is that pair as a context manager, for any model in
a vLLM worker: the target (verl's weight sync on a CPU: `verl_glue/cpu/layerwise_reload.py`) and
the drafter (`worker_extension.py`). Written against vLLM 0.31 (`vllm.model_executor.model_loader.reload`,
pinned by `tests/test_upstream_contracts.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def layerwise_reload(model, model_config, vllm_config) -> Iterator[None]:
    """Inside: `model.load_weights(checkpoint-format weights)`; on exit every layer is in kernel format.

    Finalises even when loading fails, so no layer is left on the meta device; a layer that got no
    weights keeps its previous ones (vLLM logs "<Layer>: Failed to load weights" for those).
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    with set_current_vllm_config(vllm_config):
        initialize_layerwise_reload(model)
        try:
            yield
        finally:
            finalize_layerwise_reload(model, model_config)
