"""The online drafter learner: distil the actor into the drafter after each RL step (ReSpec Alg. 1).

The actor changes every step, so a frozen drafter goes stale. The learner keeps the latest rollouts
with the actor's soft labels, trains a private float32 copy of the drafter on them with the
reward-weighted KD loss, and publishes a new, never-mutated drafter (version + 1) for the rollout
engine to load (vLLM: `vllm_glue/worker_extension.py`). In async mode the update runs in a background thread (torch releases the GIL) while
the caller runs the actor update or the next rollout; at most one update is in flight, so a
rollout uses a drafter at most one version behind. A bad update (NaN or exploding loss or
gradient, or any exception) never reaches the RL loop: the learner restores its last good state,
logs a warning and counts the failure. With a `RankSync`, the learners of all data-parallel ranks
train one drafter: gradients are averaged and every guard is decided on all ranks' values, so each
rank publishes the same weights under the same version.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from respec_verl.drafter.distill import KDBatch, attach_teacher, batch_logits, make_kd_batch
from respec_verl.drafter.kd_loss import TeacherTargets, sequence_weights, teacher_targets, unrolled_kd_loss
from respec_verl.drafter.learner_config import CONFIG_KEY, LearnerConfig, resolve_overlap  # noqa: F401 (re-exported)
from respec_verl.drafter.precision import resolve_compute_dtype
from respec_verl.drafter.rank_sync import RankSync
from respec_verl.drafter.recording import LabelledRollout, record_update
from respec_verl.speculation.drafting import TrainableDrafter

logger = logging.getLogger(__name__)

class _Rejected(Exception):
    """An update tripped a guard (non-finite or exploding loss or gradient)."""


class DrafterLearner:
    """Trains a copy of `drafter` online on the actor's rollouts and publishes versioned drafters.

    Any `TrainableDrafter` (the self-draft, an EAGLE-3 head) can be trained: the learner sees only
    its module, the parameters an update changes, its logits and `replica`, which wraps a trained
    copy as a new drafter of the same kind.

    Give `target` (the actor) to have the learner compute the actor's labels itself when rollouts
    are added; otherwise pass the actor's logits to `add_rollouts`. Labels are taken when rollouts
    are added, not at update time, because the actor is updated in place while an async drafter
    update runs.
    """

    def __init__(
        self,
        drafter: TrainableDrafter,
        config: LearnerConfig | None = None,
        target: torch.nn.Module | None = None,
        rank_sync: RankSync | None = None,
    ):
        self.config = config or LearnerConfig()
        self.target = target
        self._sync = rank_sync  # data-parallel ranks train one drafter (`rank_sync`); None: this rank alone
        self._dtype = next(drafter.model.parameters()).dtype
        model = copy.deepcopy(drafter.model).float()
        model.eval()
        self._train = drafter.replica(model, drafter.version)
        self._trainable = self._train.trainable_parameters()
        trained = {id(p) for p in self._trainable}
        for param in model.parameters():  # no gradient for frozen tensors (a self-draft's dense [V, d] embedding)
            param.requires_grad_(id(param) in trained)
        self._optimizer = torch.optim.AdamW(self._trainable, lr=self.config.lr, weight_decay=0.0)
        self._rng = random.Random(self.config.seed)
        self._buffer: deque[LabelledRollout] = deque(maxlen=self.config.buffer_size)
        self._lock = threading.Lock()  # guards the buffer, the published drafter and the counters
        self._thread: threading.Thread | None = None
        self._updates = self._failures = self._tokens_seen = 0
        self._metrics: dict[str, float] = {}
        self._published = self._publish()

    # ---- inputs -------------------------------------------------------------------------------

    def add_rollouts(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        scores: Sequence[float] | torch.Tensor | None = None,
        teacher_logits: Sequence[torch.Tensor] | None = None,
        teacher_features: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Buffer rollouts: scores are rewards or advantages (per `weighting`); empty responses are skipped.

        `teacher_logits[i]` holds the actor's logits [>= len(responses[i]), V] at the positions that
        predict each response token (what verl's actor computes for response log-probs). A drafter
        that reads the actor's hidden states (`target_layers`, EAGLE-3) also needs
        `teacher_features[i]`, those layers' hidden states side by side at every position of the
        prompt and the response [>= len(prompts[i]) + len(responses[i]), F], from the same forward.
        """
        if self.config.interval == 0:  # a frozen drafter: no update will ever read the buffer
            return
        n = len(prompts)
        if len(responses) != n or (scores is not None and len(scores) != n):
            raise ValueError(f"got {n} prompts and {len(responses)} responses, and scores for each are needed")
        if scores is None and self.config.weighting != "uniform":
            raise ValueError(f"weighting={self.config.weighting!r} needs a score (reward or advantage) per rollout")
        if teacher_logits is None and self.target is None:
            raise ValueError("pass teacher_logits, or give the learner the target (actor) model to compute them")
        if teacher_logits is not None and getattr(self._train, "target_layers", ()) and (
            teacher_features is None or len(teacher_features) != n
            or any(len(teacher_features[i]) < len(prompts[i]) + len(responses[i]) for i in range(n))
        ):
            raise ValueError("this drafter reads the actor's hidden states: pass teacher_features, one "
                             "[>= len(prompt) + len(response), F] tensor per rollout, with teacher_logits")
        if teacher_logits is not None and (
            len(teacher_logits) != n or any(len(teacher_logits[i]) < len(responses[i]) for i in range(n))
        ):
            raise ValueError("teacher_logits needs one [>= len(response), V] tensor per rollout")
        keep = [i for i in range(n) if len(responses[i]) > 0 and len(prompts[i]) > 0]
        score_list = [math.nan] * n if scores is None else [float(s) for s in scores]
        if teacher_logits is not None:
            labels = [(self._labels(teacher_logits[i][: len(responses[i])]), self._features(teacher_features, i,
                        len(prompts[i]) + len(responses[i]))) for i in keep]
        else:
            labels = self._labels_from_target([prompts[i] for i in keep], [responses[i] for i in keep])
        with self._lock:
            for i, (teacher, features) in zip(keep, labels):
                rollout = LabelledRollout(list(prompts[i]), list(responses[i]), score_list[i], teacher, features)
                self._buffer.append(rollout)

    def add_labelled(self, rollouts: Sequence[LabelledRollout]) -> None:
        """Buffer rollouts that carry their labels already (recorded ones, replayed offline)."""
        with self._lock:
            self._buffer.extend(rollouts)

    def label_logits(self, logits: torch.Tensor) -> TeacherTargets:
        """The actor's labels [B, T, K] from its logits [B, T, V], as this learner trains on them
        (its temperature, the drafter's vocabulary, top-k); for labels taken from another pass."""
        draft_map = None if self._train.draft_to_target is None else self._train.draft_to_target.to(logits.device)
        return teacher_targets(logits.detach(), self.config.temperature, draft_map, self.config.top_k)

    def _features(self, features: Sequence[torch.Tensor] | None, i: int, length: int) -> torch.Tensor | None:
        """Rollout i's hidden states at its `length` positions, for a drafter that reads them (else None)."""
        if features is None or not getattr(self._train, "target_layers", ()):
            return None
        return features[i][:length].detach().float().cpu()

    def _labels(self, logits: torch.Tensor) -> TeacherTargets:
        t = self.label_logits(logits[None].cpu())
        return TeacherTargets(t.logprobs[0], None if t.sparse_ids is None else t.sparse_ids[0])

    def _labels_from_target(
        self, prompts: list[Sequence[int]], responses: list[Sequence[int]]
    ) -> list[tuple[TeacherTargets, torch.Tensor | None]]:
        """Per rollout: the labels, and the hidden states at every position when the drafter reads them."""
        labels = []
        for start in range(0, len(prompts), self.config.batch_size):
            rows = range(start, min(start + self.config.batch_size, len(prompts)))
            batch = make_kd_batch([prompts[r] for r in rows], [responses[r] for r in rows])
            attach_teacher(batch, self.target, self._train, self.config.temperature, self.config.top_k)
            for row, r in enumerate(rows):
                at = slice(len(prompts[r]) - 1, len(prompts[r]) - 1 + len(responses[r]))
                ids = batch.teacher.sparse_ids
                logprobs = batch.teacher.logprobs[row, at].cpu()
                features = None
                if batch.features is not None:
                    features = batch.features[row, : len(prompts[r]) + len(responses[r])].cpu()
                labels.append((TeacherTargets(logprobs, None if ids is None else ids[row, at].cpu()), features))
        return labels

    # ---- updates ------------------------------------------------------------------------------

    def update(self, step: int, cpu_threads: int | None = None) -> dict[str, float] | None:
        """Start the drafter update of RL step `step` (every `interval` steps) on the buffered rollouts.

        Sync mode returns this update's metrics. Async mode returns None at once (`wait()` gives the
        metrics); if the previous update is still running it first waits for it, so that no rollout
        ever uses a drafter more than one version behind. `cpu_threads` sets torch's CPU threads for
        the update's own thread (for an update that runs while nothing else computes: verl's Ray
        workers run torch on one thread); None keeps the caller's.
        """
        if self.config.interval == 0 or step % self.config.interval != 0:
            return None
        self.wait()
        with self._lock:
            rollouts = list(self._buffer)
            self._buffer.clear()
        if self._sync is not None and self._ranks_without_rollouts(len(rollouts)):  # all ranks update, or none
            with self._lock:
                self._buffer.extendleft(reversed(rollouts))
            return None
        if not rollouts:
            return None
        if not self.config.async_update:
            return self._run(rollouts, cpu_threads)
        self._thread = threading.Thread(
            target=self._run, args=(rollouts, cpu_threads), name="respec-drafter-update", daemon=True
        )
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> dict[str, float]:
        """Block until the running update (if any) ends; returns the metrics of the last finished one."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.metrics

    @property
    def overlap(self) -> str:
        """Where the caller should run an async update (`LearnerConfig.overlap`, "auto" resolved
        for the device the drafter trains on)."""
        return resolve_overlap(self.config.overlap, next(self._train.model.parameters()).device.type)

    @property
    def pending(self) -> bool:
        """True while an async update is running (the published drafter is then one version behind)."""
        return self._thread is not None and self._thread.is_alive()

    def latest(self) -> TrainableDrafter:
        """The newest drafter whose update finished; the learner never mutates it."""
        with self._lock:
            return self._published

    @property
    def version(self) -> int:
        return self.latest().version

    @property
    def frozen_names(self) -> frozenset[str]:
        """State-dict names of the tensors no update changes (the input embedding, and an output
        layer tied to it): a rollout engine holding them from an earlier push needs them only once."""
        frozen = {p.data_ptr() for p in self._train.model.parameters() if not p.requires_grad}
        state = self._train.model.state_dict(keep_vars=True)
        return frozenset(name for name, t in state.items() if t.data_ptr() in frozen)

    @property
    def metrics(self) -> dict[str, float]:
        with self._lock:
            return dict(self._metrics)

    def _run(self, rollouts: list[LabelledRollout], cpu_threads: int | None = None) -> dict[str, float]:
        """One update, all or nothing; never raises (it runs in the RL loop's thread or in the background)."""
        start = time.perf_counter()
        snapshot, weights = None, torch.ones(len(rollouts))
        before = torch.get_num_threads()  # torch's count is per thread: this thread's, restored if changed
        try:
            if cpu_threads:
                torch.set_num_threads(cpu_threads)
            snapshot = self._rollback_point()
            scores = torch.tensor([r.score for r in rollouts], dtype=torch.float32)
            weights = sequence_weights(scores, self.config.weighting, self.config.w_min)
            losses, norms, tokens = self._train_on(rollouts, weights)
            published = self._publish(self._train.version + 1)
        except Exception as error:  # noqa: BLE001 - a drafter failure must never stop the RL run
            if snapshot is not None:  # no snapshot: the training copy was never touched
                self._roll_back(snapshot)
            reason = f"{type(error).__name__}: {error}"
            logger.warning("drafter update rejected, keeping drafter version %d: %s", self.version, reason)
            ok, losses, norms, tokens = False, [math.nan], [math.nan], 0
        else:
            ok = True
        finally:
            if cpu_threads:
                torch.set_num_threads(before)
        if ok and self.config.record_dir:
            try:
                record_update(self.config.record_dir, published.version, rollouts)
            except OSError as error:  # a record is for analysis: it must not fail the update
                logger.warning("could not record drafter update %d: %s", published.version, error)
        with self._lock:
            if ok:
                self._train.version += 1
                self._published = published
                self._updates += 1
                self._tokens_seen += tokens
            else:
                self._failures += 1
            self._metrics = {
                "respec/drafter/loss": sum(losses) / len(losses),
                "respec/drafter/loss_last": losses[-1],
                "respec/drafter/grad_norm": sum(norms) / len(norms),
                "respec/drafter/weight_mean": float(weights.mean()),
                "respec/drafter/weight_min": float(weights.min()),
                "respec/drafter/weight_max": float(weights.max()),
                "respec/drafter/rollouts": float(len(rollouts)),
                "respec/drafter/tokens": float(tokens),
                "respec/drafter/tokens_seen": float(self._tokens_seen),
                "respec/drafter/update_time_s": time.perf_counter() - start,
                "respec/drafter/version": float(self._published.version),
                "respec/drafter/updates": float(self._updates),
                "respec/drafter/failures": float(self._failures),
                "respec/drafter/update_ok": float(ok),
            }
            return dict(self._metrics)

    def _train_on(self, rollouts: list[LabelledRollout], weights: torch.Tensor) -> tuple[list[float], list[float], int]:
        """`steps_per_update` optimizer steps over shuffled mini-batches of the rollouts."""
        order = list(range(len(rollouts)))
        self._rng.shuffle(order)
        size = min(self.config.batch_size, len(order))
        losses, norms, tokens = [], [], 0
        for step in range(self.config.steps_per_update):
            rows = [order[(step * size + j) % len(order)] for j in range(size)]
            def make_batch(rows: list[int] = rows) -> KDBatch:
                return self._batch([rollouts[r] for r in rows], weights[rows])

            loss, norm, batch = self._optimizer_step(make_batch, step)
            losses.append(loss)
            norms.append(norm)
            tokens += int(batch.response_mask.sum())
        trained = self._train.model.named_parameters()
        bad = [name for name, p in trained if p.requires_grad and not torch.isfinite(p).all()]
        if self._agreed(bool(bad)):
            raise _Rejected(f"non-finite drafter weights after the update: {bad[:3]}")
        return losses, norms, tokens

    def _optimizer_step(self, make_batch: Callable[[], KDBatch], step: int) -> tuple[float, float, KDBatch]:
        """One optimizer step on the batch `make_batch` builds; returns the loss, the gradient norm and the batch."""
        model = self._train.model
        model.train()
        try:
            error, value = None, math.nan
            try:  # an error here on one rank must reach the other ranks' next collective as a rejection
                batch = make_batch()
                with self._autocast():
                    logits = batch_logits(self._train, batch)
                    loss = self._loss(logits, batch)  # the loss takes its log-softmax in float32
                value = float(loss.detach())
            except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
                error = e
            if self._agreed(error is not None or not math.isfinite(value) or value > self.config.max_loss):
                raise error or _Rejected(f"loss {value:.4g} at optimizer step {step} "
                                         f"(max_loss {self.config.max_loss:g}; on this rank or another)")
            self._optimizer.zero_grad(set_to_none=True)
            try:
                loss.backward()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
                error = e
            if self._agreed(error is not None):
                raise error or _Rejected(f"backward failed on another rank at optimizer step {step}")
            if self._sync is not None:
                self._sync.average_gradients(self._trainable)
            norm = float(torch.nn.utils.clip_grad_norm_(self._trainable, self.config.grad_clip))
            if self._agreed(not math.isfinite(norm) or norm > self.config.max_grad_norm):
                limit = self.config.max_grad_norm
                raise _Rejected(f"gradient norm {norm:.4g} at optimizer step {step} (max_grad_norm {limit:g})")
            self._optimizer.step()
        finally:
            self._optimizer.zero_grad(set_to_none=True)
            model.eval()
        return value, norm, batch

    def _ranks_without_rollouts(self, count: int) -> bool:
        """Whether some rank has nothing to train on (then no rank updates); a failed collective
        counts as yes, so that it never reaches the RL loop."""
        try:
            return self._sync.min(count) == 0
        except Exception as error:  # noqa: BLE001
            logger.warning("drafter update skipped: the ranks could not agree on it: %s", error)
            return True

    def _agreed(self, bad: bool) -> bool:
        """Whether some rank found its step bad (this rank's finding without a rank sync)."""
        return bad if self._sync is None else self._sync.any(bad)

    def _autocast(self) -> torch.autocast:
        """The forward pass's mixed precision (`compute_dtype`); autocast is per thread, so an async
        update's never reaches the actor update it overlaps."""
        device = next(self._train.model.parameters()).device
        dtype = resolve_compute_dtype(self.config.compute_dtype, device)
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _loss(self, draft_logits: torch.Tensor, batch: KDBatch) -> torch.Tensor:
        """The training objective (a hook, so tests can slow it down or break it on purpose)."""
        c = self.config
        return unrolled_kd_loss(
            draft_logits, batch.teacher, batch.response_mask, batch.weights, c.temperature, c.aggregation
        )

    def _batch(self, rollouts: list[LabelledRollout], weights: torch.Tensor) -> KDBatch:
        """Right-padded ids with the stored labels placed at the positions that predict the response."""
        batch = make_kd_batch([r.prompt for r in rollouts], [r.response for r in rollouts])
        (rows, width), first = batch.input_ids.shape, rollouts[0]
        logprobs = torch.zeros(rows, width, first.teacher.logprobs.shape[-1])
        sparse = None
        if first.teacher.sparse_ids is not None:
            sparse = torch.zeros(rows, width, first.teacher.sparse_ids.shape[-1], dtype=torch.long)
        for row, rollout in enumerate(rollouts):
            at = slice(len(rollout.prompt) - 1, len(rollout.prompt) - 1 + len(rollout.response))
            logprobs[row, at] = rollout.teacher.logprobs
            if sparse is not None:
                sparse[row, at] = rollout.teacher.sparse_ids
        device = next(self._train.model.parameters()).device
        batch.input_ids, batch.attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        batch.response_mask = batch.response_mask.to(device)
        batch.teacher = TeacherTargets(logprobs.to(device), None if sparse is None else sparse.to(device))
        batch.weights = weights.to(device)
        if first.features is not None:  # the actor's hidden states at every position, right-padded
            batch.features = torch.zeros(rows, width, first.features.shape[-1])
            for row, rollout in enumerate(rollouts):
                batch.features[row, : len(rollout.features)] = rollout.features
            batch.features = batch.features.to(device)
        return batch

    # ---- state --------------------------------------------------------------------------------

    def _publish(self, version: int | None = None) -> TrainableDrafter:
        """An inference copy of the training drafter in the original dtype, frozen.

        The copy shares the tensors no update changes (the frozen embedding, most of a self-draft's
        bytes) with the training drafter where the dtypes match, so a published version costs only
        the trained layers' memory.
        """
        shared: dict[int, Any] = {}
        if self._dtype == torch.float32:  # the training copy's dtype; `.to` would convert a shared tensor in both
            shared = {id(p): p for p in self._train.model.parameters() if not p.requires_grad}
        model = copy.deepcopy(self._train.model, memo=shared).to(self._dtype).eval()
        model.requires_grad_(False)
        return self._train.replica(model, self._train.version if version is None else version)

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        weights = {name: t.detach().clone() for name, t in self._train.model.state_dict().items()}
        return weights, copy.deepcopy(self._optimizer.state_dict())

    def _rollback_point(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """What an update can change: the trainable tensors and the optimizer (not the frozen embedding)."""
        return [p.detach().clone() for p in self._trainable], copy.deepcopy(self._optimizer.state_dict())

    def _roll_back(self, point: tuple[list[torch.Tensor], dict[str, Any]]) -> None:
        with torch.no_grad():
            for param, saved in zip(self._trainable, point[0]):
                param.copy_(saved)
        self._optimizer.load_state_dict(point[1])
        self._optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: drafter weights, optimizer state, version, counters (not the rollout buffer)."""
        self.wait()
        weights, optimizer = self._snapshot()
        return {
            "model": weights,
            "optimizer": optimizer,
            "version": self._train.version,
            "counters": {"updates": self._updates, "failures": self._failures, "tokens_seen": self._tokens_seen},
            "rng": self._rng.getstate(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the restored drafter is published at its saved version."""
        self.wait()
        self._train.model.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._rng.setstate(state["rng"])
        with self._lock:
            self._train.version = int(state["version"])
            counters = state["counters"]
            self._updates, self._failures = int(counters["updates"]), int(counters["failures"])
            self._tokens_seen = int(counters["tokens_seen"])
            self._published = self._publish()
