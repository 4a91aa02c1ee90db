"""What respec's trainer tells the vLLM rollout server: plain JSON, carried in `RolloutConfig.custom`.

verl hands its rollout servers only the `RolloutConfig` dataclass, whose `custom` dict is the
documented place for extension settings. The trainer writes `custom["respec"]` from the validated
`actor_rollout_ref.respec` block; the server and vLLM's scheduler read it back here. No vLLM or
verl import: the settings are built in the trainer process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CUSTOM_KEY = "respec"
HISTORY_PROPOSER = "respec_verl.vllm_glue.history_proposer.HistoryProposer"  # vLLM imports it by this name


@dataclass
class RolloutSettings:
    """The rollout side of respec.

    speculative: False keeps vLLM plain (controller policy "off"). drafter_dir: the drafter folder
    vLLM loads at start (its weights are pushed again right after, see the worker). max_k: vLLM's
    `num_speculative_tokens`, the largest k. schedule: the starting `(lo, hi, k)` ranges; the
    scheduler's controller then picks k every step. controller: the `ControllerConfig` fields.
    profile_path: the step-cost profile JSON for the adaptive controller. state_path: where the
    scheduler writes the controller's state and its k choices (and resumes from).
    draft_sample_method: vLLM's, "probabilistic" (draft tokens sampled from q, accepted with
    probability min(1, p/q): 1 - TV(p, q) per token, which the KD loss raises) or "greedy" (argmax
    of q, accepted with probability p(token)). drafter_method: "model" (vLLM's `draft_model` with
    `drafter_dir`) or "history" (vLLM's `custom_class` hook with `HISTORY_PROPOSER`, no drafter
    folder; `history` holds its index settings).
    """

    speculative: bool
    drafter_dir: str
    max_k: int
    schedule: list[tuple[int, int, int]] = field(default_factory=list)
    controller: dict[str, Any] = field(default_factory=dict)
    profile_path: str | None = None
    state_path: str | None = None
    draft_sample_method: str = "probabilistic"
    drafter_method: str = "model"
    history: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict | None) -> RolloutSettings | None:
        """None when respec is off (no `custom["respec"]`)."""
        if not data:
            return None
        data = dict(data)
        data["schedule"] = [tuple(int(v) for v in r) for r in data.get("schedule") or []]
        data["controller"] = dict(data.get("controller") or {})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["schedule"] = [list(r) for r in self.schedule]
        return doc

    def speculative_config(self, max_num_seqs: int) -> dict[str, Any]:
        """vLLM's `speculative_config`: the drafter, the largest k and a schedule covering 1..max_num_seqs."""
        if self.drafter_method == "history":  # the hook drafts up to max_k; it is not told a per-step k
            return {"method": "custom_class", "model": HISTORY_PROPOSER, "num_speculative_tokens": self.max_k}
        schedule = self.schedule or [(1, max_num_seqs, self.max_k)]
        return {
            "method": "draft_model",
            "model": self.drafter_dir,
            "num_speculative_tokens": self.max_k,
            "num_speculative_tokens_per_batch_size": [list(r) for r in schedule],
            "draft_sample_method": self.draft_sample_method,
        }

    def scheduler_settings(self) -> dict[str, Any]:
        """What `scheduler.build_policy` reads from vLLM's `additional_config["respec"]`."""
        return {"controller": dict(self.controller), "profile_path": self.profile_path, "state_path": self.state_path,
                "history": dict(self.history)}
