"""Step costs measured through the engine loop itself: what the controller's goodput divides by.

A bare-forward profile (`forward_profile`) misses what an engine step also pays: sampling, the
log-probs of what it emits, KV rollback and per-row bookkeeping, which grow with k and the batch,
so it underrates speculative steps and the controller speculates where it loses. This profiler
runs `SpeculativeEngine` itself at each (batch size, k), plain steps through the same loop with
the drafter present, and records the median wall time of the steps after a warm-up: the numbers
the controller predicts.
With `rounds` > 1 the whole grid is walked that many times, the order of the ks reversed every
other round, and each cell's median is taken over all its rounds: a machine whose speed drifts
over minutes then puts the drift into every k of a batch size alike,
instead of into whichever k was timed during a slow spell, where it would put the ks out of order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from respec_verl.speculation.drafting import DraftSource
from respec_verl.speculation.engine import SpeculativeEngine
from respec_verl.speculation.policy import FixedK
from respec_verl.speculation.profile import ProfileKey, StepCostProfile, check_grid
from respec_verl.speculation.sampling import SamplingParams


def engine_step_times(
    engine: SpeculativeEngine, prompts: list[list[int]], k: int, steps: int, warmup_steps: int
) -> list[float]:
    """Wall times of `steps` engine steps at draft length k over `prompts`, after `warmup_steps` untimed ones.

    Greedy decoding without stop tokens: no row finishes early. Steps whose k was cut at the
    length cap, or after a row finished, are not counted; the run is lengthened until enough are.
    """
    engine.k_policy = FixedK(k)
    length = warmup_steps + steps + k + 2  # enough when the drafts are rejected, as on random prompts
    while True:
        records = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=length)).stats.steps
        timed = [r.step_time_s for r in records[warmup_steps:] if r.k == k and r.batch_size == len(prompts)]
        if len(timed) >= steps or length > (warmup_steps + steps) * (k + 1) + k:
            return timed[:steps]
        length *= 2


@torch.inference_mode()
def profile_engine_steps(
    target: torch.nn.Module,
    drafter: DraftSource,
    batch_sizes: Sequence[int],
    ks: Sequence[int],
    context_len: int = 128,
    steps: int = 6,
    warmup_steps: int = 2,
    progress: bool = True,
    key: ProfileKey | None = None,
    seed: int = 0,
    prompts: Sequence[Sequence[int]] | None = None,
    rounds: int = 1,
) -> StepCostProfile:
    """Median engine step time per (batch size, k), k = 0 included, over the steps of all `rounds`
    passes over the grid (the ks reversed in every other pass).

    `prompts`: the workload's own prompts (cycled to fill a batch), so that acceptance, and with it
    what a step costs (rows that accept different numbers of drafts leave holes in the KV cache,
    which later steps attend over), is the workload's; None uses random prompts of `context_len`
    tokens, on which almost every draft is rejected. Returns a `StepCostProfile` whose `decode_s`
    holds the plain steps and `engine_s` the speculative ones, keyed by `context_len`. The first
    steps of each run are left out: the prefill's allocations and, after a plain step, the
    drafter's catch-up belong to a switch, not to a step at k.
    """
    check_grid(batch_sizes, ks)
    if context_len < 1 or steps < 1 or warmup_steps < 1 or rounds < 1:
        raise ValueError(
            "profile context_len, steps, warmup_steps and rounds must be >= 1, "
            f"got {context_len}, {steps}, {warmup_steps}, {rounds}"
        )
    vocab = int(target.get_output_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(seed)
    engine = SpeculativeEngine(target, drafter)
    profile = StepCostProfile(key or ProfileKey.of(target, drafter))
    batches = {}
    for b in batch_sizes:
        if prompts:
            batches[b] = [list(prompts[i % len(prompts)]) for i in range(b)]
        else:
            batches[b] = torch.randint(vocab, (b, context_len), generator=generator).tolist()
    times: dict[tuple[int, int], list[float]] = {(b, k): [] for b in batch_sizes for k in (0, *ks)}
    total = rounds * len(batch_sizes) * (1 + len(ks))
    with tqdm(total=total, desc="profiling engine steps", disable=not progress) as bar:
        for round_ in range(rounds):
            for b in batch_sizes:
                for k in (0, *ks) if round_ % 2 == 0 else (*ks[::-1], 0):
                    bar.set_postfix(round=round_ + 1, batch_size=b, k=k)
                    times[(b, k)] += engine_step_times(engine, batches[b], k, steps, warmup_steps)
                    bar.update()
    for (b, k), cell in times.items():
        if k == 0:
            profile.decode_s[(context_len, b)] = statistics.median(cell)
        else:
            profile.engine_s[(context_len, b, k)] = statistics.median(cell)
    return profile
