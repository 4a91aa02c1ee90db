"""vLLM scheduler subclasses that let respec's controller choose k at every engine step.

vLLM fixes its per-batch-size schedule (`num_speculative_tokens_per_batch_size`) when the engine
starts, and no public API reaches the scheduler of a running engine. The scheduler is where every
fact the controller needs already is: the live batch size, the k it scheduled, how many drafts
each request accepted, and the step's wall time. So the controller lives here, in the engine-core
process: `schedule()` lets vLLM build the step, then replaces its `num_spec_tokens_to_schedule`
(how many tokens to draft for the next step) by the controller's choice for the live batch size,
and `update_from_output()` feeds the step's outcome back. The engine is started with a schedule
too (any, the controller's initial one), so vLLM plans for a k that varies per step.

The controller's state (acceptance, choices per batch size) is written to a JSON
file (atomically, every `_SAVE_EVERY` observed steps and whenever the engine runs out of requests,
i.e. at the end of each rollout), which the trainer reads for metrics and
checkpoints, and which a restarted engine resumes from. Settings arrive through vLLM's
`additional_config["respec"]` (see `RespecvLLMHttpServer`), as plain JSON.

This module imports vLLM: only vLLM's engine-core process loads it, through `scheduler_cls`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from respec_verl.storage.json_file import write_json_atomic
from respec_verl.speculation.controller import AdaptiveController, ControllerConfig
from respec_verl.speculation.policy import FixedK, KPolicy
from respec_verl.speculation.profile import StepCostProfile
from respec_verl.speculation.stats import StepRecord

logger = logging.getLogger(__name__)

ADDITIONAL_CONFIG_KEY = "respec"
_SAVE_EVERY = 32


def build_policy(settings: dict[str, Any], max_k: int) -> KPolicy:
    """The k policy the settings ask for: adaptive from a profile (and saved state), or fixed."""
    config = ControllerConfig(**settings["controller"])
    if config.policy == "fixed":
        return FixedK(min(config.max_k, max_k))
    profile_path = settings.get("profile_path")
    if not profile_path:
        raise ValueError("the adaptive controller needs a step-cost profile: settings have no profile_path")
    with open(profile_path, encoding="utf-8") as f:
        profile = StepCostProfile.from_dict(json.load(f))
    controller = AdaptiveController(profile, config)
    state_path = settings.get("state_path")
    if state_path and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("controller"):
            controller.load_state_dict(state["controller"])
    return controller


class _RespecStepControl:
    """The per-step logic, mixed in before vLLM's sync or async scheduler class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._respec_init()

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        return self._respec_choose(super().schedule(*args, **kwargs))

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        self._respec_observe(scheduler_output, model_runner_output)
        result = super().update_from_output(scheduler_output, model_runner_output)
        self._respec_save_when_idle()
        return result

    def _respec_save_when_idle(self) -> None:
        """Save the state once nothing is left to run: the trainer reads it right after a rollout."""
        if self._respec_policy is not None and self._respec_unsaved and not self.has_unfinished_requests():
            self.respec_save_state()

    def _respec_init(self) -> None:
        settings = (self.vllm_config.additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
        self._respec_policy: KPolicy | None = None
        if not settings or self.num_spec_tokens <= 0:
            return
        self._respec_policy = build_policy(settings, self.num_spec_tokens)
        self._respec_state_path: str | None = settings.get("state_path")
        self._respec_choices: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._respec_started: dict[int, float] = {}  # step start, per scheduler output
        self._respec_observed = 0
        self._respec_unsaved = False  # steps chosen since the state file was last written
        logger.info("respec: k chosen per step by %s", type(self._respec_policy).__name__)

    def _respec_choose(self, output: Any) -> Any:
        """Replace vLLM's k for the drafts proposed after this step by the controller's."""
        policy = self._respec_policy
        batch_size = len(output.num_scheduled_tokens)
        if policy is None or batch_size == 0:
            return output
        k = min(int(policy.choose_k(batch_size)), self.num_spec_tokens)
        output.num_spec_tokens_to_schedule = k
        self._respec_choices[batch_size][k] += 1
        self._respec_unsaved = True
        self._respec_started[id(output)] = time.perf_counter()
        return output

    def _respec_observe(self, scheduler_output: Any, model_runner_output: Any) -> None:
        """Feed a finished decode step (batch size, verified k, accepted counts, wall time) back."""
        started = self._respec_started.pop(id(scheduler_output), None)
        policy = self._respec_policy
        if policy is None or started is None:
            return
        step_time = time.perf_counter() - started
        spec = scheduler_output.scheduled_spec_decode_tokens
        scheduled = scheduler_output.num_scheduled_tokens
        # a step with a prefill in it costs what the prompt costs: not evidence about k
        if any(n > 1 + len(spec.get(req_id, ())) for req_id, n in scheduled.items()):
            return
        k = max((len(tokens) for tokens in spec.values()), default=0)
        accepted = []
        if k:
            index = model_runner_output.req_id_to_index
            sampled = model_runner_output.sampled_token_ids
            for req_id, tokens in spec.items():
                if tokens and req_id in index and sampled:
                    accepted.append(max(len(sampled[index[req_id]]) - 1, 0))
        record = StepRecord(
            batch_size=len(scheduled),
            k=k,
            num_accepted=accepted if k else [],
            draft_time_s=0.0,
            target_time_s=step_time,
            step_time_s=step_time,
        )
        if k and len(accepted) != record.batch_size:
            return  # some rows drafted fewer tokens (length cap): per-position counts would be skewed
        policy.observe(record)
        self._respec_observed += 1
        if self._respec_observed % _SAVE_EVERY == 0:
            self.respec_save_state()

    def respec_save_state(self) -> None:
        """Write the controller's state and the k chosen per batch size to `state_path` (atomic)."""
        path = getattr(self, "_respec_state_path", None)
        policy = self._respec_policy
        if not path or policy is None:
            return
        doc = {
            "controller": policy.state_dict() if isinstance(policy, AdaptiveController) else None,
            "choices": {str(b): {str(k): n for k, n in ks.items()} for b, ks in self._respec_choices.items()},
            "observed_steps": self._respec_observed,
            "time": time.time(),
        }
        try:
            write_json_atomic(path, doc)
            self._respec_unsaved = False
        except OSError as e:  # metrics only: never stop generation over a state file
            logger.warning("respec: could not write controller state to %s: %s", path, e)


class RespecScheduler(_RespecStepControl, Scheduler):
    """vLLM's synchronous scheduler with respec's per-step k."""


class RespecAsyncScheduler(_RespecStepControl, AsyncScheduler):
    """vLLM's async scheduler with respec's per-step k (outputs arrive one step late; still per step)."""
