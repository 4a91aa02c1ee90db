"""verl's vLLM rollout server and replica, with respec's speculative decoding when it is on.

`RespecvLLMHttpServer` subclasses verl's `vLLMHttpServer` through its documented hooks only:
- `_preprocess_engine_kwargs` adds vLLM's `speculative_config` for the drafter (`draft_model`,
  k up to the controller's `max_k`, a starting per-batch-size schedule), our scheduler class
  (the controller picks k every engine step, see `scheduler.py`), its settings as
  `additional_config["respec"]`, and per-request speculative-decoding metrics;
- `_get_worker_extension_cls` names `RespecWorkerExtension` (drafter hot-swap);
- `_resolve_sleep_level` keeps level 1, because level 2 discards weights only the drafter has;
- `collective_rpc` returns the workers' results (verl's drops them), for the drafter version check;
- `generate` adds verl's `spec_num_draft_tokens` / `spec_num_accepted_tokens` /
  `spec_num_verify_steps` to each rollout's `extra_fields`, which the trainer turns into
  `rollout/spec_accept_length` and `rollout/spec_accept_rate`.

Settings come from `RolloutConfig.custom["respec"]`, which respec's trainer fills in; without
them (respec off) every hook defers to verl, so the server is verl's own.

This module imports verl's vLLM server, hence vLLM: it is loaded only by the replica loader that
the plugin registers, in processes that start rollout servers.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from respec_verl.vllm_glue.settings import CUSTOM_KEY, RolloutSettings

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "respec_verl.vllm_glue.worker_extension.RespecWorkerExtension"
SCHEDULER = "respec_verl.vllm_glue.scheduler.RespecScheduler"
ASYNC_SCHEDULER = "respec_verl.vllm_glue.scheduler.RespecAsyncScheduler"


def spec_fields(metrics: Any) -> dict[str, int]:
    """verl's per-rollout spec fields from vLLM's `RequestSpecDecodeMetrics` (a histogram of accepted counts)."""
    histogram = list(getattr(metrics, "histogram", None) or [])
    return {
        "spec_num_draft_tokens": int(getattr(metrics, "num_draft_tokens", 0)),
        "spec_num_accepted_tokens": sum(j * n for j, n in enumerate(histogram)),
        "spec_num_verify_steps": sum(histogram),
    }


class _SpecStatsEngine:
    """Forwards to vLLM's AsyncLLM; keeps each finished request's speculative-decoding metrics by id."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.spec_metrics: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, *args: Any, **kwargs: Any):
        request_id = kwargs.get("request_id")
        stream = self._engine.generate(*args, **kwargs)

        async def recorded():
            last = None
            async for output in stream:
                last = output
                yield output
            if last is not None and last.outputs and request_id is not None:
                metrics = getattr(last.outputs[0], "spec_decode_metrics", None)
                if metrics is not None:
                    self.spec_metrics[request_id] = metrics

        return recorded()


class RespecvLLMHttpServer(vLLMHttpServer):
    """verl's vLLM HTTP server; with respec on, it serves speculative decoding with respec's drafter."""

    @property
    def respec(self) -> RolloutSettings | None:
        if not hasattr(self, "_respec_settings"):
            custom = getattr(self.config, "custom", None) or {}
            self._respec_settings = RolloutSettings.from_dict(custom.get(CUSTOM_KEY))
        return self._respec_settings

    def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
        super()._preprocess_engine_kwargs(engine_kwargs)
        settings = self.respec
        if settings is None or not settings.speculative:
            return
        if engine_kwargs.get("speculative_config"):
            raise ValueError(
                "actor_rollout_ref.rollout.engine_kwargs.vllm.speculative_config is set while "
                "actor_rollout_ref.respec.enable=true: respec configures vLLM's speculative decoding itself; "
                "remove one of them"
            )
        max_num_seqs = int(self.config.max_num_seqs)
        engine_kwargs["speculative_config"] = settings.speculative_config(max_num_seqs)
        async_scheduling = bool(engine_kwargs.get("async_scheduling", False))
        engine_kwargs["scheduler_cls"] = ASYNC_SCHEDULER if async_scheduling else SCHEDULER
        additional = dict(engine_kwargs.get("additional_config") or {})
        additional["respec"] = settings.scheduler_settings()
        engine_kwargs["additional_config"] = additional
        engine_kwargs["per_request_spec_decode_metrics"] = "summary"

    def _get_worker_extension_cls(self) -> str:
        if self.respec is not None and self.respec.speculative:
            return WORKER_EXTENSION
        return super()._get_worker_extension_cls()

    def _resolve_sleep_level(self) -> int:
        if self.respec is not None and self.respec.speculative:
            return 1
        return super()._resolve_sleep_level()

    async def run_server(self, *args: Any, **kwargs: Any) -> None:
        await super().run_server(*args, **kwargs)
        if self.respec is not None and self.respec.speculative and not isinstance(self.engine, _SpecStatsEngine):
            self.engine = _SpecStatsEngine(self.engine)

    async def collective_rpc(self, method, timeout=None, args: tuple = (), kwargs: dict | None = None) -> Any:
        """verl's RPC into the vLLM workers, returning their results (the drafter version check needs them)."""
        return await self.engine.collective_rpc(method=method, timeout=timeout, args=args, kwargs=kwargs)

    async def generate(self, *args: Any, **kwargs: Any):
        output = await super().generate(*args, **kwargs)
        engine = getattr(self, "engine", None)
        request_id = kwargs.get("request_id", args[2] if len(args) > 2 else None)
        if isinstance(engine, _SpecStatsEngine) and request_id is not None:
            metrics = engine.spec_metrics.pop(request_id, None)
            if metrics is not None:
                output.extra_fields.update(spec_fields(metrics))
        return output


class RespecvLLMReplica(vLLMReplica):
    """verl's vLLM replica, launching `RespecvLLMHttpServer` (verl's own server when respec is off)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(RespecvLLMHttpServer)
