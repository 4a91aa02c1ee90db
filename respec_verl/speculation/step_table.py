"""The profile's step times made monotone: a step never gets cheaper with more rows or a longer draft.

Each profile cell is a median of a few timed steps, and on a busy CPU cells still come out of
order (measured on the 2-core CI machine: plain decoding at batch 2 dearer than at batch 4, k = 2
dearer than k = 4 at batch 1). The controller compares cells, so a cell out of order invents a gain
(speculation "free" at batch 2) or a loss. More rows or a longer draft only add work, so the table
the controller reads is the least-squares fit of the measured cells that is non-decreasing in both
batch size and k (Dykstra's alternating projections over the rows and columns of the grid).
"""

from __future__ import annotations

from respec_verl.speculation.profile import StepCostProfile, interpolate

ITERATIONS = 100  # the grid is small (batch sizes x ks); this is far past convergence


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
    out: list[float] = []
    for mean, count in blocks:
        out.extend([mean] * int(count))
    return out


def monotone_grid(grid: list[list[float]]) -> list[list[float]]:
    """The least-squares fit of `grid` non-decreasing along every row and every column."""
    rows, cols = len(grid), len(grid[0])
    x = [list(r) for r in grid]
    p = [[0.0] * cols for _ in range(rows)]
    q = [[0.0] * cols for _ in range(rows)]
    for _ in range(ITERATIONS):
        a = [non_decreasing([x[i][j] + p[i][j] for j in range(cols)]) for i in range(rows)]
        p = [[x[i][j] + p[i][j] - a[i][j] for j in range(cols)] for i in range(rows)]
        shifted = [[a[i][j] + q[i][j] for j in range(cols)] for i in range(rows)]
        columns = [non_decreasing([shifted[i][j] for i in range(rows)]) for j in range(cols)]
        x = [[columns[j][i] for j in range(cols)] for i in range(rows)]
        q = [[shifted[i][j] - x[i][j] for j in range(cols)] for i in range(rows)]
    for i in range(rows):  # remove what is left of the convergence error: exactly monotone
        for j in range(cols):
            x[i][j] = max(x[i][j], x[i - 1][j] if i else x[i][j], x[i][j - 1] if j else x[i][j])
    return x


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

    def time(self, batch_size: int, k: int) -> float:
        by_k = {kk: interpolate({b: row[j] for b, row in zip(self.batch_sizes, self.cells)}, batch_size)
                for j, kk in enumerate(self.ks)}
        return interpolate(by_k, k)
