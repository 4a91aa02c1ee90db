"""How many tokens to draft each step: the engine asks a policy, the policy sees every step's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from respec_verl.speculation.stats import StepRecord


class KPolicy(Protocol):
    """Chooses the draft length for the live batch; k = 0 means a plain decoding step."""

    def choose_k(self, batch_size: int) -> int: ...

    def observe(self, record: StepRecord) -> None: ...


@dataclass
class FixedK:
    """Always draft k tokens (k = 0: plain decoding through the same engine loop)."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"FixedK.k must be >= 0, got {self.k}")

    def choose_k(self, batch_size: int) -> int:
        return self.k

    def observe(self, record: StepRecord) -> None:
        pass
