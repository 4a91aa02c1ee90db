"""The verl plugin: registered by `import verl` through the entry point, idempotent, and loud when broken."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

pytest.importorskip("verl")

from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY  # noqa: E402  (after the verl skip)
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY  # noqa: E402

from respec_verl.verl_glue import plugin  # noqa: E402


def _ours() -> dict[str, object]:
    names = plugin.registered_names()
    return {name: POLICY_LOSS_REGISTRY.get(name) or DISTILLATION_LOSS_REGISTRY.get(name) for name in names}


def test_register_is_idempotent():
    names = plugin.register()
    before = _ours()
    assert plugin.register() == names
    assert _ours() == before  # the same function objects: a repeated import changes nothing


def test_self_check_passes_after_register():
    plugin.register()
    assert plugin.self_check() == ["respec_rw_kd", "respec_rw_kd_topk", "respec_adv_kd_topk"]


def test_self_check_fails_loudly_when_a_name_is_missing(monkeypatch):
    plugin.register()
    monkeypatch.delitem(POLICY_LOSS_REGISTRY, "respec_rw_kd")
    with pytest.raises(RuntimeError) as info:
        plugin.self_check()
    message = str(info.value)
    assert "'respec_rw_kd' is missing from verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY" in message
    assert "verl.plugins" in message and "VERL_USE_EXTERNAL_MODULES=respec_verl.verl_glue.plugin" in message


def test_self_check_fails_when_another_package_took_the_name(monkeypatch):
    plugin.register()
    monkeypatch.setitem(DISTILLATION_LOSS_REGISTRY, "respec_rw_kd_topk", lambda *args: None)
    with pytest.raises(RuntimeError, match="'respec_rw_kd_topk' .* is not respec_verl's"):
        plugin.self_check()


def test_register_repairs_a_missing_name(monkeypatch):
    plugin.register()
    monkeypatch.delitem(POLICY_LOSS_REGISTRY, "respec_rw_kd")
    plugin.register()
    plugin.self_check()


def test_entry_point_is_installed():
    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert found.get(plugin.ENTRY_POINT) == "respec_verl.verl_glue.plugin", (
        f"verl.plugins entry points: {found}; reinstall with `pip install -e .`"
    )


# What a process sees of verl after a bare `import verl`: every registry entry and default we might touch.
_VERL_STATE = (
    "import inspect, json, sys, verl\n"
    "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as P\n"
    "from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY as D, DISTILLATION_SETTINGS_REGISTRY as S\n"
    "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY as T\n"
    "import verl.trainer.ppo.v1.trainer_sync\n"
    "from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer\n"
    "from verl.workers.rollout.replica import RolloutReplicaRegistry as R\n"
    "name = lambda obj: f'{getattr(obj, \"__module__\", \"\")}.{getattr(obj, \"__qualname__\", type(obj).__name__)}'\n"
    "import os\n"
    "print(json.dumps({\n"
    "    'policy_losses': {k: name(v) for k, v in P.items()},\n"
    "    'distillation_losses': {k: name(v) for k, v in D.items()},\n"
    "    'distillation_settings': sorted(S),\n"
    "    'trainers': {k: name(v) for k, v in T.items()},\n"
    "    'replica_loaders': {k: name(v) for k, v in R._registry.items()},\n"
    "    'replay_poll_default': inspect.signature(ReplayBuffer).parameters['poll_interval'].default,\n"
    "    'install_env': os.environ.get('RESPEC_VERL_INSTALL'),\n"
    "    'plugin_loaded': 'respec_verl.verl_glue.plugin' in sys.modules}))\n"
)


def _verl_state(tmp_path, *argv: str, plugins: str | None = None, install_env: str | None = None) -> dict:
    """`_VERL_STATE` in a fresh interpreter with command-line arguments `argv`."""
    from respec_verl.verl_glue.cpu import ENV_DEFAULTS  # what this process's CPU support put in its environment

    dropped = ("VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES", "RESPEC_VERL_INSTALL", *ENV_DEFAULTS)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["OMP_NUM_THREADS"] = "1"
    env["RESPEC_VERL_CPU"] = "0"  # a GPU host's view: the CPU support module stays out
    if plugins is not None:
        env["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    if install_env is not None:
        env["RESPEC_VERL_INSTALL"] = install_env
    result = subprocess.run([sys.executable, "-c", _VERL_STATE, *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _without_our_names(state: dict) -> dict:
    ours = set(plugin.registered_names())
    return {**state,
            "policy_losses": {k: v for k, v in state["policy_losses"].items() if k not in ours},
            "distillation_losses": {k: v for k, v in state["distillation_losses"].items() if k not in ours},
            "distillation_settings": [k for k in state["distillation_settings"] if k not in ours],
            "plugin_loaded": None}


def test_respec_off_leaves_verl_as_stock_verl_has_it(tmp_path):
    """Installed but off, respec only adds its own loss names: every entry verl has is verl's own."""
    stock = _verl_state(tmp_path, plugins="none")
    off = _verl_state(tmp_path, "actor_rollout_ref.respec.enable=false")
    assert not stock["plugin_loaded"] and off["plugin_loaded"]
    assert stock["trainers"]["sync"] == "verl.trainer.ppo.v1.trainer_sync.PPOTrainerSync"
    assert stock["replica_loaders"]["vllm"] == "verl.workers.rollout.replica._load_vllm"
    assert _without_our_names(off) == _without_our_names(stock)
    assert sorted(set(off["policy_losses"]) - set(stock["policy_losses"])) == ["respec_rw_kd"]
    assert off["install_env"] is None


@pytest.mark.parametrize("argv, install_env", [
    (("actor_rollout_ref.respec.enable=true",), None),
    (("+actor_rollout_ref.respec.enable=True",), None),
    ((), "1"),
])
def test_the_key_installs_respecs_trainer_and_replica(tmp_path, argv, install_env):
    """What every Ray process of a run with the key gets: only `import verl`, no import of respec_verl."""
    state = _verl_state(tmp_path, *argv, install_env=install_env)
    assert state["plugin_loaded"]
    assert sorted(n for n in [*state["policy_losses"], *state["distillation_losses"]] if n.startswith("respec")) \
        == sorted(plugin.registered_names())
    assert state["trainers"]["sync"] == "respec_verl.verl_glue.trainer.RespecPPOTrainerSync"
    assert state["replica_loaders"]["vllm"] == "respec_verl.verl_glue.plugin._load_respec_replica"
    assert state["install_env"] == "1"  # set before verl starts Ray, so its processes inherit it


def test_install_switch_reads_the_key_and_the_variable():
    from respec_verl.verl_glue.install_switch import install_requested, with_install

    main = "verl/trainer/main_ppo.py"
    assert install_requested([main, "a=1", "++actor_rollout_ref.respec.enable=TRUE"], {})
    assert not install_requested([main, "actor_rollout_ref.respec.enable=false"], {})
    assert not install_requested([main, "actor_rollout_ref.respec.enable=trueish"], {})
    assert not install_requested(["actor_rollout_ref.respec.enable=true"], {})  # argv[0] is the program
    assert install_requested([main], with_install({}))
    assert not install_requested([main], {"RESPEC_VERL_INSTALL": "0"})


def test_trainer_polls_the_replay_buffer_often(monkeypatch):
    """verl polls for finished rollouts every 2 s, which quantises `timing_s/gen` into 2-second steps."""
    pytest.importorskip("verl")
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    from respec_verl.verl_glue.trainer import REPLAY_POLL_S, RespecPPOTrainerSync

    assert inspect.signature(ReplayBuffer).parameters["poll_interval"].default == 2.0  # what we override
    built = type("Buffer", (), {"poll_interval": 2.0})()
    parent = RespecPPOTrainerSync.__mro__[1]
    assert hasattr(parent, "_build_replay_buffer")  # verl's hook
    monkeypatch.setattr(parent, "_build_replay_buffer", lambda self: built)
    trainer = object.__new__(RespecPPOTrainerSync)
    assert trainer._build_replay_buffer() is built and built.poll_interval == REPLAY_POLL_S < 2.0
