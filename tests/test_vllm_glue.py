"""respec's verl/vLLM rollout glue on small fakes: settings, self-draft folder, scheduler control, metrics."""

from __future__ import annotations

import json
import types

import pytest
import torch

from respec_verl.speculation.profile import ProfileKey, StepCostProfile
from respec_verl.verl_glue.self_draft_dir import layer_index, write_self_draft_dir
from respec_verl.vllm_glue.settings import RolloutSettings
from tests.conftest import tiny_llama


def test_settings_round_trip_and_vllm_config():
    s = RolloutSettings(True, "/d", 3, [(1, 4, 3), (5, 8, 0)], {"policy": "adaptive", "max_k": 3}, "/p.json", "/s.json")
    back = RolloutSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    spec = back.speculative_config(max_num_seqs=8)
    assert spec == {
        "method": "draft_model",
        "model": "/d",
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 4, 3], [5, 8, 0]],
        "draft_sample_method": "probabilistic",
    }
    assert back.scheduler_settings() == {"controller": s.controller, "profile_path": "/p.json", "state_path": "/s.json",
                                         "history": {}}
    assert RolloutSettings.from_dict(None) is None
    # no schedule given: one range over every batch size at the largest k
    assert RolloutSettings(True, "/d", 2).speculative_config(16)["num_speculative_tokens_per_batch_size"] == [[1, 16, 2]]


def test_history_settings_ask_vllm_for_respecs_custom_proposer():
    s = RolloutSettings(True, "", 5, [(1, 8, 5)], {"policy": "fixed", "max_k": 5}, drafter_method="history",
                        history={"max_match": 6})
    back = RolloutSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    assert back.speculative_config(max_num_seqs=8) == {
        "method": "custom_class", "model": "respec_verl.vllm_glue.history_proposer.HistoryProposer",
        "num_speculative_tokens": 5,
    }
    assert back.scheduler_settings()["history"] == {"max_match": 6}  # what the proposer reads in vLLM


def test_self_draft_dir_keeps_the_first_layers(tmp_path):
    model = tiny_llama(layers=4)
    model.save_pretrained(tmp_path / "actor")
    out = write_self_draft_dir(tmp_path / "actor", tmp_path / "draft", num_layers=2)
    from transformers import AutoModelForCausalLM

    draft = AutoModelForCausalLM.from_pretrained(out)
    assert draft.config.num_hidden_layers == 2
    full = model.state_dict()
    for name, tensor in draft.state_dict().items():
        assert torch.equal(tensor, full[name]), name
    assert layer_index("model.layers.13.mlp.up_proj.weight") == 13 and layer_index("model.norm.weight") is None
    with pytest.raises(ValueError, match="self_draft_layers"):
        write_self_draft_dir(tmp_path / "actor", tmp_path / "bad", num_layers=5)
    assert not (tmp_path / "bad").exists()


def test_self_draft_dir_replaces_an_old_folder_only_when_complete(tmp_path):
    tiny_llama(layers=3).save_pretrained(tmp_path / "actor")
    write_self_draft_dir(tmp_path / "actor", tmp_path / "draft", num_layers=1)
    (tmp_path / "actor" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        write_self_draft_dir(tmp_path / "actor", tmp_path / "draft", num_layers=2)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "draft").num_hidden_layers == 1  # the old folder survived
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".draft")] == []


def _profile(costly_verify: float) -> StepCostProfile:
    """Decode 1.0 s at every batch size; verifying costs `costly_verify` x k per extra token at batch 8."""
    decode, draft, verify = {}, {}, {}
    for b in (1, 8):
        decode[(64, b)] = 1.0
        for k in (1, 2, 3):
            draft[(64, b, k)] = 0.01 * k
            verify[(64, b, k)] = 1.0 + (0.05 if b == 1 else costly_verify) * k
    return StepCostProfile(ProfileKey("m", "float32", "cpu"), decode, draft, verify)


class _FakeScheduler:
    """What `_RespecStepControl` reads from vLLM's Scheduler."""

    def __init__(self, settings: dict, num_spec_tokens: int = 3):
        from respec_verl.vllm_glue.scheduler import _RespecStepControl

        self.vllm_config = types.SimpleNamespace(additional_config={"respec": settings})
        self.num_spec_tokens = num_spec_tokens
        methods = ("_respec_init", "_respec_choose", "_respec_observe", "respec_save_state", "_respec_save_when_idle")
        for name in methods:
            setattr(self, name, types.MethodType(getattr(_RespecStepControl, name), self))
        self.unfinished = 0
        self._respec_init()

    def has_unfinished_requests(self) -> bool:
        return self.unfinished > 0


def _step(sched, batch: int, k_scheduled: int, accepted: list[int]):
    ids = [f"r{i}" for i in range(batch)]
    out = types.SimpleNamespace(
        num_scheduled_tokens={r: 1 + k_scheduled for r in ids},
        scheduled_spec_decode_tokens={r: [7] * k_scheduled for r in ids} if k_scheduled else {},
        num_spec_tokens_to_schedule=sched.num_spec_tokens,
    )
    sched._respec_choose(out)
    runner = types.SimpleNamespace(
        req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=[[1] * (1 + a) for a in accepted]
    )
    sched._respec_observe(out, runner)
    return out.num_spec_tokens_to_schedule


def test_scheduler_control_picks_k_per_batch_size_and_saves_state(tmp_path):
    pytest.importorskip("vllm")
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(_profile(costly_verify=2.0).to_dict()))
    state = tmp_path / "state.json"
    settings = {
        "controller": {"policy": "adaptive", "max_k": 3, "prior_acceptance": 0.9},
        "profile_path": str(profile_path),
        "state_path": str(state),
    }
    sched = _FakeScheduler(settings)
    assert _step(sched, batch=1, k_scheduled=0, accepted=[0]) == 3  # cheap verification, high acceptance
    assert _step(sched, batch=8, k_scheduled=3, accepted=[3] * 8) == 0  # verification compute-bound: SD off
    sched.respec_save_state()
    doc = json.loads(state.read_text())
    assert doc["choices"] == {"1": {"3": 1}, "8": {"0": 1}}
    assert doc["observed_steps"] == 2 and doc["controller"]["acceptance"]
    # a restarted engine resumes the controller from the state file
    assert _FakeScheduler(settings)._respec_policy.state_dict()["acceptance"] == doc["controller"]["acceptance"]


def test_scheduler_state_is_written_when_the_engine_runs_out_of_requests(tmp_path):
    pytest.importorskip("vllm")
    state = tmp_path / "state.json"
    sched = _FakeScheduler({"controller": {"policy": "fixed", "max_k": 2}, "state_path": str(state)})
    sched.unfinished = 3
    _step(sched, batch=3, k_scheduled=0, accepted=[0] * 3)
    sched._respec_save_when_idle()
    assert not state.exists()  # requests still running: no write per step
    sched.unfinished = 0
    sched._respec_save_when_idle()
    assert json.loads(state.read_text())["choices"] == {"3": {"2": 1}}
    state.unlink()
    sched._respec_save_when_idle()
    assert not state.exists()  # nothing new since the last write


def _adaptive_scheduler(tmp_path) -> _FakeScheduler:
    """An adaptive controller on cheap verification, without probes (decisions follow acceptance)."""
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(_profile(costly_verify=0.05).to_dict()))
    settings = {
        "controller": {"policy": "adaptive", "max_k": 3, "probe_interval": 0},
        "profile_path": str(profile_path),
    }
    return _FakeScheduler(settings)


def test_scheduler_control_learns_acceptance_from_steps(tmp_path):
    pytest.importorskip("vllm")
    sched = _adaptive_scheduler(tmp_path)
    before = sched._respec_policy.acceptance.expected_tokens(3)
    for _ in range(20):
        _step(sched, batch=8, k_scheduled=3, accepted=[0] * 8)  # every draft rejected
    assert sched._respec_policy.acceptance.expected_tokens(3) < before
    assert _step(sched, batch=8, k_scheduled=3, accepted=[0] * 8) == 0  # nothing accepted: drafting only costs


def test_scheduler_control_fixed_policy_and_prefill_steps_are_not_evidence(tmp_path):
    pytest.importorskip("vllm")
    sched = _FakeScheduler({"controller": {"policy": "fixed", "max_k": 2}})
    assert _step(sched, batch=5, k_scheduled=2, accepted=[1] * 5) == 2
    adaptive = tmp_path / "p.json"
    adaptive.write_text(json.dumps(_profile(0.05).to_dict()))
    sched = _FakeScheduler({"controller": {"policy": "adaptive", "max_k": 3}, "profile_path": str(adaptive)})
    out = types.SimpleNamespace(
        num_scheduled_tokens={"a": 40, "b": 1}, scheduled_spec_decode_tokens={}, num_spec_tokens_to_schedule=3
    )
    sched._respec_choose(out)
    runner = types.SimpleNamespace(req_id_to_index={"a": 0, "b": 1}, sampled_token_ids=[[1], [1]])
    sched._respec_observe(out, runner)
    assert sched._respec_observed == 0  # a prefill step says nothing about k


def test_adaptive_without_profile_is_an_error():
    pytest.importorskip("vllm")
    from respec_verl.vllm_glue.scheduler import build_policy

    with pytest.raises(ValueError, match="profile"):
        build_policy({"controller": {"policy": "adaptive"}}, max_k=3)


def test_spec_fields_from_vllm_histogram():
    pytest.importorskip("vllm")
    from respec_verl.vllm_glue.server import spec_fields

    metrics = types.SimpleNamespace(num_draft_tokens=12, histogram=[1, 0, 2, 1])  # 4 verify steps of k=3
    assert spec_fields(metrics) == {
        "spec_num_draft_tokens": 12,
        "spec_num_accepted_tokens": 0 * 1 + 2 * 2 + 3 * 1,
        "spec_num_verify_steps": 4,
    }


def test_controller_metrics_from_state_file(tmp_path):
    from respec_verl.verl_glue.trainer import controller_metrics

    state = tmp_path / "s.json"
    state.write_text(json.dumps({"choices": {"1": {"3": 4}, "8": {"0": 3, "1": 1}}, "observed_steps": 8}))
    m = controller_metrics(str(state))
    assert m["respec/controller/k_at_batch_1"] == 3.0
    assert m["respec/controller/k_at_batch_8"] == 0.25
    assert m["respec/controller/plain_fraction"] == 3 / 8
    assert m["respec/controller/k_mean"] == (12 + 1) / 8
    assert controller_metrics(str(tmp_path / "missing.json")) == {}


def test_rollout_rows_and_scores_from_nested_batch():
    from tensordict import TensorDict

    from respec_verl.verl_glue.worker import rollout_rows, rollout_scores

    nested = lambda rows, dtype=torch.long: torch.nested.as_nested_tensor(  # noqa: E731
        [torch.tensor(r, dtype=dtype) for r in rows], layout=torch.jagged
    )
    data = TensorDict(
        {
            "prompts": nested([[1, 2], [3, 4, 5]]),
            "responses": nested([[6, 7, 8], [9, 10]]),
            "response_mask": nested([[1, 1, 0], [1, 1]]),
            "rm_scores": nested([[0.0, 0.0, 1.0], [0.0, 0.5]], torch.float32),
            "advantages": nested([[0.7, 0.7, 0.7], [-0.7, -0.7]], torch.float32),
        },
        batch_size=[2],
    )
    prompts, responses = rollout_rows(data)
    assert prompts == [[1, 2], [3, 4, 5]] and responses == [[6, 7], [9, 10]]
    assert rollout_scores(data, "reward") == [1.0, 0.5]
    assert rollout_scores(data, "advantage") == pytest.approx([0.7, -0.7])
    assert rollout_scores(data, "uniform") is None


def test_controller_state_is_restored_before_vllm_starts(tmp_path):
    from omegaconf import OmegaConf

    from respec_verl.verl_glue.trainer import STATE_FILE, restore_controller_state, resume_folder

    ckpt = tmp_path / "checkpoints"
    (ckpt / "global_step_4").mkdir(parents=True)
    (ckpt / "global_step_4" / STATE_FILE).write_text(json.dumps({"observed_steps": 7}))
    (ckpt / "latest_checkpointed_iteration.txt").write_text("4")
    config = OmegaConf.create({"trainer": {"default_local_dir": str(ckpt), "resume_mode": "auto"}})
    assert resume_folder(config) == ckpt / "global_step_4"
    state = tmp_path / "respec" / STATE_FILE
    state.parent.mkdir()
    restore_controller_state(config, state)
    assert json.loads(state.read_text()) == {"observed_steps": 7}
    config.trainer.resume_mode = "disable"
    assert resume_folder(config) is None
    config.trainer.resume_mode = "resume_path"
    config.trainer.resume_from_path = str(ckpt / "global_step_4")
    assert resume_folder(config) == ckpt / "global_step_4"


def test_a_history_run_cuts_no_drafter_and_runs_the_controller_fixed(tmp_path, caplog):
    """The trainer's preparation for `drafter.method=history` (the whole run: `-m extended` in test_verl_e2e)."""
    from omegaconf import OmegaConf

    from respec_verl.verl_glue.config import RespecConfig
    from respec_verl.verl_glue.trainer import prepare_rollout

    config = OmegaConf.create({
        "trainer": {"default_local_dir": str(tmp_path / "checkpoints"), "resume_mode": "disable"},
        "actor_rollout_ref": {"model": {"path": str(tmp_path / "no_model")}, "rollout": {"max_num_seqs": 8}},
    })
    respec = RespecConfig.from_omegaconf({"enable": True, "drafter": {"method": "history", "history": {"max_match": 6}},
                                          "controller": {"max_k": 5}})
    settings = prepare_rollout(config, respec)  # the model path does not exist: nothing may read it
    assert settings.speculative and settings.drafter_dir == "" and settings.profile_path is None
    assert settings.controller["policy"] == "fixed" and "runs as fixed" in caplog.text
    assert settings.speculative_config(8)["method"] == "custom_class"
    assert settings.scheduler_settings()["history"]["max_match"] == 6
    assert config.actor_rollout_ref.rollout.custom.respec.drafter_method == "history"
    assert not (tmp_path / "checkpoints" / "respec" / "self_draft").exists()


def test_only_the_kept_layers_failed_load_warning_is_dropped():
    pytest.importorskip("vllm")
    import logging

    from respec_verl.vllm_glue.worker_extension import LAYERWISE_LOGGER, _quiet_kept_layers

    class Collect(logging.Handler):  # on the logger itself: vLLM's loggers may not propagate to the root
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    draft = tiny_llama(seed=3)
    reload_logger, collect = logging.getLogger(LAYERWISE_LOGGER), Collect()
    reload_logger.addHandler(collect)
    try:
        with _quiet_kept_layers(draft, ["model.embed_tokens.weight"]):
            reload_logger.warning("%s: Failed to load weights", "Embedding")  # kept on purpose: dropped
            reload_logger.warning("%s: Failed to load weights", "Linear")  # any other layer still warns
        reload_logger.warning("%s: Failed to load weights", "Embedding")  # outside the push: warns
    finally:
        reload_logger.removeHandler(collect)
    assert collect.messages == ["Linear: Failed to load weights", "Embedding: Failed to load weights"]
