"""The profile's step times made monotone: a step never gets cheaper with more rows or a longer draft.

Each profile cell is a median of a few timed steps, and on a busy machine cells still come out of
order (plain decoding at batch 2 dearer than at batch 4, k = 2 dearer than k = 4 at batch 1). The
controller compares cells, so a cell out of order invents a gain (speculation "free" at batch 2)
or a loss. More rows or a longer draft only add work, so the table the controller reads is the
measured grid fitted non-decreasing in batch size, then in k.
"""

from __future__ import annotations

from respec_verl.speculation.profile import StepCostProfile, interpolate


def non_decreasing(values: list[float]) -> list[float]:
    """The least-squares non-decreasing fit of `values` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            prev = blocks[-1]
            prev[0] = (prev[0] * prev[1] + mean * count) / (prev[1] + count)
            prev[1] += count
    return [mean for mean, count in blocks for _ in range(int(count))]


def monotone_grid(grid: list[list[float]]) -> list[list[float]]:
    """`grid` (rows: batch sizes, columns: ks) fitted non-decreasing down every column, then along every row.

    The second fit keeps the first's order: pool adjacent violators is order-preserving, so rows
    that were element-wise ordered stay so.
    """
    columns = [non_decreasing([row[j] for row in grid]) for j in range(len(grid[0]))]
    return [non_decreasing([column[i] for column in columns]) for i in range(len(grid))]


class MonotoneStepTable:
    """Seconds per engine step at (batch size, k), from a profile's cells fitted monotone.

    The cells are the profile's measured batch sizes times `ks` (0 = plain decoding) at one context
    length; between and beyond them, linear in batch size as the profile interpolates (flat below
    the first, the last segment's slope above the last), then linear in k.
    """

    def __init__(self, profile: StepCostProfile, ks: tuple[int, ...], context_len: int | None = None):
        ctx = profile.bucket(context_len)
        self.batch_sizes = sorted({b for c, b in profile.decode_s if c == ctx})
        self.ks = sorted(set(ks) | {0})
        raw = [[profile.step_time(b, k, ctx) for k in self.ks] for b in self.batch_sizes]
        self.cells = monotone_grid(raw)
        self._times: dict[tuple[int, int], float] = {}  # the table is fixed: cache its interpolation

    def time(self, batch_size: int, k: int) -> float:
        if (batch_size, k) not in self._times:
            by_k = {kk: interpolate({b: row[j] for b, row in zip(self.batch_sizes, self.cells)}, batch_size)
                    for j, kk in enumerate(self.ks)}
            self._times[(batch_size, k)] = interpolate(by_k, k)
        return self._times[(batch_size, k)]
