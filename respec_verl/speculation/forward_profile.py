"""An offline estimate of step costs from bare forward passes: a decode, a verify over k + 1 tokens, k drafts.

Not what the controller uses at run time: an engine step also pays sampling, log-probs, KV
rollback and per-row bookkeeping, which grow with k and the batch, so a bare-forward profile
underrates speculative steps and kept the controller speculating where it lost. The controller's
profile is measured through the engine (`engine_profile`, `vllm_glue.step_profile`). This one is
for estimates without an engine run, such as a GPU's forward costs on random weights
(`bench/drafters.py --project`), and `respec-verl profile --bare-forward`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
from tqdm.auto import tqdm

from respec_verl.speculation.drafting import DraftSource
from respec_verl.speculation.kv_state import KVState
from respec_verl.speculation.profile import ProfileKey, StepCostProfile, check_grid


def _timed(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` over `repeats` runs, after one untimed warm-up run."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _target_step(state: KVState, tokens: torch.Tensor, last_only: bool) -> None:
    """One target forward over `tokens`, then roll it back so the context length stays fixed."""
    state.forward(tokens, torch.ones_like(tokens, dtype=torch.bool), last_only=last_only)
    state.keep_last(torch.zeros_like(tokens, dtype=torch.bool))


@torch.inference_mode()
def profile_step_costs(
    target: torch.nn.Module,
    drafter: DraftSource,
    batch_sizes: Sequence[int],
    ks: Sequence[int],
    context_len: int | Sequence[int] = 256,
    repeats: int = 5,
    progress: bool = True,
    key: ProfileKey | None = None,
    seed: int = 0,
) -> StepCostProfile:
    """Time the target's decode and verify forwards and the drafter's proposals on this machine (offline).

    Uses the engine's own KV state and proposer over random prompts of `context_len` tokens;
    every timed step is rolled back, so the context stays fixed. Each entry is the median of
    `repeats` runs. The result holds `decode_s`, `draft_s` and `verify_s`, not whole engine steps.
    """
    contexts = [context_len] if isinstance(context_len, int) else list(context_len)
    check_grid(batch_sizes, ks)
    if not contexts or min(contexts) < 1:
        raise ValueError(f"profile context_len must be >= 1, got {context_len}")
    if repeats < 1:
        raise ValueError(f"profile repeats must be >= 1, got {repeats}")

    device = next(target.parameters()).device
    vocab = int(target.get_output_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(seed)
    profile = StepCostProfile(key or ProfileKey.of(target, drafter))
    total = len(contexts) * len(batch_sizes) * (1 + len(ks))
    with tqdm(total=total, desc="profiling step costs", disable=not progress) as bar:
        for ctx in contexts:
            for b in batch_sizes:
                bar.set_postfix(context_len=ctx, batch_size=b)
                prompt = torch.randint(vocab, (b, ctx), generator=generator).to(device)
                target_state = KVState(target)
                last = target_state.forward(prompt, torch.ones_like(prompt, dtype=torch.bool), last_only=True)
                last = last.argmax(dim=-1)
                proposer = drafter.new_proposer(vocab)
                proposer.start(prompt, torch.ones_like(prompt, dtype=torch.bool), last)

                decode = partial(_target_step, target_state, last[:, None], True)
                profile.decode_s[(ctx, b)] = _timed(decode, repeats, device)
                bar.update()
                for k in ks:
                    chunk = torch.randint(vocab, (b, k + 1), generator=generator).to(device)
                    verify = partial(_target_step, target_state, chunk, False)
                    profile.verify_s[(ctx, b, k)] = _timed(verify, repeats, device)
                    profile.draft_s[(ctx, b, k)] = _timed(partial(proposer.probe, k, last), repeats, device)
                    bar.update()
    return profile
