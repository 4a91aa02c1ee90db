"""respec_verl's verl plugin: registers our names with verl in every process that imports verl.

verl 0.9.1 loads every entry point of the `verl.plugins` group at `import verl` (in the driver, the
TaskRunner, the workers and the rollout servers), by importing the module the entry point names;
`VERL_USE_EXTERNAL_PLUGINS` (`auto` by default, `none`, or a comma list of entry-point names such
as `respec`) selects which. So this module registers at import. verl logs a plugin that fails to
load at DEBUG level and carries on, which would leave a run without our losses and fail much later
with "Unsupported loss mode". Hence `self_check`, which code that relies on the names calls to fail
at once with the reason, and the ERROR log below, which verl's WARNING-level logging does show.
Where entry points are unavailable, `VERL_USE_EXTERNAL_MODULES=respec_verl.verl_glue.plugin`
(passed to Ray workers through `ray_kwargs.ray_init.runtime_env.env_vars`) loads the same module.

Respec off leaves verl as it was: at import the plugin only adds names of its own (the losses, which
a run selects by name). Respec's "sync" trainer and "vllm" replica replace verl's only in a process
whose environment has `RESPEC_VERL_INSTALL=1`. The plugin sets that itself in the process whose
command line turns the key on (`python -m verl.trainer.main_ppo ... actor_rollout_ref.respec.enable=true`,
with or without `+`), before verl starts Ray, so the Ray processes it starts inherit it. A config file
that turns the key on, or a Ray cluster started beforehand, needs the variable set by hand
(`+ray_kwargs.ray_init.runtime_env.env_vars.RESPEC_VERL_INSTALL=1`); `respec-verl`'s launcher sets it
for its runs, respec on and off, so that both sides of a comparison run the same trainer code.
"""

from __future__ import annotations

import logging
import os
import sys

from respec_verl.verl_glue.install_switch import INSTALL_ENV, install_requested
from respec_verl.verl_glue.losses import DISTILLATION_LOSS_WEIGHTING, POLICY_LOSS_NAME, register_losses

logger = logging.getLogger(__name__)

ENTRY_POINT = "respec"  # our name in the `verl.plugins` group (setup.py)
MODULE = __name__

# Every name this plugin registers, by the verl registry it goes into.
EXPECTED: dict[str, tuple[str, ...]] = {
    "verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY": (POLICY_LOSS_NAME,),
    "verl.trainer.distillation.losses.DISTILLATION_LOSS_REGISTRY": tuple(DISTILLATION_LOSS_WEIGHTING),
    "verl.trainer.distillation.losses.DISTILLATION_SETTINGS_REGISTRY": tuple(DISTILLATION_LOSS_WEIGHTING),
}


def register() -> list[str]:
    """Register everything with verl; a no-op when our names are already in place (idempotent).

    Skipping a complete registration keeps a later `register_losses(w_min=...)` from a worker
    intact when this module is imported again.
    """
    if not _problems():
        return registered_names()
    register_losses()
    return registered_names()


def registered_names() -> list[str]:
    """The names this plugin puts into verl's registries, each once."""
    return list(dict.fromkeys(name for names in EXPECTED.values() for name in names))


def self_check() -> list[str]:
    """Raise RuntimeError unless every name we register is in verl's registries and is ours."""
    problems = _problems()
    if problems:
        policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto")
        raise RuntimeError(
            "respec_verl is not registered with verl: "
            + "; ".join(problems)
            + f". verl imports the `verl.plugins` entry point {ENTRY_POINT!r} ({MODULE}) at `import verl` and "
            f"hides its errors at DEBUG level. Check that respec_verl is installed in this environment "
            f"(`pip show respec_verl`), that VERL_USE_EXTERNAL_PLUGINS (now {policy!r}) is 'auto' or names "
            f"{ENTRY_POINT!r}, and run `python -c 'import {MODULE}'` to see the import error; or load it "
            f"explicitly with VERL_USE_EXTERNAL_MODULES={MODULE}."
        )
    return registered_names()


def _problems() -> list[str]:
    """What is missing from, or foreign in, verl's registries (empty when all is in place)."""
    problems = []
    for where, names in EXPECTED.items():
        registry = _registry(where)
        for name in names:
            if name not in registry:
                problems.append(f"{name!r} is missing from {where}")
            elif where.endswith("LOSS_REGISTRY") and not getattr(registry[name], "_respec", False):
                problems.append(f"{name!r} in {where} is not respec_verl's (registered over by another package)")
    return problems


def _registry(where: str) -> dict:
    import importlib

    module, attr = where.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


# --- CPU support (hosts without a GPU or NPU; RESPEC_VERL_CPU=auto|1|0): respec_verl/verl_glue/cpu ---
# Before anything asks verl for its platform; verl's get_platform() is lazy, so this is early enough.
try:
    from respec_verl.verl_glue.cpu import enable_if_needed as _enable_cpu_if_needed

    _enable_cpu_if_needed()
except Exception:
    logger.exception("respec_verl's CPU support failed to load; a CPU run will fail")
    raise
# --- end of CPU support ---

TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_sync"
REPLICA_MODULE = "verl.workers.rollout.replica"


def install_respec_classes() -> None:
    """Put respec's trainer and vLLM replica in verl's registries, each when its verl module loads.

    verl picks the trainer by `trainer.v1.trainer_mode` ("sync") and the rollout replica by
    `rollout.name` ("vllm"); respec's classes under those names behave like verl's while
    `actor_rollout_ref.respec.enable` is false (but for the replay buffer's poll interval), so
    installing them is what makes the one key enough. Called only where `install_requested`.
    Deferred to the import of verl's modules, so processes that never train or serve (vLLM workers,
    reward workers) do not import them.
    """
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(TRAINER_MODULE, _install_trainer)
    when_imported(REPLICA_MODULE, _install_replica)


def _install_trainer(module) -> None:
    """Import respec's trainer module, which installs itself as "sync" when it loads.

    If that module is what is importing verl's trainer right now, it installs itself at its end.
    """
    import importlib
    import sys

    if "respec_verl.verl_glue.trainer" not in sys.modules:
        importlib.import_module("respec_verl.verl_glue.trainer")


def _load_respec_replica():
    from respec_verl.vllm_glue.server import RespecvLLMReplica

    return RespecvLLMReplica


def _install_replica(module) -> None:
    module.RolloutReplicaRegistry.register("vllm", _load_respec_replica)


try:  # verl's plugin loader imports this module; register then, and say so loudly if it fails
    register()
    if install_requested(sys.argv, os.environ):
        os.environ[INSTALL_ENV] = "1"  # the Ray processes that this one starts inherit it
        install_respec_classes()
except Exception:
    logger.exception("respec_verl's verl plugin failed to register; runs with respec will fail self_check")
    raise
