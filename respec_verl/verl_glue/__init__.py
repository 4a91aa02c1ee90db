"""Thin glue between verl and the core: registrations and config translation, no algorithms.

Nothing here imports verl at import time; each entry point imports it when called.
"""

from respec_verl.verl_glue.losses import register_losses

__all__ = ["register_losses"]
