"""Sampled speculative decoding must be distributed exactly as the target.

Each test draws N sequences of 4 tokens from a 6-token vocabulary and compares their joint law with
the exact one (6^4 bins, computed from the target) by a chi-square test. Seeds are fixed, so a
run is deterministic; ALPHA = 1e-4 per test keeps the chance that a correct verifier fails any of
these tests, over a fresh choice of seeds, under 0.1%. The same test run on a verifier that skips
the residual must reject, which shows the test has power at this N.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from respec_verl.drafter import Drafter, self_draft
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine, Verdict, rejection_sample
from respec_verl.speculation.sampling import probs_from_logits, sample_rows, uniform_rows
from respec_verl.speculation.verifier import leading_true
from tests.conftest import tiny_llama

VOCAB, LENGTH, N, ALPHA = 6, 4, 20_000, 1e-4
PROMPT = [1, 4, 2]


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=11, hidden=32, init_std=0.08)


def exact_joint(target, params: SamplingParams) -> torch.Tensor:
    """P(t1..t4 | prompt) for all 6^4 continuations, from one batched forward."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=LENGTH)))
    inputs = torch.cat([torch.tensor(PROMPT).expand(len(seqs), -1), seqs[:, :-1]], dim=1)
    with torch.no_grad():
        logits = target(input_ids=inputs).logits[:, len(PROMPT) - 1 :]  # predicts t1..t4
    probs = probs_from_logits(logits, params)
    return probs.gather(-1, seqs.unsqueeze(-1)).squeeze(-1).prod(dim=1)


def sampled_counts(engine: SpeculativeEngine, params: SamplingParams) -> torch.Tensor:
    out = engine.generate([PROMPT] * N, params, seeds=list(range(N)))
    codes = torch.tensor(out.token_ids) @ (VOCAB ** torch.arange(LENGTH - 1, -1, -1))
    return torch.bincount(codes, minlength=VOCAB**LENGTH)


def chi_square_pvalue(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Chi-square p-value, with the bins expected below 5 merged into one (0 if an impossible bin is hit)."""
    expected = expected_probs.double() * counts.sum()
    impossible = expected_probs == 0  # e.g. cut by top-k / top-p
    if counts[impossible].sum() > 0:
        return 0.0
    counts, expected = counts[~impossible], expected[~impossible]
    small = expected < 5
    obs, exp = counts[~small].double(), expected[~small]
    if small.any():
        obs = torch.cat([obs, counts[small].double().sum().view(1)])
        exp = torch.cat([exp, expected[small].sum().view(1)])
    exp = exp * obs.sum() / exp.sum()
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue)


def residual_skipping_verifier(draft_tokens, draft_probs, target_probs, generators, greedy) -> Verdict:
    """A broken verifier: after a rejection it samples from p instead of max(0, p - q)."""
    batch, k = draft_tokens.shape
    p_draft = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_draft = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    num_accepted = leading_true(uniform_rows(batch, k, generators) * q_draft <= p_draft)
    next_token = sample_rows(target_probs[torch.arange(batch), num_accepted], generators)
    return Verdict(num_accepted, next_token)


def bad_drafter():
    return Drafter(tiny_llama(VOCAB, seed=12, layers=1, hidden=32, init_std=0.5))


CASES = {
    "t1.0-bad-drafter": (SamplingParams(temperature=1.0), "bad"),
    "t1.0-good-drafter": (SamplingParams(temperature=1.0), "good"),
    "t0.6-bad-drafter": (SamplingParams(temperature=0.6), "bad"),
    "t0.6-good-drafter": (SamplingParams(temperature=0.6), "good"),
    "top-p-0.8": (SamplingParams(temperature=1.0, top_p=0.8), "bad"),
    "top-k-3-t0.8": (SamplingParams(temperature=0.8, top_k=3), "bad"),
    "reduced-vocab-drafter": (SamplingParams(temperature=1.0), "reduced"),
}


def make_drafter(kind: str, target) -> Drafter:
    if kind == "bad":
        return bad_drafter()
    if kind == "good":
        return self_draft(target, 3)
    return self_draft(target, 2, draft_vocab=[0, 2, 3])


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_sd_matches_target_distribution(target, case):
    base, kind = CASES[case]
    params = SamplingParams(temperature=base.temperature, top_k=base.top_k, top_p=base.top_p, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(target, make_drafter(kind, target), FixedK(3))
    counts = sampled_counts(engine, params)
    assert engine.k_policy.k == 3
    pvalue = chi_square_pvalue(counts, exact_joint(target, params))
    assert pvalue > ALPHA, f"{case}: SD samples differ from the target's law (p={pvalue:.2e})"


def test_plain_sampling_matches_target_distribution(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    counts = sampled_counts(SpeculativeEngine(target), params)
    assert chi_square_pvalue(counts, exact_joint(target, params)) > ALPHA


def test_chi_square_rejects_a_verifier_that_skips_the_residual(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(target, bad_drafter(), FixedK(3), verifier=residual_skipping_verifier)
    pvalue = chi_square_pvalue(sampled_counts(engine, params), exact_joint(target, params))
    assert pvalue < ALPHA, f"the test has no power against a broken verifier (p={pvalue:.2e})"


def test_sampled_drafts_are_really_checked(target):
    """Good drafters are accepted often, bad ones rarely: speculation is not a no-op in these tests."""
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    good = SpeculativeEngine(target, make_drafter("good", target), FixedK(3)).generate([PROMPT] * 500, params)
    bad = SpeculativeEngine(target, bad_drafter(), FixedK(3)).generate([PROMPT] * 500, params)
    assert good.stats.acceptance_rate > 0.5 > bad.stats.acceptance_rate > 0.0


def test_same_seed_same_output(target):
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    engine = SpeculativeEngine(target, bad_drafter(), FixedK(2))
    first = engine.generate([PROMPT] * 4, params, seeds=[5, 6, 7, 8]).token_ids
    assert engine.generate([PROMPT] * 4, params, seeds=[5, 6, 7, 8]).token_ids == first
    assert engine.generate([PROMPT] * 4, params, seeds=[9, 6, 7, 8]).token_ids[1:] == first[1:]


def test_rejection_sample_is_exact_on_fixed_distributions():
    """Tensor-level check of one position: output law = p for any q with the drafted token from q."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 40_000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    drafts = sample_rows(q.expand(n, -1), gens)[:, None]
    target_probs = torch.stack([p, torch.tensor([0.25] * 4)]).expand(n, -1, -1)
    verdict = rejection_sample(drafts, q.expand(n, 1, -1), target_probs, gens, greedy=False)
    first = torch.where(verdict.num_accepted > 0, drafts[:, 0], verdict.next_token)
    assert chisquare(torch.bincount(first, minlength=4).numpy(), (p * n).numpy()).pvalue > ALPHA
    expected_acceptance = torch.minimum(p, q).sum()  # beta = 1 - TV(p, q)
    assert abs(verdict.num_accepted.float().mean() - expected_acceptance) < 0.01
