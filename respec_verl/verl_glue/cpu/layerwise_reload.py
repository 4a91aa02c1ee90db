"""P7 (blocker B11): load synced weights into a vLLM-CPU model through vLLM's layerwise reload.

After loading, vLLM's CPU backend post-processes each Linear into kernel format (oneDNN or
sgl-kernel packing in `dispatch_cpu_unquantized_gemm`): the `weight` Parameter is replaced by an
empty one without a `weight_loader`. verl's weight sync calls `model.load_weights(...)` on that
model, which fails with "'Parameter' object has no attribute 'weight_loader'", and then runs
`process_weights_after_loading` once more, which is not idempotent on packed layers.

vLLM's own answer is `GPUModelRunner.reload_weights(is_checkpoint_format=True)` (inherited by the
CPU runner): `initialize_layerwise_reload(model)` restores every layer's checkpoint-format
parameters (on meta) with loaders that buffer the incoming tensors, process each layer once all of
its weights have arrived and copy the result into the kernel tensors; `finalize_layerwise_reload`
processes what is left (attention) and puts back the kernel tensors of layers that got nothing.

- `layerwise_reload(model, model_config, vllm_config)` (`respec_verl/vllm_glue/layerwise_reload.py`):
  that bracket as a context manager, inside `set_current_vllm_config` (layer processing may read
  the current config); the drafter's update uses it too.
- `patch_extension`: wraps `vLLMColocateWorkerExtension.update_weights_from_ipc` so verl's plain
  (not LoRA, not quantized, not QAT) weight sync runs inside `layerwise_reload` for every model it
  updates, with verl's own trailing `process_weights_after_loading` skipped (finalize has done it).
  The wrapper sits on verl's class, so a subclass such as `RespecWorkerExtension` inherits it, and
  an override that calls `super().update_weights_from_ipc(...)` gets it too. Other paths fall
  through to verl's code unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType

from respec_verl.upstream.verl_compat import COLOCATE_EXTENSION, IS_QUANTIZED_MODEL, is_qat_extension, models_with_config
from respec_verl.upstream.vllm_compat import POSTPROCESS_AFTER_LOADING, swapped_module_global
from respec_verl.vllm_glue.layerwise_reload import layerwise_reload

logger = logging.getLogger(__name__)

EXTENSION_MODULE = COLOCATE_EXTENSION.module
EXTENSION_CLASS = COLOCATE_EXTENSION.attr
POSTPROCESS_MODULE = POSTPROCESS_AFTER_LOADING.module  # where verl imports it from, at call time


@contextmanager
def skipped_process_weights_after_loading() -> Iterator[None]:
    """`vllm...model_loader.utils.process_weights_after_loading` is a no-op inside (module attribute)."""

    def already_processed(model, model_config, target_device):
        logger.debug("process_weights_after_loading skipped: the layerwise reload has processed the layers")

    with swapped_module_global(POSTPROCESS_AFTER_LOADING, already_processed):
        yield


def is_plain_weight_sync(extension, peft_config, base_sync_done, is_quantized_model) -> bool:
    """verl's default branch of `update_weights_from_ipc`: not QAT, ModelOpt, a LoRA adapter or FP8."""
    if is_qat_extension(extension):
        return False
    if peft_config and base_sync_done:
        return False
    return not is_quantized_model(extension.model_runner.vllm_config)


def with_layerwise_reload(update_weights_from_ipc, is_quantized_model):
    """Wrap verl's `update_weights_from_ipc` (see the module docstring)."""

    @functools.wraps(update_weights_from_ipc)
    def wrapper(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False, **kwargs):
        call = functools.partial(
            update_weights_from_ipc, self, peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm, **kwargs
        )
        if not is_plain_weight_sync(self, peft_config, base_sync_done, is_quantized_model):
            return call()
        vllm_config = self.model_runner.vllm_config
        with ExitStack() as stack:
            for model, model_config in models_with_config(self):
                stack.enter_context(layerwise_reload(model, model_config, vllm_config))
            stack.enter_context(skipped_process_weights_after_loading())
            return call()

    wrapper._respec_cpu_layerwise = True
    return wrapper


def patch_extension(module: ModuleType) -> None:
    extension = getattr(module, EXTENSION_CLASS)
    current = extension.update_weights_from_ipc
    if not getattr(current, "_respec_cpu_layerwise", False):
        extension.update_weights_from_ipc = with_layerwise_reload(current, getattr(module, IS_QUANTIZED_MODEL.attr))


def install() -> None:
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(EXTENSION_MODULE, patch_extension)
