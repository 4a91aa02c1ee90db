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


def test_a_fresh_import_verl_registers_our_names(tmp_path):
    """What every Ray process gets: only `import verl`, no import of respec_verl."""
    code = (
        "import json, sys, verl\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as P\n"
        "from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY as D\n"
        "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY as T\n"
        "import verl.trainer.ppo.v1.trainer_sync\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry as R\n"
        "print(json.dumps({'names': sorted(n for n in [*P, *D] if n.startswith('respec')),\n"
        "                  'trainer': T['sync'].__name__, 'replica': R.get('vllm').__name__,\n"
        "                  'plugin_loaded': 'respec_verl.verl_glue.plugin' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plugin_loaded"]
    assert report["names"] == sorted(plugin.registered_names())
    # the one-key classes: verl's "sync" trainer and "vllm" replica are respec's (verl's own while off)
    assert report["trainer"] == "RespecPPOTrainerSync"
    assert report["replica"] == "RespecvLLMReplica"


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
