"""Online per-position acceptance: how many tokens a k-token draft is expected to yield now.

Acceptance drifts during RL as the actor and the drafter are updated, so the estimate is smoothed
over recent steps rather than averaged over the whole run.
"""

from __future__ import annotations

from respec_verl.speculation.stats import StepRecord


class AcceptanceEstimate:
    """Exponentially smoothed conditional rates beta_i = P(accept position i | accepted 1..i-1).

    Per position it keeps decayed counts: D_i of rows that drafted position i (they accepted
    1..i-1) and A_i of rows that accepted it; each step that drafts position i multiplies both by
    `decay` before adding its counts, so the estimate is a sample-weighted moving average. The rate
    is shrunk toward a prior with `prior_strength` pseudo-drafts:
        beta_i = (A_i + s * prior_i) / (D_i + s),  prior_1 = `prior`,  prior_i = beta_{i-1},
    so a position never drafted inherits the last measured one (neighbouring positions accept at
    similar rates), instead of a guess unrelated to what was observed.
    """

    def __init__(self, max_k: int, decay: float = 0.9, prior: float = 0.7, prior_strength: float = 2.0):
        if max_k < 0:
            raise ValueError(f"AcceptanceEstimate.max_k must be >= 0, got {max_k}")
        self.max_k = max_k
        self.decay = decay
        self.prior = prior
        self.prior_strength = prior_strength
        self.drafted = [0.0] * max_k
        self.accepted = [0.0] * max_k

    def observe(self, record: StepRecord) -> None:
        """Fold in one engine step (plain steps carry no acceptance evidence and change nothing)."""
        fold_counts(self.drafted, self.accepted, record.num_accepted, min(record.k, self.max_k), self.decay)

    def rates(self) -> list[float]:
        """beta_1 .. beta_max_k."""
        out, prior = [], self.prior
        for a, d in zip(self.accepted, self.drafted):
            prior = (a + self.prior_strength * prior) / (d + self.prior_strength)
            out.append(prior)
        return out

    def expected_tokens(self, k: int) -> float:
        """Tokens one row emits per step drafting k: 1 + sum_{i<=k} prod_{j<=i} beta_j (the bonus included)."""
        if not 0 <= k <= self.max_k:
            raise ValueError(f"expected_tokens needs 0 <= k <= max_k={self.max_k}, got {k}")
        return tokens_per_step(self.rates(), k)

    def state_dict(self) -> dict[str, list[float]]:
        return {"drafted": list(self.drafted), "accepted": list(self.accepted)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restore counts; positions beyond a saved shorter state start empty (at the prior)."""
        for name in ("drafted", "accepted"):
            saved = [float(x) for x in state[name]][: self.max_k]
            setattr(self, name, saved + [0.0] * (self.max_k - len(saved)))


def fold_counts(drafted: list[float], accepted: list[float], num_accepted: list[int], k: int, decay: float) -> None:
    """Decay and add one step's counts in place: per position i, rows that drafted it and rows that accepted it."""
    for i in range(k):  # position i + 1
        reached = sum(n >= i for n in num_accepted)
        if reached == 0:
            break  # no row got this far; older evidence of this position is kept, not decayed
        drafted[i] = decay * drafted[i] + reached
        accepted[i] = decay * accepted[i] + sum(n > i for n in num_accepted)


def tokens_per_step(rates: list[float], k: int) -> float:
    """1 + sum_{i<=k} prod_{j<=i} beta_j: a row's tokens from a k-token draft (the bonus included)."""
    total, reach = 1.0, 1.0
    for beta in rates[:k]:
        reach *= beta  # P(positions 1..i all accepted)
        total += reach
    return total
