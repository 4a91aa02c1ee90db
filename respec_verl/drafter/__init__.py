"""Drafters: the model artifact, the self-draft cut from the target, and (later) their training."""

from respec_verl.drafter.drafter import Drafter
from respec_verl.drafter.self_draft import frequent_tokens, self_draft

__all__ = ["Drafter", "frequent_tokens", "self_draft"]
