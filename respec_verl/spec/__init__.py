"""Backend-neutral speculative decoding: sampling, verification, the engine loop and its k policy."""

from respec_verl.spec.engine import GenerationOutput, SpeculativeEngine
from respec_verl.spec.policy import FixedK, KPolicy
from respec_verl.spec.sampling import SamplingParams
from respec_verl.spec.stats import SpecStats, StepRecord
from respec_verl.spec.verifier import Verdict, rejection_sample

__all__ = [
    "FixedK",
    "GenerationOutput",
    "KPolicy",
    "SamplingParams",
    "SpecStats",
    "SpeculativeEngine",
    "StepRecord",
    "Verdict",
    "rejection_sample",
]
