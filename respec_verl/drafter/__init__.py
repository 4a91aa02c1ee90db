"""Drafters, each a `speculation.drafting.DraftSource`: the small causal LM (self-draft, KD loss, online
learner), the EAGLE-3 head over the target's hidden states, the model-free history drafter, and the
hybrid of the model and the history."""

from respec_verl.drafter.drafter import Drafter
from respec_verl.drafter.eagle3 import Eagle3Config, Eagle3Drafter, eagle3_drafter
from respec_verl.drafter.history import HistoryConfig, HistoryDrafter
from respec_verl.drafter.hybrid import HybridDrafter
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss
from respec_verl.drafter.learner import DrafterLearner, LearnerConfig
from respec_verl.drafter.self_draft import frequent_tokens, self_draft

__all__ = [
    "Drafter", "DrafterLearner", "Eagle3Config", "Eagle3Drafter", "HistoryConfig", "HistoryDrafter", "HybridDrafter",
    "LearnerConfig", "eagle3_drafter", "frequent_tokens", "reward_weighted_kd_loss", "self_draft",
]
