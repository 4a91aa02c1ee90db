"""Backend-neutral speculative decoding: sampling, verification, the engine loop and its k policy."""

from respec_verl.spec.acceptance import AcceptanceEstimate
from respec_verl.spec.calibration import StepTimeCalibration
from respec_verl.spec.controller import AdaptiveController, ControllerConfig, build_k_policy
from respec_verl.spec.drafting import DrafterSwapError, DraftSource, Proposer
from respec_verl.spec.engine import GenerationOutput, SpeculativeEngine
from respec_verl.spec.policy import FixedK, KPolicy
from respec_verl.spec.profile import ProfileKey, StepCostProfile, profile_step_costs
from respec_verl.spec.sampling import SamplingParams
from respec_verl.spec.stats import SpecStats, StepRecord
from respec_verl.spec.verifier import Verdict, rejection_sample

__all__ = [
    "AcceptanceEstimate",
    "AdaptiveController",
    "ControllerConfig",
    "DraftSource",
    "DrafterSwapError",
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
    "StepTimeCalibration",
    "Verdict",
    "build_k_policy",
    "profile_step_costs",
    "rejection_sample",
]
