"""What the background drafter update costs the actor update it overlaps on a CPU, side by side.

The async drafter update (`DrafterLearner`, `async_update=true`) runs in a thread while verl's
actor update runs. On a GPU the two can share an idle device; on a CPU both are torch programs
with an OpenMP team each on the same cores. This benchmark times, in interleaved rounds, on
SmolLM2-135M-Instruct and the demo's shapes (16 rollouts of a 32-token answer, actor
micro-batches of 4, the 2-layer self-draft with a 2048-token head, 4 drafter steps of 8 rollouts):

- `actor`: the actor update alone (forward, backward and AdamW over the 16 rollouts);
- `drafter/D`: the drafter update alone (synchronous), its forward in dtype D (`compute_dtype`);
- `overlap/D[/threads=N[/nice=M]]`: the two together, the drafter update in the background, timed
  until both are done; with N torch threads in the update's thread and M more OS niceness
  (set by this benchmark: the learner has no such knobs, because they did not help);
- `overlap/D/stream` (`--device cuda`): the same with the update's kernels on a CUDA stream of
  their own instead of the device's default stream, which the actor update's kernels use too
  (torch's current stream is per thread and starts at the default stream), so that the GPU can
  run the two side by side; the learner has no side stream yet: this measures whether it would pay.

`--device cuda --model random` runs on a GPU with SmolLM2-135M's architecture and random weights
(the timings do not depend on the weights, and nothing has to be carried to a machine that cannot
reach the model's package): one script for a GPU session,

    python -m bench.overlap_cost --device cuda --model random --rounds 5 \
        --modes actor,drafter/bfloat16,overlap/bfloat16,overlap/bfloat16/stream --out overlap_cost_gpu.json

Reports the median seconds of each, each overlap's cost over the actor alone (what the async update
adds to the step; `paired`: the median of the per-round ratios) and the KD loss each drafter dtype
reaches. Writes JSON.

    python -m bench.overlap_cost --rounds 5 --out bench/results/overlap_cost.json
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bench.common import SMOLLM2_135M, random_llama, save_result, script_parser
from respec_verl.data.arithmetic import make_problems
from respec_verl.drafter.distill import make_kd_batch
from respec_verl.drafter.learner import DrafterLearner
from respec_verl.drafter.learner_config import LearnerConfig
from respec_verl.drafter.self_draft import pad_with_low_ids, self_draft
from respec_verl.models.smollm2 import encode_chat, load_smollm2

MODES = (
    "actor",
    "drafter/float32",
    "drafter/bfloat16",
    "overlap/float32",
    "overlap/bfloat16",
    "overlap/float32/threads=1",
    "overlap/float32/threads=1/nice=10",
)


def parse_mode(mode: str) -> tuple[str, int, int, bool]:
    """(compute dtype, threads, nice, side stream) of a `drafter/...` or `overlap/...` mode."""
    parts = mode.split("/")
    stream = "stream" in parts[2:]
    settings = dict(part.split("=") for part in parts[2:] if part != "stream")
    return parts[1], int(settings.get("threads", 0)), int(settings.get("nice", 0)), stream


def random_smollm2(layers: int, device: torch.device) -> torch.nn.Module:
    """SmolLM2-135M-Instruct's architecture (its config.json) with random weights, `layers` deep."""
    return random_llama(
        device, **{**SMOLLM2_135M, "num_hidden_layers": layers}, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def cpu_share(threads: int, nice: int) -> Iterator[None]:
    """This thread's torch threads (0: unchanged; torch's count is per thread) and added niceness
    (Linux schedules threads: it lasts as long as the thread, which is the update's own)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    if nice:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)  # also torch's default for threads started later


class SharingLearner(DrafterLearner):
    """A learner whose background update runs with `share` = (threads, nice), on `stream` if set."""

    share = (0, 0)
    stream: torch.cuda.Stream | None = None

    def _run(self, rollouts, cpu_threads=None):
        if threading.current_thread() is threading.main_thread():
            return super()._run(rollouts, cpu_threads)
        with cpu_share(*self.share):
            if self.stream is None:
                return super()._run(rollouts, cpu_threads)
            with torch.cuda.stream(self.stream):
                result = super()._run(rollouts, cpu_threads)
            self.stream.synchronize()  # the published drafter is complete before any other stream reads it
            return result


def rollouts(tokenizer, n: int, response_length: int, seed: int,
             vocab_size: int = 49152) -> tuple[list[list[int]], list[list[int]]]:
    """Demo-shaped prompts with random answers: the cost of an update does not depend on the text.
    Without a tokenizer (`--model random`) the prompts are random too, of the demo's 45 tokens."""
    gen = torch.Generator().manual_seed(seed)
    if tokenizer is None:
        prompts = [torch.randint(3, vocab_size, (45,), generator=gen).tolist() for _ in range(n)]
    else:
        prompts = [encode_chat(tokenizer, p.question) for p in make_problems(n, seed=seed)]
        vocab_size = tokenizer.vocab_size
    responses = [torch.randint(0, vocab_size, (response_length,), generator=gen).tolist() for _ in prompts]
    return prompts, responses


def actor_update(actor, optimizer, prompts, responses, micro_batch: int) -> None:
    """One policy-gradient-shaped update: log-prob loss of the answer tokens, micro-batched, one AdamW step."""
    actor.train()
    optimizer.zero_grad(set_to_none=True)
    device = next(actor.parameters()).device
    for start in range(0, len(prompts), micro_batch):
        batch = make_kd_batch(prompts[start:start + micro_batch], responses[start:start + micro_batch])
        ids, answer = batch.input_ids.to(device), batch.response_mask[:, :-1].to(device)
        logits = actor(input_ids=ids, attention_mask=batch.attention_mask.to(device)).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(logp * answer).sum() / answer.sum()
        loss.backward()
    optimizer.step()
    actor.eval()


def run_mode(mode: str, actor, optimizer, draft, labelled, data, args) -> tuple[float, float | None]:
    """(seconds, the drafter update's mean KD loss or None) of one run of `mode`.

    Every drafter run is the first update of a fresh learner on the same rollouts, so the runs of
    both dtypes start alike and their losses compare.
    """
    device = next(actor.parameters()).device
    sync(device)
    if mode == "actor":
        start = time.perf_counter()
        actor_update(actor, optimizer, *data, args.micro_batch)
        sync(device)
        return time.perf_counter() - start, None
    dtype, threads, nice, stream = parse_mode(mode)
    background = mode.startswith("overlap")
    config = LearnerConfig(temperature=0.6, compute_dtype=dtype, async_update=background)
    learner = SharingLearner(draft, config, target=actor)
    learner.share = (threads, nice)
    learner.stream = torch.cuda.Stream(device) if stream else None
    learner.add_labelled(labelled)
    sync(device)
    start = time.perf_counter()
    learner.update(1)
    if background:
        actor_update(actor, optimizer, *data, args.micro_batch)
    metrics = learner.wait()
    sync(device)
    return time.perf_counter() - start, metrics["respec/drafter/loss"]


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N]")
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "random"),
                        help="SmolLM2-135M-Instruct from its package, or its architecture with random weights")
    parser.add_argument("--layers", type=int, default=30, help="depth of the random model (SmolLM2 has 30)")
    parser.add_argument("--out", default="bench/results/overlap_cost.json")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device; allowed here: cpu")
    if device.type != "cuda" and any(parse_mode(m)[3] for m in modes if m != "actor"):
        parser.error("--modes: a `/stream` mode needs --device cuda")
    if args.layers < 3:
        parser.error("--layers must be >= 3 (the self-draft takes 2)")

    torch.manual_seed(args.seed)
    if args.model == "random":
        actor, tokenizer = random_smollm2(args.layers, device), None
    else:
        actor, tokenizer = load_smollm2(torch.float32)
        actor.to(device)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=1e-7)  # timing only: keep the actor where it is
    vocab = pad_with_low_ids([actor.config.eos_token_id], 2048, actor.config.vocab_size)
    draft = self_draft(actor, 2, vocab)
    data = rollouts(tokenizer, args.rollouts, args.response_length, args.seed, actor.config.vocab_size)
    labeller = DrafterLearner(draft, LearnerConfig(temperature=0.6), target=actor)
    labeller.add_rollouts(*data, scores=[float(i % 2) for i in range(args.rollouts)])
    with labeller._lock:
        labelled = list(labeller._buffer)

    for mode in modes:  # warm-up: allocator growth, OpenMP teams, oneDNN's bf16 kernels
        run_mode(mode, actor, optimizer, draft, labelled, data, args)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    losses: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for mode in order:
            seconds, loss = run_mode(mode, actor, optimizer, draft, labelled, data, args)
            times[mode].append(seconds)
            if loss is not None:
                losses.setdefault(parse_mode(mode)[0], []).append(loss)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in modes), flush=True)

    median = {m: statistics.median(t) for m, t in times.items()}
    actor_s = median.get("actor")
    result = {"args": vars(args), "times_s": times, "median_s": median}
    result["kd_loss"] = {d: statistics.median(v) for d, v in losses.items()}  # equal in every run of a dtype
    if actor_s:
        result["overhead_over_actor"] = {m: median[m] / actor_s - 1 for m in modes if m.startswith("overlap")}
        result["overhead_paired"] = {
            m: statistics.median(o / a - 1 for o, a in zip(times[m], times["actor"]))
            for m in modes if m.startswith("overlap")
        }
        result["serial_overhead"] = {m: median[m] / actor_s for m in modes if m.startswith("drafter")}
    print(f"{'mode':28s} {'median s':>9s} {'over actor':>11s} {'paired':>8s}")
    for m in modes:
        over = result.get("overhead_over_actor", {}).get(m)
        pair = result.get("overhead_paired", {}).get(m)
        cols = [f"{over:+.1%}" if over is not None else "", f"{pair:+.1%}" if pair is not None else ""]
        print(f"{m:28s} {median[m]:9.2f} {cols[0]:>11s} {cols[1]:>8s}")
    for m, share in result.get("serial_overhead", {}).items():
        print(f"serial (actor, then {m}) would add {share:+.1%}")
    print("drafter KD loss over its first update: " + ", ".join(f"{d} {v:.4f}" for d, v in result["kd_loss"].items()))
    save_result(args.out, result, device=device)


if __name__ == "__main__":
    main()
