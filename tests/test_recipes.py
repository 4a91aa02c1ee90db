"""The recipes compose on top of verl's own ppo_trainer config, and one key turns respec on."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402  (after the skips)
from hydra.errors import ConfigCompositionException  # noqa: E402

from respec_verl.verl_glue.config import RespecConfig  # noqa: E402

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
NAMES = ["respec_grpo", "respec_dapo"]


def _compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(RECIPES / name / "config"), version_base=None):
        return compose(config_name=name, overrides=overrides or [])


@pytest.mark.parametrize("name", NAMES)
def test_the_one_key_turns_respec_on(name):
    cfg = _compose(name, ["actor_rollout_ref.respec.enable=true"])
    assert RespecConfig.from_omegaconf(cfg.actor_rollout_ref.respec) == RespecConfig(enable=True)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_declares_every_respec_key_with_the_dataclass_defaults(name):
    """Every key can be overridden without a `+`, and the YAML cannot drift from the dataclass."""
    cfg = _compose(name)
    assert OmegaConf.to_container(cfg.actor_rollout_ref.respec, resolve=True) == RespecConfig().to_dict()


def test_the_key_also_works_on_verls_stock_config():
    """An existing run on verl's own ppo_trainer adds the undeclared block with a `+`."""
    from hydra import initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=["+actor_rollout_ref.respec.enable=true"])
        plain = compose(config_name="ppo_trainer")
    assert RespecConfig.from_omegaconf(cfg.actor_rollout_ref.respec) == RespecConfig(enable=True)
    assert RespecConfig.from_omegaconf(plain.actor_rollout_ref.get("respec")) == RespecConfig()


def test_a_misspelt_respec_key_fails_composition():
    with pytest.raises(ConfigCompositionException, match="enabel"):
        _compose("respec_grpo", ["actor_rollout_ref.respec.enabel=true"])


def test_grpo_recipe_is_grpo():
    cfg = _compose("respec_grpo")
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.n > 1  # a group per prompt
    assert cfg.actor_rollout_ref.actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward
    assert cfg.actor_rollout_ref.rollout.name == "vllm"


def test_dapo_recipe_is_dapo_as_verl_runs_it():
    from verl.experimental.reward_loop.reward_manager.registry import get_reward_manager_cls
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose("respec_dapo")
    actor = cfg.actor_rollout_ref.actor
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.actor_rollout_ref.rollout.n > 1
    assert actor.clip_ratio_high > actor.clip_ratio_low and actor.loss_agg_mode == "token-mean"
    assert not actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward
    algorithm = omega_conf_to_dataclass(cfg.algorithm)  # verl's own dataclass accepts our keys
    assert algorithm.filter_groups.enable and algorithm.filter_groups.metric == "acc"
    assert get_reward_manager_cls(cfg.reward.reward_manager.name).__name__ == "DAPORewardManager"
    kwargs = OmegaConf.to_container(cfg.reward.reward_kwargs, resolve=True)
    assert kwargs["max_resp_len"] == cfg.data.max_response_length
    assert 0 < kwargs["overlong_buffer_cfg"]["len"] < kwargs["max_resp_len"]  # the manager asserts this


@pytest.mark.parametrize("name", NAMES)
def test_required_verl_matches_the_installed_verl(name):
    import verl

    assert (RECIPES / name / "REQUIRED_VERL.txt").read_text().strip() == f"verl=={verl.__version__}"


def _script_overrides(script: Path) -> list[str]:
    """The Hydra overrides of a run script's main_ppo command, with its shell variables filled in."""
    import shlex

    text = script.read_text().split("python -m verl.trainer.main_ppo", 1)[1]
    text = text.replace("\\\n", " ").replace('"$@"', "")
    for var, value in {'"$RECIPE_DIR"': "/r", '"$MODEL"': "/m", '"$DATA/': '"/d/'}.items():
        text = text.replace(var, value)
    tokens = shlex.split(text)
    return [t for t in tokens if "=" in t and not t.startswith("-")]


@pytest.mark.parametrize("name", ["respec_grpo", "respec_dapo"])
def test_gpu_run_script_overrides_compose_on_its_recipe(name):
    script = RECIPES / name / "run_qwen2_5_7b_vllm.sh"
    overrides = _script_overrides(script)
    assert "actor_rollout_ref.respec.enable=true" in overrides
    cfg = _compose(name, overrides)
    assert RespecConfig.from_omegaconf(cfg.actor_rollout_ref.respec).enable
    assert cfg.actor_rollout_ref.model.path == "/m" and cfg.trainer.n_gpus_per_node == 8
