"""P6 (blocker B10): copy received weights out of the shared-memory bucket on the CPU.

Without IPC, verl's weight sync packs the actor's tensors into one shared-memory bucket per round
trip (`verl/workers/rollout/vllm_rollout/bucketed_weight_transfer.py`), and the receiver in the
vLLM worker hands the loader `self.buffer[offset:offset+size].view(dtype).view(shape).to(device)`.
On a CUDA device `.to()` copies; on the CPU it returns the same view of the bucket. vLLM may keep
what it is given past the callback (the layerwise reload of P7 buffers a layer's tensors until all
of them have arrived, which can span buckets), so it would read weights that the next bucket has
overwritten, and the receiver's `shm.close()` fails with "BufferError: cannot close exported
pointers exist" while those views are alive.

The patch wraps `BucketedWeightReceiver.receive_weights` so that, on the shared-memory path with a
CPU target, each tensor handed to the callback is a copy. The CUDA-IPC and device paths are
untouched. Applied by a post-import hook, so vLLM is not imported where the module is not.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from respec_verl.upstream.verl_compat import WEIGHT_RECEIVER

RECEIVER_MODULE = WEIGHT_RECEIVER.module


def copies_on_host(receiver) -> bool:
    """Whether this receiver's tensors would be views of the shared-memory bucket."""
    return bool(receiver.use_shm) and torch.device(receiver.device).type == "cpu"


def copying_receive(receive_weights):
    """`receive_weights` whose callback gets copies of the bucket's tensors on the CPU shm path."""

    @functools.wraps(receive_weights)
    def wrapper(self, on_bucket_received, *args, **kwargs):
        if not copies_on_host(self):
            return receive_weights(self, on_bucket_received, *args, **kwargs)

        def on_bucket_copied(weights, *rest, **more):
            # clone: the bucket is overwritten by the next round trip and unmapped after the last
            return on_bucket_received([(name, tensor.clone()) for name, tensor in weights], *rest, **more)

        return receive_weights(self, on_bucket_copied, *args, **kwargs)

    wrapper._respec_cpu_copy = True
    return wrapper


def patch_receiver(module: ModuleType) -> None:
    receiver = getattr(module, WEIGHT_RECEIVER.attr)
    if not getattr(receiver.receive_weights, "_respec_cpu_copy", False):
        receiver.receive_weights = copying_receive(receiver.receive_weights)


def install() -> None:
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(RECEIVER_MODULE, patch_receiver)
