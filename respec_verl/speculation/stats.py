"""What a generation did: per-position acceptance and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepRecord:
    """One engine step: the live batch size, the draft length used, and per-row accepted counts.

    draft_time_s and target_time_s time the drafter's and the target's parts; step_time_s is the
    wall time of the whole step (choosing k, sampling, log-probs, KV rollback and emitting
    included), what the step-cost profiles measure; 0.0 means not measured.
    """

    batch_size: int
    k: int
    num_accepted: list[int]
    draft_time_s: float
    target_time_s: float
    step_time_s: float = 0.0


@dataclass
class SpecStats:
    """Counters in vLLM's terms: a draft is one row of one speculative step."""

    drafted_per_pos: list[int] = field(default_factory=list)
    accepted_per_pos: list[int] = field(default_factory=list)
    num_drafts: int = 0
    spec_steps: int = 0
    plain_steps: int = 0
    generated_tokens: int = 0
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    target_time_s: float = 0.0
    step_time_s: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)

    def record(self, step: StepRecord) -> None:
        self.steps.append(step)
        self.draft_time_s += step.draft_time_s
        self.target_time_s += step.target_time_s
        self.step_time_s += step.step_time_s
        if step.k == 0:
            self.plain_steps += 1
            return
        self.spec_steps += 1
        self.num_drafts += step.batch_size
        while len(self.drafted_per_pos) < step.k:
            self.drafted_per_pos.append(0)
            self.accepted_per_pos.append(0)
        for pos in range(step.k):
            self.drafted_per_pos[pos] += step.batch_size
            self.accepted_per_pos[pos] += sum(n > pos for n in step.num_accepted)

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over drafted tokens."""
        drafted = sum(self.drafted_per_pos)
        return sum(self.accepted_per_pos) / drafted if drafted else 0.0

    @property
    def mean_accept_length(self) -> float:
        """Tokens emitted per speculative row-step, the bonus included (vLLM's acceptance length)."""
        return 1.0 + sum(self.accepted_per_pos) / self.num_drafts if self.num_drafts else 1.0

    @property
    def per_position_rate(self) -> list[float]:
        """P(position i accepted | position i drafted), unconditional on the earlier positions."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_pos, self.drafted_per_pos)]

    def summary(self) -> dict[str, float | int | list[float]]:
        return {
            "generated_tokens": self.generated_tokens,
            "spec_steps": self.spec_steps,
            "plain_steps": self.plain_steps,
            "acceptance_rate": self.acceptance_rate,
            "mean_accept_length": self.mean_accept_length,
            "per_position_rate": self.per_position_rate,
            "prefill_time_s": self.prefill_time_s,
            "draft_time_s": self.draft_time_s,
            "target_time_s": self.target_time_s,
            "step_time_s": self.step_time_s,
        }
