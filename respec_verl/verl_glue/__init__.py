"""Thin glue between verl and the core: registrations and config translation, no algorithms.

Nothing here imports verl at import time; each entry point imports it when called. Nor torch: the
launcher and the supervisor (`launch`, `supervisor`) run in the process that watches a whole RL
run, which should not hold torch's few hundred MB for hours.
"""

from __future__ import annotations

__all__ = ["register_losses"]


def __getattr__(name: str):
    if name == "register_losses":
        from respec_verl.verl_glue.losses import register_losses

        return register_losses
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
