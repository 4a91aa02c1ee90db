"""The batched speculative generation loop over HF causal LMs: draft, verify, accept, roll back."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from respec_verl.speculation.drafting import DraftSource
from respec_verl.speculation.kv_state import KVState
from respec_verl.speculation.policy import FixedK, KPolicy
from respec_verl.speculation.sampling import SamplingParams, probs_from_logits, sample_rows, token_logprobs
from respec_verl.speculation.stats import SpecStats, StepRecord
from respec_verl.speculation.verifier import Verifier, rejection_sample


@dataclass
class GenerationOutput:
    """Generated ids per request (prompt excluded), the target's log-prob of each, and statistics."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    stats: SpecStats
    drafter_version: int | None


class SpeculativeEngine:
    """Generates with a target model, speculating with a drafter when the k policy says so.

    k = 0 (no drafter, or the policy turns speculation off) is plain autoregressive decoding through
    the same loop, so speed comparisons are fair. Greedy output equals plain greedy decoding; sampled
    output is distributed as the target's (see `verifier.rejection_sample`).
    """

    def __init__(
        self,
        target: torch.nn.Module,
        drafter: DraftSource | None = None,
        k_policy: KPolicy | None = None,
        verifier: Verifier = rejection_sample,
        pad_token_id: int = 0,
    ):
        self.target = target
        self.vocab_size = int(target.get_output_embeddings().weight.shape[0])
        if drafter is not None:
            drafter.check_compatible(self.vocab_size)
        self.drafter = drafter
        self.k_policy: KPolicy = k_policy or FixedK(0 if drafter is None else 4)
        self.verifier = verifier
        self.pad_token_id = pad_token_id

    @property
    def drafter_version(self) -> int | None:
        return None if self.drafter is None else self.drafter.version

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> GenerationOutput:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        run = _Run(self, prompts, params, seeds)
        while run.alive:
            run.step()
        return GenerationOutput(run.outputs, run.out_logprobs, run.stats, self.drafter_version)


class _Run:
    """The state of one `generate` call: live rows, their caches, generators and outputs."""

    def __init__(self, engine: SpeculativeEngine, prompts: list[list[int]], params: SamplingParams, seeds):
        self.engine, self.params = engine, params
        self.stop = set(params.stop_token_ids)
        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((batch, width), engine.pad_token_id, dtype=torch.long)
        valid = torch.zeros(batch, width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):  # left padding
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            valid[row, width - len(prompt) :] = True
        self.generators: list[torch.Generator | None] = (
            [None] * batch if seeds is None else [torch.Generator().manual_seed(int(s)) for s in seeds]
        )
        self.alive = list(range(batch))  # request index of each live row
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.out_logprobs: list[list[float]] = [[] for _ in prompts]
        self.stats = SpecStats()

        start = time.perf_counter()
        self.proposer = None if engine.drafter is None else engine.drafter.new_proposer(engine.vocab_size)
        # a proposer that reads the target's hidden states (EAGLE) gets them with every token reported
        layers = tuple(getattr(self.proposer, "target_layers", ()))
        self.target = KVState(engine.target, feature_layers=layers)
        logits = self.target.forward(ids, valid, last_only=True)
        first = self._sample(logits)
        if self.proposer is not None:
            self.proposer.start(ids, valid, first, **self._features())
        self.stats.prefill_time_s = time.perf_counter() - start
        self.last = first
        first_logprobs = token_logprobs(logits, first, params.temperature)[:, None]
        self._drop_finished(self._emit(first[:, None], first_logprobs, torch.zeros(batch)))

    def _features(self) -> dict[str, torch.Tensor]:
        """The target's features at the tokens it just read, for a `FeatureProposer`; nothing for others."""
        return {"features": self.target.features} if self.target.feature_layers else {}

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.params.greedy:
            return logits.argmax(dim=-1)
        return sample_rows(probs_from_logits(logits, self.params), self.generators)

    def _choose_k(self) -> int:
        if self.proposer is None:
            return 0
        room = max(self.params.max_new_tokens - len(self.outputs[r]) for r in self.alive)
        return max(0, min(self.engine.k_policy.choose_k(len(self.alive)), room - 1))

    def step(self) -> None:
        step_start = time.perf_counter()
        k = self._choose_k()
        batch = len(self.alive)
        draft_time = 0.0
        if k > 0:
            start = time.perf_counter()
            drafts, draft_probs = self.proposer.propose(k, self.params, self.generators)
            drafted = time.perf_counter()
            draft_time = drafted - start
            k = drafts.shape[1]  # a proposer may draft fewer (none: nothing worth verifying)
        if k == 0:
            start = time.perf_counter()
            logits = self.target.forward(self.last[:, None], torch.ones(batch, 1, dtype=torch.bool), last_only=True)
            token = self._sample(logits)
            target_time = time.perf_counter() - start
            if self.proposer is not None:
                self.proposer.push(token, **self._features())
            logprobs = token_logprobs(logits, token, self.params.temperature)
            record = StepRecord(batch, 0, [0] * batch, draft_time, target_time)
            zeros = torch.zeros(batch, dtype=torch.long)
            self._finish_step(step_start, token, token[:, None], logprobs[:, None], zeros, record)
            return

        chunk = torch.cat([self.last[:, None], drafts], dim=1)
        logits = self.target.forward(chunk, torch.ones(batch, k + 1, dtype=torch.bool))  # [B, k+1, V]
        scores = logits if self.params.greedy else probs_from_logits(logits, self.params)
        verdict = self.engine.verifier(drafts, draft_probs, scores, self.generators, self.params.greedy)
        n = verdict.num_accepted
        # KV rollback: of [last, d_1..d_k] keep last and the accepted drafts, the rest become holes
        self.target.keep_last(torch.arange(k + 1)[None, :] <= n[:, None])
        self.proposer.accept(drafts, n, verdict.next_token, **self._features())
        target_time = time.perf_counter() - drafted

        rows = torch.arange(batch)
        emitted = torch.cat([drafts, torch.zeros_like(drafts[:, :1])], dim=1)
        emitted[rows, n] = verdict.next_token
        logprobs = token_logprobs(logits, emitted, self.params.temperature)
        record = StepRecord(batch, k, n.tolist(), draft_time, target_time)
        self._finish_step(step_start, verdict.next_token, emitted, logprobs, n, record)

    def _finish_step(self, step_start: float, last, emitted, logprobs, num_accepted, record: StepRecord) -> None:
        """Emit, then time the step: the step-cost profile (`engine_profile`) reads what a step at its k takes.

        The time stops before finished rows leave the batch: that copies the caches once per finished
        row whatever k is, and charging it to the step's k would make the k in use when rows finish
        (often 0, near the length cap) look dear.
        """
        self.last = last
        keep = self._emit(emitted, logprobs, num_accepted)
        record.step_time_s = time.perf_counter() - step_start
        self._drop_finished(keep)
        self.stats.record(record)
        self.engine.k_policy.observe(record)

    def _emit(self, emitted: torch.Tensor, logprobs: torch.Tensor, num_accepted: torch.Tensor) -> list[int]:
        """Append each row's first num_accepted+1 tokens; returns the rows that did not reach a stop
        token or the length cap."""
        keep = []
        for row, request in enumerate(self.alive):
            out, out_lp = self.outputs[request], self.out_logprobs[request]
            done = False
            for j in range(int(num_accepted[row]) + 1):
                token = int(emitted[row, j])
                out.append(token)
                out_lp.append(float(logprobs[row, j]))
                self.stats.generated_tokens += 1
                if token in self.stop or len(out) >= self.params.max_new_tokens:
                    done = True
                    break
            if not done:
                keep.append(row)
        return keep

    def _drop_finished(self, keep: list[int]) -> None:
        """Shrink the batch to the rows in `keep` (caches, generators, last tokens)."""
        if len(keep) == len(self.alive):
            return
        self.alive = [self.alive[r] for r in keep]
        if not keep:
            return
        rows = torch.tensor(keep)
        self.target.select_rows(rows)
        if self.proposer is not None:
            self.proposer.select_rows(rows)
        self.generators = [self.generators[r] for r in keep]
        self.last = self.last[rows]
