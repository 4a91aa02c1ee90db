"""The controller's step-cost profile measured in vLLM itself, the engine whose steps it chooses k for.

vLLM's steps cost what respec's core engine's do not: its drafting runs the draft model once per
drafted position with its own per-forward overheads, and its sampler and rejection sampler work
over the whole vocabulary (`bench/vllm_cpu_steps.py`). So this profiler starts one in-process
vLLM engine with the drafter and respec's scheduler, and for each batch size B and k (0 = plain)
generates with B requests at a fixed k, reading the wall time of every engine step from the
scheduler: the median of the decode steps with all B rows in the batch is the table's entry
(`decode_s` for k = 0, whole speculative steps `engine_s` for k > 0).

It needs `VLLM_ENABLE_V1_MULTIPROCESSING=0` (the scheduler in this process) and imports vLLM;
`respec_verl.verl_glue.vllm_profile` runs it in a child process for the trainer.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Sequence

from tqdm.auto import tqdm

from respec_verl.speculation.policy import FixedK
from respec_verl.speculation.profile import ProfileKey, StepCostProfile, check_grid
from respec_verl.speculation.stats import StepRecord
from respec_verl.upstream import vllm_compat
from respec_verl.vllm_glue.settings import RolloutSettings

IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class _TimedFixedK(FixedK):
    """k fixed, and every engine step the scheduler reports kept."""

    def __init__(self, k: int):
        super().__init__(k)
        self.records: list[StepRecord] = []

    def observe(self, record: StepRecord) -> None:
        self.records.append(record)


def step_median(records: Sequence[StepRecord], batch_size: int, k: int) -> float | None:
    """Median wall time of the steps that ran `batch_size` rows at draft length `k` (None: no such step)."""
    times = [r.step_time_s for r in records if r.batch_size == batch_size and r.k == k]
    return statistics.median(times) if times else None


def profile_vllm_step_costs(
    model: str,
    drafter_dir: str,
    dtype: str,
    batch_sizes: Sequence[int],
    ks: Sequence[int],
    temperature: float = 1.0,
    context_len: int = 64,
    tokens: int = 16,
    draft_sample_method: str = "probabilistic",
    seed: int = 0,
    progress: bool = True,
) -> StepCostProfile:
    """Seconds per vLLM engine step for each batch size and k in {0} + ks, on this machine."""
    check_grid(batch_sizes, ks)
    if os.environ.get(IN_PROCESS_ENV) != "0":
        raise RuntimeError(f"set {IN_PROCESS_ENV}=0 before vLLM is imported: the profiler reads the scheduler's "
                           "step times in this process")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    max_k, max_b = max(ks), max(batch_sizes)
    settings = RolloutSettings(True, drafter_dir, max_k, [], {"policy": "fixed", "max_k": max_k},
                               draft_sample_method=draft_sample_method)
    llm = LLM(
        model=model, dtype=dtype, enforce_eager=True, seed=seed, max_num_seqs=max_b,
        max_model_len=context_len + tokens + max_k + 8,
        speculative_config=settings.speculative_config(max_b),
        scheduler_cls="respec_verl.vllm_glue.scheduler.RespecScheduler",
        additional_config={"respec": settings.scheduler_settings()},
    )
    try:
        scheduler = vllm_compat.engine_core_scheduler(llm)
        vocab = llm.llm_engine.model_config.get_vocab_size()
        rng = random.Random(seed)
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(vocab) for _ in range(context_len)])
                   for _ in range(max_b)]
        params = SamplingParams(temperature=temperature, max_tokens=tokens, ignore_eos=True)

        def run(batch: int, k: int) -> list[StepRecord]:
            policy = _TimedFixedK(k)
            scheduler._respec_policy = policy  # the scheduler asks it for k and reports each step to it
            llm.generate(prompts[:batch], params, use_tqdm=False)
            return policy.records

        run(min(4, max_b), max_k)  # warm-up: first calls allocate and build
        profile = StepCostProfile(ProfileKey(model, dtype, f"vllm:{_device()}", os.path.basename(drafter_dir)))
        grid = [(b, k) for b in batch_sizes for k in (0, *ks)]
        for b, k in tqdm(grid, desc="profiling vLLM step costs", disable=not progress):
            median = step_median(run(b, k), b, k)
            if median is None:
                raise RuntimeError(f"no engine step ran {b} rows at k={k}; raise tokens (now {tokens})")
            if k == 0:
                profile.decode_s[(context_len, b)] = median
            else:
                profile.engine_s[(context_len, b, k)] = median
        return profile
    finally:
        del llm


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu:{os.cpu_count()}cores"
