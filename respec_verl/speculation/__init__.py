"""Backend-neutral speculative decoding: sampling, verification, the engine loop and its k policy."""

from respec_verl.speculation.acceptance import AcceptanceEstimate
from respec_verl.speculation.controller import AdaptiveController, ControllerConfig, build_k_policy
from respec_verl.speculation.drafting import DraftSource, FeatureProposer, Proposer
from respec_verl.speculation.engine import GenerationOutput, SpeculativeEngine
from respec_verl.speculation.policy import FixedK, KPolicy
from respec_verl.speculation.profile import ProfileKey, StepCostProfile
from respec_verl.speculation.sampling import SamplingParams
from respec_verl.speculation.stats import SpecStats, StepRecord
from respec_verl.speculation.verifier import Verdict, rejection_sample

__all__ = [
    "AcceptanceEstimate",
    "AdaptiveController",
    "ControllerConfig",
    "DraftSource",
    "FeatureProposer",
    "FixedK",
    "GenerationOutput",
    "KPolicy",
    "ProfileKey",
    "Proposer",
    "SamplingParams",
    "SpecStats",
    "SpeculativeEngine",
    "StepCostProfile",
    "StepRecord",
    "Verdict",
    "build_k_policy",
    "rejection_sample",
]
