"""The `actor_rollout_ref.respec` block: one validated dataclass tree, built from verl's OmegaConf config.

The block sits under `actor_rollout_ref` because verl hands only that subtree to its workers, and
the workers run the drafter. `enable: false` (the default, and what a missing block means) leaves a
verl run untouched, so `actor_rollout_ref.respec.enable=true` is the one key that turns respec on.
The controller and evolution blocks reuse `ControllerConfig` and `LearnerConfig`, which validate
their own fields under the same full keys. verl is not imported here: the config must load (and
fail with a clear message) in any process, before verl is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from respec_verl.drafter.history import HistoryConfig
from respec_verl.drafter.learner import LearnerConfig
from respec_verl.speculation.controller import ControllerConfig

CONFIG_KEY = "actor_rollout_ref.respec"
DRAFTER_METHODS = ("model", "history")  # what the vLLM rollout serves (see DrafterConfig)
CORE_ONLY_METHODS = ("hybrid",)  # drafters of the core engine that vLLM cannot serve yet
SAMPLE_METHODS = ("probabilistic", "greedy")  # vLLM's draft_sample_method


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(key: str, value: object, allowed: str) -> NoReturn:
    raise ValueError(f"{key} = {value!r} is not valid; allowed: {allowed}")


@dataclass
class DrafterConfig:
    """`actor_rollout_ref.respec.drafter`: where the drafter comes from and how vLLM runs it.

    path: a drafter folder that uses the actor's tokenizer (a Hugging Face causal LM, or a
    reduced-vocabulary drafter written by respec, e.g. the warmed-up one of `respec-verl demo`).
    None cuts a self-draft from the actor instead: its first `self_draft_layers` decoder layers.
    draft_vocab_size: the cut self-draft predicts over this many tokens only (the actor's special
    tokens and its tokenizer's most frequent merges); on a small actor the full output layer is
    most of the drafter's cost. None keeps the full vocabulary. A drafter loaded from `path` keeps
    its own head. sample_method: how the drafter proposes, one of `SAMPLE_METHODS`:
    "probabilistic" samples from the drafter's distribution q and accepts with probability
    min(1, p/q) (1 - TV(p, q) per token, what the KD loss raises); "greedy" proposes q's argmax,
    accepted with probability p(token). Both are lossless.

    method: "model" (the small causal LM above, run by vLLM's `draft_model` method and evolved by
    the learner) or "history" (no model: drafts from the run's own rollouts, `drafter.history`,
    served by vLLM's `custom_class` proposer hook at a fixed k = `controller.max_k`, since that
    hook is not told the scheduler's k; nothing to train or push). "hybrid" runs in respec's core
    engine only (`drafter.hybrid`). history: the history index's settings, `HistoryConfig` fields
    (min_match, max_match, max_tokens, max_occurrences); the index lives in the vLLM engine and is
    rebuilt from the rollouts after a restart or resume, not checkpointed.
    """

    path: str | None = None
    self_draft_layers: int = 2
    draft_vocab_size: int | None = None
    method: str = "model"
    sample_method: str = "probabilistic"
    history: dict = field(default_factory=lambda: dataclasses.asdict(HistoryConfig()))

    def __post_init__(self) -> None:
        key = f"{CONFIG_KEY}.drafter"
        if self.path is not None and (not isinstance(self.path, str) or not self.path.strip()):
            _fail(f"{key}.path", self.path, "null (self-draft) or a non-empty path to a Hugging Face model folder")
        if not _is_int(self.self_draft_layers) or self.self_draft_layers < 1:
            _fail(f"{key}.self_draft_layers", self.self_draft_layers, "an integer >= 1")
        if self.draft_vocab_size is not None and (not _is_int(self.draft_vocab_size) or self.draft_vocab_size < 1):
            _fail(f"{key}.draft_vocab_size", self.draft_vocab_size, "null (full vocabulary) or an integer >= 1")
        if self.method in CORE_ONLY_METHODS:
            _fail(f"{key}.method", self.method, "one of " + ", ".join(repr(m) for m in DRAFTER_METHODS)
                  + f" (vLLM's rollout cannot serve {self.method!r} yet: it runs in respec's core engine, "
                  "see docs/drafters.md)")
        if self.method not in DRAFTER_METHODS:
            _fail(f"{key}.method", self.method, "one of " + ", ".join(repr(m) for m in DRAFTER_METHODS))
        self.history_config()  # validates the history keys
        if self.sample_method not in SAMPLE_METHODS:
            _fail(f"{key}.sample_method", self.sample_method, "one of " + ", ".join(repr(m) for m in SAMPLE_METHODS))


    def history_config(self) -> HistoryConfig:
        """`history` as a validated `HistoryConfig`; errors name the full key."""
        key = f"{CONFIG_KEY}.drafter.history"
        if not isinstance(self.history, Mapping):
            _fail(key, self.history, "a mapping with keys " + ", ".join(_field_names(HistoryConfig)))
        _check_keys(key, self.history, HistoryConfig)
        for name, value in self.history.items():
            if name == "min_agreement":
                if not _is_number(value) or not 0 <= value <= 1:
                    _fail(f"{key}.{name}", value, "a number in [0, 1]")
            elif not _is_int(value) or value < 1:
                _fail(f"{key}.{name}", value, "an integer >= 1")
        try:
            return HistoryConfig(**self.history)
        except ValueError as e:  # min_match > max_match
            raise ValueError(f"{key}: {e}") from None


@dataclass
class RecordConfig:
    """`actor_rollout_ref.respec.record`: what a run keeps for offline analysis (`bench/evolution.py`).

    dir: None keeps nothing. A folder gets every drafter update's rollouts with their scores and
    the actor's labels (`updates/`, see `respec_verl.drafter.recording`) and, every `actor_every`
    RL steps, the updated actor as a Hugging Face folder (`actor_step_<n>/`, 0: never), so that
    other drafter policies can be replayed and measured on the run's own actor trajectory.
    """

    dir: str | None = None
    actor_every: int = 10

    def __post_init__(self) -> None:
        key = f"{CONFIG_KEY}.record"
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir.strip()):
            _fail(f"{key}.dir", self.dir, "null (keep nothing) or a folder path")
        if not _is_int(self.actor_every) or self.actor_every < 0:
            _fail(f"{key}.actor_every", self.actor_every, "an integer >= 0 (0: no actor snapshots)")


# The nested blocks, each with the dataclass that owns its keys.
_BLOCKS: dict[str, type] = {
    "drafter": DrafterConfig,
    "controller": ControllerConfig,
    "evolution": LearnerConfig,
    "record": RecordConfig,
}


@dataclass
class RespecConfig:
    """`actor_rollout_ref.respec`: speculative rollouts, drafter evolution and their settings.

    The defaults work: with only `enable=true`, rollouts use a 2-layer self-draft, the adaptive
    controller picks k, and the drafter is distilled from the actor after every step. `profile`: a
    step-cost profile JSON holding one profile, for the adaptive controller; null measures one at
    the start of the run (once per run folder) by timing vLLM's own engine steps with the drafter,
    the steps the controller chooses k for (`respec_verl.vllm_glue.step_profile`).
    """

    enable: bool = False
    profile: str | None = None
    drafter: DrafterConfig = field(default_factory=DrafterConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    evolution: LearnerConfig = field(default_factory=LearnerConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.enable, bool):
            _fail(f"{CONFIG_KEY}.enable", self.enable, "true or false")
        if self.profile is not None and (not isinstance(self.profile, str) or not self.profile.strip()):
            _fail(f"{CONFIG_KEY}.profile", self.profile, "null (measure at start) or a path to a profile JSON file")
        for name, cls in _BLOCKS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                _fail(f"{CONFIG_KEY}.{name}", value, f"a {cls.__name__} (build from a mapping with from_omegaconf)")

    @classmethod
    def from_omegaconf(cls, node: Any) -> RespecConfig:
        """Build from the `actor_rollout_ref.respec` DictConfig or a plain mapping; None gives the defaults.

        Interpolations are resolved first. Unknown keys are errors rather than silently ignored,
        since a typo (`enabel=true`) would otherwise leave respec off without a word.
        """
        if node is None:
            return cls()
        data = _to_container(node)
        if not isinstance(data, Mapping):
            _fail(CONFIG_KEY, data, "a mapping with keys " + ", ".join(_field_names(cls)))
        _check_keys(CONFIG_KEY, data, cls)
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in _BLOCKS}
        for name, block_cls in _BLOCKS.items():
            block = data.get(name)
            key = f"{CONFIG_KEY}.{name}"
            if block is None:
                kwargs[name] = block_cls()
                continue
            if not isinstance(block, Mapping):
                _fail(key, block, "a mapping with keys " + ", ".join(_field_names(block_cls)))
            _check_keys(key, block, block_cls)
            try:
                kwargs[name] = block_cls(**block)
            except TypeError as e:  # e.g. a non-string key; keep the full key in the message
                raise ValueError(f"{key}: {e}") from e
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (for YAML, OmegaConf and checkpoints); `from_omegaconf` inverts it."""
        return _plain(dataclasses.asdict(self))


def _to_container(node: Any) -> Any:
    """A DictConfig (or a mapping holding DictConfigs) as plain Python containers, interpolations resolved."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    if isinstance(node, Mapping):
        return {k: _to_container(v) for k, v in node.items()}
    return node


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(key: str, data: Mapping, cls: type) -> None:
    allowed = _field_names(cls)
    for name in data:
        if name not in allowed:
            raise ValueError(f"{key}.{name} is not a known key; allowed keys: {', '.join(allowed)}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
