"""When respec's trainer and replica replace verl's in a process: `RESPEC_VERL_INSTALL`, or the key on the command line.

With respec off verl must stay as it was, and the plugin runs at `import verl`, before any config is
read. So the switch is the environment, which Ray processes inherit from the process that starts Ray,
and the one key itself where it is given on verl's command line. verl-free and torch-free: the
launcher imports it too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

INSTALL_ENV = "RESPEC_VERL_INSTALL"  # "1": respec's "sync" trainer and "vllm" replica replace verl's
_TRUE = ("1", "true", "yes", "on")
# The one key as a Hydra command-line override: `actor_rollout_ref.respec.enable=true`, `+...`, `++...`
_ENABLE_OVERRIDE = re.compile(r"\+{0,2}actor_rollout_ref\.respec\.enable=(?i:true)")


def install_requested(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """`RESPEC_VERL_INSTALL` is true in `environ`, or `argv` (a verl command line) turns the key on."""
    if environ.get(INSTALL_ENV, "").strip().lower() in _TRUE:
        return True
    return any(_ENABLE_OVERRIDE.fullmatch(arg) for arg in argv[1:])


def with_install(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with respec's classes requested: what the launcher gives its runs, respec on and off."""
    return {**env, INSTALL_ENV: "1"}
