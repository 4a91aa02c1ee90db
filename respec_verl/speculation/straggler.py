"""Acceptance of a batch's stragglers, per batch size: what sets how many steps a fixed batch takes.

A rollout is a fixed batch, done when its last row is. Each step costs a part that does not
depend on how many rows are live (weights read once, per-step overheads) and a part per row. The
per-row part shrinks as rows finish, so the batch's mean acceptance sets it; the fixed part is paid
until the last row ends, so the acceptance of the rows furthest behind sets it. Rows differ in how
well the drafter knows their text, and the more rows a batch has, the worse its slowest one: on
the 2-core CPU (bench/controller.py) k = 2 emitted 2.1 tokens per row-step at batch 16 yet cut the
batch's steps only from 31 to 27. So the controller keeps, per power-of-two batch bucket, the
acceptance of the lagging rows (those with the fewest tokens when the step began).
"""

from __future__ import annotations

from respec_verl.speculation.acceptance import fold_counts, tokens_per_step
from respec_verl.speculation.calibration import batch_bucket
from respec_verl.speculation.stats import StepRecord


class StragglerAcceptance:
    """Exponentially smoothed per-position acceptance of the lagging rows, per batch bucket.

    Counts as in `AcceptanceEstimate`, but only of the rows a `StepRecord` marks `lagging`, and
    shrunk toward the batch-wide rates (`prior_strength` pseudo-drafts): until the stragglers of a
    bucket have been seen, they are taken to accept as the batch does. A bucket never observed
    borrows the counts of the nearest smaller bucket that was (a larger batch's slowest row is no
    faster than a smaller batch's); with none, the batch-wide rates stand.
    """

    def __init__(self, max_k: int, decay: float = 0.9, prior_strength: float = 2.0):
        self.max_k = max_k
        self.decay = decay
        self.prior_strength = prior_strength
        self.counts: dict[int, tuple[list[float], list[float]]] = {}  # bucket -> (drafted, accepted)

    def observe(self, record: StepRecord) -> None:
        """Fold in the lagging rows of a speculative step.

        Skipped: steps without lagging rows marked, and steps where every row is as far along as
        the others (a batch's first steps, a batch of one): no row stands out as the straggler yet,
        and counting them all would only repeat the batch's mean.
        """
        if record.k <= 0 or record.lagging is None or len(record.lagging) != len(record.num_accepted):
            return
        rows = [n for n, lagging in zip(record.num_accepted, record.lagging) if lagging]
        if not rows or len(rows) == len(record.num_accepted):
            return
        drafted, accepted = self.counts.setdefault(
            batch_bucket(record.batch_size), ([0.0] * self.max_k, [0.0] * self.max_k)
        )
        fold_counts(drafted, accepted, rows, min(record.k, self.max_k), self.decay)

    def _counts_for(self, batch_size: int) -> tuple[list[float], list[float]] | None:
        bucket = batch_bucket(batch_size)
        measured = [b for b in self.counts if b <= bucket]
        return self.counts[max(measured)] if measured else None

    def rates(self, batch_size: int, batch_rates: list[float]) -> list[float]:
        """beta_1 .. beta_max_k of the stragglers at `batch_size`, shrunk toward `batch_rates`."""
        counts = self._counts_for(batch_size)
        if counts is None:
            return list(batch_rates)
        s = self.prior_strength
        return [(a + s * prior) / (d + s) for a, d, prior in zip(counts[1], counts[0], batch_rates)]

    def expected_tokens(self, k: int, batch_size: int, batch_rates: list[float]) -> float:
        """Tokens a lagging row emits per step drafting k (the bonus included)."""
        return tokens_per_step(self.rates(batch_size, batch_rates), k)

    def state_dict(self) -> dict[str, dict[str, list[float]]]:
        return {str(b): {"drafted": list(d), "accepted": list(a)} for b, (d, a) in sorted(self.counts.items())}

    def load_state_dict(self, state: dict[str, dict[str, list[float]]]) -> None:
        """Restore counts; positions beyond a saved shorter state start empty."""
        self.counts = {}
        for bucket, saved in state.items():
            d, a = ([float(x) for x in saved[name]][: self.max_k] for name in ("drafted", "accepted"))
            pad = [0.0] * (self.max_k - len(d))
            self.counts[int(bucket)] = (d + pad, a + pad)
