"""Online calibration of the profiled step costs against what the engine's steps really take.

A profile of bare forward passes misses what an engine step also pays (sampling, log-probs, KV
masking and rollback, per-row bookkeeping; in a serving engine, scheduling and its own kernels),
more so for a speculative step than for a plain one, and differently at each batch size; even a
profile of whole engine steps drifts (context growth, other load). Deciding on uncorrected costs
keeps speculation on where it loses, so the controller scales each profiled cost by the
measured/predicted ratio of recent engine steps at the same k, per batch-size bucket where that
bucket has been measured. This machine's speed also drifts by 10-25% over minutes, and a cell
learnt during a slow spell would look dear beside one learnt during a fast one, so the cells are
kept net of a running machine-wide drift factor (`StepTimeCalibration`).
"""

from __future__ import annotations

import math

MAX_FIRST_RATIO = 10.0  # a cell's first measurement sets it within [1/10, 10] (net of the drift)
MAX_MOVE = 2.0  # each later one moves it by at most this factor, so a stall is one bounded blip
DRIFT_GAIN = 0.3  # the part of a step's error against its own cell put down to the machine at once


def batch_bucket(batch_size: int) -> int:
    """The power of two at or below `batch_size`: 1, 2, 4, 8, ... (costs change smoothly within one)."""
    return 1 << (max(int(batch_size), 1).bit_length() - 1)


def _usable(seconds: float) -> bool:
    return isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0


class StepTimeCalibration:
    """Smoothed measured / predicted step time per k, k = 0 (plain decoding) included.

    Two levels: per k, shared across batch sizes (the controller needs costs at batch sizes it has
    not run yet, and most (batch size, k) cells are never observed), and per (batch-size bucket, k)
    for the cells that were, which override the shared ratio there: the overheads a profile misses
    differ between a batch of 1 and one of 64, and a shared ratio learnt at one would misjudge the
    other. Each cell is a moving
    average of log(measured / predicted) net of the drift below (a geometric mean) whose weight on
    the past is decay ** (engine steps since k was last measured): consecutive steps at k average
    with weight `decay` in the cell, while a cell left alone for long (speculation off, seen only at
    a probe) gives way to the next measurement instead of keeping the controller off on old
    evidence. Each measurement moves the ratio by at most a factor `MAX_MOVE`. Skipped: the first
    step at each k seen by this instance (allocator growth, lazy initialisation), a speculative
    step right after a plain one (it also pays the drafter's catch-up over the queued tokens, a
    once-per-switch cost the controller does not model), and steps without a usable time.
    decay = 0 disables calibration.

    Drift: every ratio is the product of a machine-wide factor and the cell's own, relative one. A
    step measured where its cell has evidence of its own puts `DRIFT_GAIN` of its (log) error
    against that cell down to the machine, which moves every cell's ratio alike, and the rest to
    the cell (which moves 1 - decay ** age of the way toward it: at decay 0.8 and consecutive steps
    the drift takes 0.3 and the cell 0.14 of the error, so about two thirds of what a run of steps
    at one k learns reaches every k, and the ratio of the k running moves 0.44 of its error per step
    where it moved 0.2 before the drift); the drift's part shrinks by `decay` per step since the cell
    was last measured, since the error of a cell left alone for long is mostly its own staleness (a
    probe after a spell of contention), and the error of one measured a step ago is news about the
    machine. A machine
    that slows while the controller runs one k then makes the ks it is not running dearer with it,
    instead of leaving them at their old, now too cheap, cost beside it (which would switch k on a
    slowdown of every step); a common factor does not change a decision.
    A step whose cell has no evidence yet teaches only that cell: its error is the cell's unknown
    relative cost, not drift.
    """

    def __init__(self, decay: float = 0.8):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"StepTimeCalibration.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.log_ratio: dict[int, float] = {}  # per k, all batch sizes
        self.updated_at: dict[int, int] = {}  # the step count at each k's last update
        self.local: dict[tuple[int, int], float] = {}  # per (batch bucket, k)
        self.local_updated_at: dict[tuple[int, int], int] = {}
        self.drift = 0.0  # log of the machine-wide factor on every ratio
        self.steps = 0  # engine steps observed
        self._seen: set[int] = set()  # ks already stepped: warm-up belongs to this process, not a checkpoint
        self._last_k: int | None = None

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    def observe(self, k: int, measured_s: float, predicted_s: float, batch_size: int | None = None) -> None:
        """Fold in one engine step of draft length k (at `batch_size`, if known) that took `measured_s`
        where the profile said `predicted_s`."""
        self.steps += 1
        catch_up = k > 0 and self._last_k == 0
        first = k not in self._seen
        self._seen.add(k)
        self._last_k = k
        if not self.enabled or first or catch_up or not (_usable(measured_s) and _usable(predicted_s)):
            return
        log_ratio = math.log(measured_s / predicted_s)
        own = self._own(k, batch_size)
        drift_move = 0.0
        if own is not None:
            own_value, age = own
            gain = DRIFT_GAIN * self.decay ** (age - 1)  # a cell left alone for long errs by its own staleness
            bound = math.log(MAX_MOVE)
            drift_move = gain * min(max(log_ratio - (self.drift + own_value), -bound), bound)
            self.drift += drift_move
        bound = math.log(MAX_MOVE) - abs(drift_move)  # the ratio moves by at most MAX_MOVE in all
        relative = log_ratio - self.drift
        _update(self.log_ratio, self.updated_at, k, relative, self.steps, self.decay, bound)
        if batch_size is not None:
            cell = (batch_bucket(batch_size), k)
            _update(self.local, self.local_updated_at, cell, relative, self.steps, self.decay, bound)

    def _own(self, k: int, batch_size: int | None) -> tuple[float, int] | None:
        """The observed cell's own relative log ratio and its age in steps, None where it has no evidence yet."""
        if batch_size is None:
            return (self.log_ratio[k], self.steps - self.updated_at[k]) if k in self.log_ratio else None
        cell = (batch_bucket(batch_size), k)
        return (self.local[cell], self.steps - self.local_updated_at[cell]) if cell in self.local else None

    def ratio(self, k: int, batch_size: int | None = None) -> float:
        """The factor on the profile's step time at k (and `batch_size`); 1 before any evidence.

        A measured (batch bucket, k) cell gives its own ratio. Otherwise the shared one at k; an
        unmeasured k > 0 takes the ratio of the nearest measured k > 0 (ties: the smaller), since
        speculative steps share their overheads and learning each k's cost by running it would lose;
        with no speculative step measured, the plain ratio, since a speculative step does all a
        plain one does. An unmeasured k = 0 stays at the drift factor (1 before any evidence): plain
        decoding is what the profile times.

        Plain decoding borrowed into a bucket where speculative steps were measured is capped at the
        smallest of their ratios there. The controller measures plain decoding at a bucket only if it
        chooses it there, so without the cap a plain ratio learnt elsewhere (batch 1, where per-step
        overheads dominate) keeps plain looking dearer than it is at a bucket that speculates, and
        speculation stays on where it loses (bench/controller.py at batch 16, docs/notebook/controller.md 2g).
        The mirror rule: a speculative ratio borrowed into a bucket where plain decoding was measured
        is at least that bucket's plain ratio (a speculative step does all a plain one does), so a
        ratio learnt at small batches, where a profile may overprice speculation, cannot make it look
        cheap at batch 64 (2g). A common slowdown of every step still scales both sides alike.
        """
        if not self.enabled:
            return 1.0
        return math.exp(self.drift + self._relative(k, batch_size))

    def _relative(self, k: int, batch_size: int | None) -> float:
        """The log ratio at k net of the machine's drift, by the rules of `ratio`."""
        if batch_size is None:
            return self._shared(k)
        bucket = batch_bucket(batch_size)
        if (bucket, k) in self.local:
            return self.local[(bucket, k)]
        if k == 0:
            here = [v for (b, j), v in self.local.items() if b == bucket and j > 0]
            return min([self._shared(0), *here])
        if (bucket, 0) in self.local:
            return max(self._shared(k), self.local[(bucket, 0)])
        return self._shared(k)

    def _shared(self, k: int) -> float:
        """The log ratio at k shared across batch sizes (see `ratio`)."""
        if k in self.log_ratio:
            return self.log_ratio[k]
        measured = [j for j in self.log_ratio if j > 0]
        if k == 0 or not measured:
            return self.log_ratio.get(0, 0.0)
        return self.log_ratio[min(measured, key=lambda j: (abs(j - k), j))]

    def state_dict(self) -> dict:
        """Drift, ratios and their ages in steps, keyed by "k" and "bucket:k" so a JSON round trip is exact."""
        return {
            "drift": self.drift,
            "log_ratio": {str(k): v for k, v in sorted(self.log_ratio.items())},
            "age": {str(k): self.steps - self.updated_at[k] for k in sorted(self.log_ratio)},
            "local": {f"{b}:{k}": v for (b, k), v in sorted(self.local.items())},
            "local_age": {f"{b}:{k}": self.steps - self.local_updated_at[(b, k)] for b, k in sorted(self.local)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a state saved before the per-bucket cells (or the drift) existed has none."""
        self.drift = float(state.get("drift", 0.0))
        self.log_ratio = {int(k): float(v) for k, v in state["log_ratio"].items()}
        age = state.get("age", {})
        self.steps = 0
        self.updated_at = {k: -int(age.get(str(k), 0)) for k in self.log_ratio}
        cells = {tuple(int(x) for x in key.split(":")): (key, float(v)) for key, v in state.get("local", {}).items()}
        local_age = state.get("local_age", {})
        self.local = {cell: v for cell, (_, v) in cells.items()}
        self.local_updated_at = {cell: -int(local_age.get(key, 0)) for cell, (key, _) in cells.items()}


def _update(table: dict, updated_at: dict, key, log_ratio: float, steps: int, decay: float, bound: float) -> None:
    """Move `table[key]` toward `log_ratio` by at most `bound`; weight on the past: decay ** (steps since).

    A new key is set to `log_ratio` clipped to log(`MAX_FIRST_RATIO`) instead.
    """
    if key not in table:
        bound = math.log(MAX_FIRST_RATIO)
        new = min(max(log_ratio, -bound), bound)
    else:
        old = table[key]
        weight = decay ** (steps - updated_at[key])
        new = old + min(max((1.0 - weight) * (log_ratio - old), -bound), bound)
    table[key] = new
    updated_at[key] = steps
