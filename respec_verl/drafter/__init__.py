"""Drafters: the model artifact, the self-draft cut from the target, its loss and its online learner."""

from respec_verl.drafter.drafter import Drafter
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss
from respec_verl.drafter.learner import DrafterLearner, LearnerConfig
from respec_verl.drafter.self_draft import frequent_tokens, self_draft

__all__ = ["Drafter", "DrafterLearner", "LearnerConfig", "frequent_tokens", "reward_weighted_kd_loss", "self_draft"]
