"""The `actor_rollout_ref.respec` config: defaults work, every bad value names its full key, and it round-trips."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from respec_verl.drafter.learner import LearnerConfig
from respec_verl.speculation.controller import ControllerConfig
from respec_verl.verl_glue.config import DrafterConfig, RespecConfig


def test_defaults_are_valid_and_off():
    config = RespecConfig()
    assert config.enable is False
    assert config.drafter == DrafterConfig() and config.drafter.path is None and config.drafter.method == "model"
    assert config.controller == ControllerConfig() and config.evolution == LearnerConfig()


@pytest.mark.parametrize("block", [None, {}, OmegaConf.create({})])
def test_a_missing_or_empty_block_means_defaults(block):
    assert RespecConfig.from_omegaconf(block) == RespecConfig()


def test_one_key_turns_it_on_and_the_rest_stays_default():
    config = RespecConfig.from_omegaconf(OmegaConf.create({"enable": True}))
    assert config == RespecConfig(enable=True)


def test_round_trip_through_dict_and_omegaconf():
    config = RespecConfig.from_omegaconf(
        {
            "enable": True,
            "drafter": {"path": "/models/drafter", "draft_vocab_size": None},
            "controller": {"policy": "fixed", "max_k": 3, "candidates": [3, 0, 1]},
            "evolution": {"interval": 2, "weighting": "advantage", "async_update": False},
        }
    )
    assert config.controller.candidates == (0, 1, 3)
    as_dict = config.to_dict()
    assert as_dict["controller"]["candidates"] == [0, 1, 3]  # plain lists, so YAML and OmegaConf take it
    assert RespecConfig.from_omegaconf(as_dict) == config
    assert RespecConfig.from_omegaconf(OmegaConf.create(as_dict)) == config


def test_interpolations_are_resolved_against_the_whole_config():
    root = OmegaConf.create(
        {"rollout": {"temperature": 0.6}, "respec": {"evolution": {"temperature": "${rollout.temperature}"}}}
    )
    assert RespecConfig.from_omegaconf(root.respec).evolution.temperature == 0.6


@pytest.mark.parametrize(
    "block,key,value,allowed",
    [
        ({"enable": "yes"}, "actor_rollout_ref.respec.enable", "'yes'", "true or false"),
        ({"enable": 1}, "actor_rollout_ref.respec.enable", "1", "true or false"),
        ({"drafter": {"self_draft_layers": -1}}, "actor_rollout_ref.respec.drafter.self_draft_layers", "-1", ">= 1"),
        ({"drafter": {"draft_vocab_size": 0}}, "actor_rollout_ref.respec.drafter.draft_vocab_size", "0", ">= 1"),
        ({"drafter": {"path": ""}}, "actor_rollout_ref.respec.drafter.path", "''", "non-empty path"),
        ({"drafter": {"method": "eagle3"}}, "actor_rollout_ref.respec.drafter.method", "'eagle3'", "'model', 'history'"),
        ({"drafter": {"method": "hybrid"}}, "actor_rollout_ref.respec.drafter.method", "'hybrid'", "core engine"),
        ({"drafter": {"history": {"max_match": 0}}}, "actor_rollout_ref.respec.drafter.history.max_match", "0", ">= 1"),
        ({"drafter": {"history": {"window": 3}}}, "actor_rollout_ref.respec.drafter.history.window", "known key",
         "min_match, max_match, max_tokens, max_occurrences, min_agreement"),
        ({"drafter": {"history": {"min_agreement": 1.5}}}, "actor_rollout_ref.respec.drafter.history.min_agreement",
         "1.5", "a number in [0, 1]"),
        ({"drafter": {"history": {"min_match": 9}}}, "actor_rollout_ref.respec.drafter.history", "9/8",
         "min_match <= max_match"),
        ({"drafter": {"sample_method": "top1"}}, "actor_rollout_ref.respec.drafter.sample_method", "'top1'", "'greedy'"),
        ({"drafter": "small"}, "actor_rollout_ref.respec.drafter", "'small'", "self_draft_layers"),
        ({"controller": {"max_k": -1}}, "actor_rollout_ref.respec.controller.max_k", "-1", "an integer >= 0"),
        ({"controller": {"max_k": "4"}}, "actor_rollout_ref.respec.controller.max_k", "'4'", "an integer >= 0"),
        ({"evolution": {"interval": -1}}, "actor_rollout_ref.respec.evolution.interval", "-1", "an integer >= 0"),
        ({"record": {"dir": ""}}, "actor_rollout_ref.respec.record.dir", "''", "a folder path"),
        ({"record": {"actor_every": -1}}, "actor_rollout_ref.respec.record.actor_every", "-1", ">= 0"),
    ],
)
def test_every_bad_value_names_its_key_value_and_allowed_values(block, key, value, allowed):
    with pytest.raises(ValueError) as info:
        RespecConfig.from_omegaconf(block)
    message = str(info.value)
    assert key in message and value in message and allowed in message, message


@pytest.mark.parametrize(
    "block,key,allowed",
    [
        ({"enabel": True}, "actor_rollout_ref.respec.enabel", "enable, profile, drafter, controller"),
        ({"profile_engine": "core"}, "actor_rollout_ref.respec.profile_engine", "enable, profile, drafter, controller"),
        ({"drafter": {"layers": 2}}, "actor_rollout_ref.respec.drafter.layers", "path, self_draft_layers"),
        ({"controller": {"k": 2}}, "actor_rollout_ref.respec.controller.k", "policy, max_k"),
        ({"controller": {"calibration_decay": 0.8}}, "actor_rollout_ref.respec.controller.calibration_decay",
         "policy, max_k, candidates, min_gain, ema_decay, prior_acceptance, prior_strength, probe_interval"),
        ({"evolution": {"every": 2}}, "actor_rollout_ref.respec.evolution.every", "interval, steps_per_update"),
    ],
)
def test_unknown_keys_are_rejected_with_the_allowed_keys(block, key, allowed):
    """A typo must not silently leave respec off or a setting at its default."""
    with pytest.raises(ValueError, match="not a known key") as info:
        RespecConfig.from_omegaconf(OmegaConf.create(block))
    assert key in str(info.value) and allowed in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.respec\.drafter\.self_draft_layers"):
        DrafterConfig(self_draft_layers=0)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.respec\.controller"):
        RespecConfig(controller={"max_k": 2})


def test_config_imports_without_verl():
    """The config loads, and reports errors, in any process before verl is imported."""
    code = "import sys, respec_verl.verl_glue.config; assert 'verl' not in sys.modules, 'verl was imported'"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_profile_key_must_be_a_path_or_null():
    assert RespecConfig.from_omegaconf({"profile": "/x/profile.json"}).profile == "/x/profile.json"
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.respec\.profile"):
        RespecConfig.from_omegaconf({"profile": ""})


def test_reduced_draft_vocabulary_cuts_a_reduced_self_draft_for_vllm(tmp_path):
    from omegaconf import OmegaConf

    from respec_verl.drafter.drafter_dir import load_drafter_dir
    from respec_verl.verl_glue.trainer import prepare_rollout
    from tests.conftest import tiny_llama

    tiny_llama(layers=3).save_pretrained(tmp_path / "actor")
    config = OmegaConf.create(
        {
            "trainer": {"default_local_dir": str(tmp_path / "ckpt")},
            "actor_rollout_ref": {"model": {"path": str(tmp_path / "actor")}, "rollout": {"max_num_seqs": 8}},
        }
    )
    respec = RespecConfig.from_omegaconf(
        {"enable": True, "drafter": {"draft_vocab_size": 16, "self_draft_layers": 1}, "controller": {"policy": "fixed"}}
    )
    settings = prepare_rollout(config, respec)
    drafter = load_drafter_dir(settings.drafter_dir)
    assert drafter.draft_vocab_size == 16 and drafter.model.config.num_hidden_layers == 1
    assert config.actor_rollout_ref.rollout.custom.respec.drafter_dir == settings.drafter_dir


def test_the_adaptive_controllers_profile_is_measured_in_vllm_with_the_rollouts_settings(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from respec_verl.verl_glue import vllm_profile
    from respec_verl.verl_glue.trainer import prepare_rollout
    from tests.conftest import tiny_llama

    calls = []

    def fake_measure(out, model, drafter_dir, dtype, batch_sizes, ks, temperature, sample_method):
        calls.append((model, dtype, batch_sizes, ks, temperature, sample_method))
        out.write_text("{}")
        return out

    monkeypatch.setattr(vllm_profile, "measure_in_child", fake_measure)
    tiny_llama(layers=2).save_pretrained(tmp_path / "actor")
    rollout = {"max_num_seqs": 16, "dtype": "float32", "temperature": 0.6}
    config = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path / "ckpt")},
                               "actor_rollout_ref": {"model": {"path": str(tmp_path / "actor")}, "rollout": rollout}})
    respec = RespecConfig.from_omegaconf({"enable": True, "controller": {"max_k": 3}})
    settings = prepare_rollout(config, respec)
    assert calls == [(str(tmp_path / "actor"), "float32", [1, 2, 4, 8, 16], [1, 2, 3], 0.6, "probabilistic")]
    assert settings.profile_path.endswith("step_costs.json")
    prepare_rollout(config, respec)  # measured once per run folder
    assert len(calls) == 1
