"""Drafters, each a `spec.drafting.DraftSource`: the small causal LM (self-draft, KD loss, online learner),
the model-free history drafter, and the hybrid of the two."""

from respec_verl.drafter.drafter import Drafter
from respec_verl.drafter.history import HistoryConfig, HistoryDrafter
from respec_verl.drafter.hybrid import HybridDrafter
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss
from respec_verl.drafter.learner import DrafterLearner, LearnerConfig
from respec_verl.drafter.self_draft import frequent_tokens, self_draft

__all__ = [
    "Drafter", "DrafterLearner", "HistoryConfig", "HistoryDrafter", "HybridDrafter", "LearnerConfig", "frequent_tokens",
    "reward_weighted_kd_loss", "self_draft",
]
