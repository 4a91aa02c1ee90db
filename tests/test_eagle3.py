"""The EAGLE-3 drafter: exact speculation in the core engine, training-time test matching inference,
its vLLM folder round trip, and distillation raising acceptance."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter.distill import attach_teacher, distill, make_kd_batch
from respec_verl.drafter.eagle3 import Eagle3Config, Eagle3Drafter, eagle3_drafter
from respec_verl.drafter.eagle3_dir import load_eagle3_dir, save_eagle3_dir
from respec_verl.drafter.kd_loss import reward_weighted_kd_loss, teacher_targets, unrolled_kd_loss
from respec_verl.speculation import FeatureProposer, FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.drafting import TrainableDrafter
from tests.conftest import tiny_llama
from tests.test_engine_sampling import (
    ALPHA, LENGTH, PROMPT, VOCAB, chi_square_pvalue, exact_joint, residual_skipping_verifier,
)

RAGGED = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16], [3], [20, 21, 22]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20)


def test_it_is_a_trainable_drafter_whose_proposer_reads_the_target_layers():
    target = tiny_llama(seed=60, layers=6)
    drafter = eagle3_drafter(target)
    assert isinstance(drafter, TrainableDrafter)
    assert drafter.target_layers == (2, 3, 3)  # vLLM's default: (2, L // 2, L - 3)
    assert isinstance(drafter.new_proposer(97), FeatureProposer)
    trained = {id(p) for p in drafter.trainable_parameters()}
    assert id(drafter.model.embed_tokens.weight) not in trained and id(drafter.model.fc.weight) in trained
    with pytest.raises(ValueError, match=r"target_layers = \[1, 6\] is not valid for this target; allowed: ids in \[0, 6\)"):
        eagle3_drafter(target, target_layers=(1, 6))
    with pytest.raises(ValueError, match="unroll = 0 is not valid; allowed: an integer >= 1"):
        eagle3_drafter(target, unroll=0)
    with pytest.raises(ValueError, match="target_layers"):
        Eagle3Config(target_layers=())


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_sd_with_eagle3_equals_plain(k):
    target = tiny_llama(seed=61)
    reference = SpeculativeEngine(target).generate(RAGGED, GREEDY).token_ids
    seen = sorted({t for row in reference for t in row})
    for drafter in (eagle3_drafter(target), eagle3_drafter(target, target_layers=(0, 1, 3), draft_vocab=seen[::2])):
        out = SpeculativeEngine(target, drafter, FixedK(k)).generate(RAGGED, GREEDY)
        assert out.token_ids == reference
        assert out.stats.spec_steps > 0


N_SAMPLED = 3_000  # the power check below rejects a residual-skipping verifier at p ~ 1e-30 with this N


@pytest.fixture(scope="module")
def small_target():
    return tiny_llama(VOCAB, seed=11, hidden=32, init_std=0.08)


def sampled_counts(engine: SpeculativeEngine, params: SamplingParams) -> torch.Tensor:
    out = engine.generate([PROMPT] * N_SAMPLED, params, seeds=list(range(N_SAMPLED)))
    codes = torch.tensor(out.token_ids) @ (VOCAB ** torch.arange(LENGTH - 1, -1, -1))
    return torch.bincount(codes, minlength=VOCAB**LENGTH)


def test_sampled_sd_with_eagle3_matches_the_target_distribution(small_target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    engine = SpeculativeEngine(small_target, eagle3_drafter(small_target, draft_vocab=[0, 2, 3, 5]), FixedK(3))
    pvalue = chi_square_pvalue(sampled_counts(engine, params), exact_joint(small_target, params))
    assert pvalue > ALPHA, f"EAGLE-3 SD samples differ from the target's law (p={pvalue:.2e})"


def test_chi_square_rejects_eagle3_sd_with_a_verifier_that_skips_the_residual(small_target):
    params = SamplingParams(temperature=1.0, max_new_tokens=LENGTH)
    drafter = eagle3_drafter(small_target, draft_vocab=[0, 2, 3, 5])
    engine = SpeculativeEngine(small_target, drafter, FixedK(3), verifier=residual_skipping_verifier)
    pvalue = chi_square_pvalue(sampled_counts(engine, params), exact_joint(small_target, params))
    assert pvalue < ALPHA, f"the test has no power against a broken verifier (p={pvalue:.2e})"


def test_training_time_test_computes_what_the_proposer_drafts():
    """Step j of `draft_logits` at a position is the proposer's (j+1)-th draft distribution there."""
    target = tiny_llama(seed=62)
    drafter = eagle3_drafter(target, draft_vocab=list(range(0, 97, 3)), unroll=4)
    prompt = torch.tensor([[5, 9, 14, 2, 33, 7]])
    with torch.no_grad():
        out = target(input_ids=prompt, output_hidden_states=True)
    first = out.logits[:, -1].argmax(-1)
    features = torch.cat([out.hidden_states[i] for i in drafter.target_layers], dim=-1)
    proposer = drafter.new_proposer(97)
    proposer.start(prompt, torch.ones_like(prompt, dtype=torch.bool), first, features=features)
    drafts, q = proposer.propose(4, SamplingParams(temperature=1.0), [torch.Generator().manual_seed(0)])

    sequence = torch.cat([prompt, first[:, None], drafts], dim=1)
    batch = make_kd_batch(sequence.tolist(), [[0]])
    attach_teacher(batch, target, drafter, 1.0, 0)
    with torch.no_grad():
        steps = drafter.draft_logits(batch.input_ids, batch.attention_mask, batch.features)
    m = prompt.shape[1]  # the first token's position
    for j in range(4):
        expected = drafter.to_target_probs(steps[j, 0, m + j].softmax(-1), 97)
        torch.testing.assert_close(q[0, j], expected, atol=1e-5, rtol=1e-4)


def test_unrolled_loss_of_one_step_is_the_kd_loss_and_masks_unreachable_positions():
    logits, teacher_logits = torch.randn(2, 2, 5, 7), torch.randn(2, 5, 7)
    teacher, mask = teacher_targets(teacher_logits), torch.ones(2, 5, dtype=torch.bool)
    assert unrolled_kd_loss(logits[0], teacher, mask) == reward_weighted_kd_loss(logits[0], teacher, mask)
    moved = logits.clone()
    moved[1, :, :2] = 100.0  # step 1's entries at t <= 1 do not exist: they must not count
    torch.testing.assert_close(unrolled_kd_loss(moved, teacher, mask), unrolled_kd_loss(logits, teacher, mask))


def test_vllm_folder_round_trip_gives_the_same_drafts(tmp_path):
    target = tiny_llama(seed=63)
    drafter = eagle3_drafter(target, target_layers=(1, 2, 3), draft_vocab=list(range(0, 97, 2)), seed=5)
    save_eagle3_dir(drafter, tmp_path / "head")
    loaded = load_eagle3_dir(tmp_path / "head", target, unroll=drafter.unroll)
    assert loaded.target_layers == (1, 2, 3) and torch.equal(loaded.draft_to_target, drafter.draft_to_target)
    for name, tensor in drafter.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    a = SpeculativeEngine(target, drafter, FixedK(4)).generate(RAGGED, SamplingParams(temperature=1.0, max_new_tokens=12),
                                                                seeds=list(range(len(RAGGED))))
    b = SpeculativeEngine(target, loaded, FixedK(4)).generate(RAGGED, SamplingParams(temperature=1.0, max_new_tokens=12),
                                                               seeds=list(range(len(RAGGED))))
    assert a.token_ids == b.token_ids and a.stats.accepted_per_pos == b.stats.accepted_per_pos


def test_distilling_eagle3_raises_tokens_per_step():
    target = tiny_llama(seed=41, layers=4, init_std=0.1)
    prompts = torch.randint(0, 97, (288, 3), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    responses = SpeculativeEngine(target).generate(prompts, params).token_ids
    drafter = eagle3_drafter(target, target_layers=(1, 2, 3), unroll=3)
    held_out = prompts[256:]  # measured on prompts the head was not trained on

    def tokens_per_step() -> float:
        return SpeculativeEngine(target, drafter, FixedK(3)).generate(held_out, params).stats.mean_accept_length

    before = tokens_per_step()
    losses = distill(drafter, target, prompts[:256], responses[:256], steps=60, batch_size=32, lr=1e-2, progress=False)
    after = tokens_per_step()
    assert losses[-1] < losses[0] / 4 and drafter.version == 1
    assert after > before + 0.3, (before, after)


def test_engines_without_a_feature_proposer_never_ask_for_hidden_states(monkeypatch):
    from respec_verl.drafter import self_draft

    target = tiny_llama(seed=64)
    calls = []
    original = type(target).forward

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("output_hidden_states"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(target), "forward", spy)
    SpeculativeEngine(target, self_draft(target, 1), FixedK(2)).generate(RAGGED, GREEDY)
    assert calls and set(calls) == {None}
    calls.clear()
    SpeculativeEngine(target, eagle3_drafter(target), FixedK(2)).generate(RAGGED, GREEDY)
    assert set(calls) == {True}


def test_the_learner_trains_eagle3_online_on_the_actors_features():
    from respec_verl.drafter import DrafterLearner, LearnerConfig

    target = tiny_llama(seed=41, layers=4, init_std=0.1)
    prompts = torch.randint(0, 97, (32, 3), generator=torch.Generator().manual_seed(1)).tolist()
    responses = SpeculativeEngine(target).generate(prompts, GREEDY).token_ids
    drafter = eagle3_drafter(target, target_layers=(1, 2, 3), unroll=2)
    config = LearnerConfig(steps_per_update=20, batch_size=16, lr=1e-2, top_k=0, async_update=False, weighting="uniform")
    learner = DrafterLearner(drafter, config, target=target)
    batch = make_kd_batch(prompts, responses)
    attach_teacher(batch, target, drafter, 1.0, 0)

    def loss(d) -> float:
        with torch.no_grad():
            return float(unrolled_kd_loss(d.draft_logits(batch.input_ids, batch.attention_mask, batch.features),
                                          batch.teacher, batch.response_mask))

    learner.add_rollouts(prompts, responses)
    assert learner.update(step=1)["respec/drafter/update_ok"] == 1.0
    published = learner.latest()
    assert type(published) is Eagle3Drafter and published.version == 1 and published.unroll == 2
    assert loss(published) < 0.5 * loss(drafter)
    assert learner.frozen_names == {"embed_tokens.weight"}
    assert "embed_tokens.weight" not in dict(published.serving_tensors())
    with pytest.raises(ValueError, match="teacher_features"):
        learner.add_rollouts(prompts, responses, teacher_logits=[torch.zeros(20, 97)] * 32)


def test_the_learner_takes_the_actors_logits_and_features_from_elsewhere():
    """The verl worker's path: labels and hidden states computed by the actor's own pass."""
    from respec_verl.drafter import DrafterLearner, LearnerConfig

    target = tiny_llama(seed=41, layers=4, init_std=0.1)
    prompts = torch.randint(0, 97, (8, 3), generator=torch.Generator().manual_seed(3)).tolist()
    responses = SpeculativeEngine(target).generate(prompts, GREEDY).token_ids
    config = LearnerConfig(steps_per_update=3, batch_size=8, lr=1e-2, top_k=0, async_update=False, weighting="uniform")
    drafter = eagle3_drafter(target, target_layers=(1, 2, 3), unroll=2)
    learners = [DrafterLearner(drafter, config, target=target), DrafterLearner(drafter, config)]
    learners[0].add_rollouts(prompts, responses)
    logits, features = [], []
    for prompt, response in zip(prompts, responses):
        with torch.no_grad():
            out = target(input_ids=torch.tensor([prompt + response]), output_hidden_states=True)
        logits.append(out.logits[0, len(prompt) - 1 :])
        features.append(torch.cat([out.hidden_states[i] for i in (1, 2, 3)], dim=-1)[0])
    learners[1].add_rollouts(prompts, responses, teacher_logits=logits, teacher_features=features)
    for learner in learners:
        assert learner.update(step=1)["respec/drafter/update_ok"] == 1.0
    a, b = (learner.latest().model.state_dict() for learner in learners)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)


def test_a_probe_leaves_the_proposer_as_it_was():
    target = tiny_llama(seed=66)
    drafter = eagle3_drafter(target)
    prompt = torch.tensor([[5, 9, 14, 2], [0, 3, 8, 1]])
    valid = torch.tensor([[True] * 4, [False, True, True, True]])
    with torch.no_grad():
        out = target(input_ids=prompt, output_hidden_states=True)
    features = torch.cat([out.hidden_states[i] for i in drafter.target_layers], dim=-1)
    first = out.logits[:, -1].argmax(-1)
    drafts = []
    for probe in (False, True):
        proposer = drafter.new_proposer(97)
        proposer.start(prompt, valid, first, features=features)
        if probe:
            proposer.probe(3, first)
        drafts.append(proposer.propose(3, GREEDY, [None, None])[0])
    assert torch.equal(drafts[0], drafts[1])


def test_warm_up_gives_a_distilled_head_over_the_answers_vocabulary():
    from respec_verl.drafter.warmup import warm_up_eagle3

    target = tiny_llama(seed=67)
    prompts = torch.randint(0, 97, (16, 3), generator=torch.Generator().manual_seed(2)).tolist()
    answers = SpeculativeEngine(target).generate(prompts, GREEDY).token_ids
    drafter, losses = warm_up_eagle3(target, prompts, answers, Eagle3Config((0, 2, 3), unroll=2), draft_vocab_size=40,
                                     always_tokens=(96,), steps=15, lr=1e-2, progress=False)
    assert drafter.draft_vocab_size == 40 and 96 in drafter.draft_to_target.tolist()
    assert drafter.target_layers == (0, 2, 3) and drafter.unroll == 2 and drafter.version == 1
    assert losses[-1] < losses[0] / 2
