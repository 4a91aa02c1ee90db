"""Hot-swapping drafter weights into a live engine: it takes effect, stays lossless, and is all or nothing."""

from __future__ import annotations

import threading

import pytest
import torch

from respec_verl.drafter import Drafter, self_draft
from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine
from respec_verl.speculation.drafting import DrafterSwapError
from tests.conftest import tiny_llama

PROMPTS = [[1, 2, 3, 4], [7, 8], [9, 10, 11, 12, 13], [3]]
IDS = torch.tensor([[5, 6, 7, 8, 9]])


def other_weights(seed: int = 71) -> Drafter:
    """A drafter with the self-draft's layout (1 layer, untied head) but different weights."""
    return Drafter(tiny_llama(seed=seed, layers=1), version=3)


def drafter_logits(drafter: Drafter) -> torch.Tensor:
    with torch.no_grad():
        return drafter.model(input_ids=IDS).logits


def weights_of(drafter: Drafter) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in drafter.model.state_dict().items()}


def test_swap_changes_drafter_outputs_and_reported_version():
    target = tiny_llama(seed=70)
    engine = SpeculativeEngine(target, self_draft(target, 1), FixedK(3))
    model_before, before = engine.drafter.model, drafter_logits(engine.drafter)
    new = other_weights()
    engine.swap_drafter(new)
    assert engine.drafter_version == 3
    assert engine.drafter.model is model_before  # loaded in place, not a new object
    assert not torch.allclose(drafter_logits(engine.drafter), before)
    torch.testing.assert_close(drafter_logits(engine.drafter), drafter_logits(new))
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert out.drafter_version == 3


def test_swap_from_state_dict_needs_a_version():
    target = tiny_llama(seed=70)
    engine = SpeculativeEngine(target, self_draft(target, 1), FixedK(3))
    with pytest.raises(DrafterSwapError, match="version"):
        engine.swap_drafter(other_weights().model.state_dict())
    engine.swap_drafter(other_weights().model.state_dict(), version=5)
    assert engine.drafter_version == 5


def test_greedy_output_equals_plain_greedy_after_a_swap():
    target = tiny_llama(seed=72)
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    reference = SpeculativeEngine(target).generate(PROMPTS, params).token_ids
    engine = SpeculativeEngine(target, self_draft(target, 2), FixedK(4))
    engine.swap_drafter(Drafter(tiny_llama(seed=73, layers=2), version=1))
    out = engine.generate(PROMPTS, params)
    assert out.token_ids == reference
    assert out.stats.spec_steps > 0


def _bad_shape(sd):
    sd["model.norm.weight"] = torch.ones(sd["model.norm.weight"].numel() + 1)


def _nan(sd):
    sd["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")


def _inf(sd):
    sd["lm_head.weight"][3, 1] = float("inf")


def _missing(sd):
    del sd["model.layers.0.self_attn.q_proj.weight"]


def _unexpected(sd):
    sd["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(64, 64)


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (_bad_shape, "shape"),
        (_nan, "NaN"),
        (_inf, "NaN or infinite"),
        (_missing, "missing"),
        (_unexpected, "unexpected"),
    ],
)
def test_failed_swap_leaves_old_weights_and_version(corrupt, message):
    target = tiny_llama(seed=74)
    engine = SpeculativeEngine(target, self_draft(target, 1), FixedK(3))
    engine.drafter.version = 2
    before, logits = weights_of(engine.drafter), drafter_logits(engine.drafter)
    state = weights_of(other_weights())
    corrupt(state)
    with pytest.raises(DrafterSwapError, match=message):
        engine.swap_drafter(state, version=3)
    assert engine.drafter_version == 2
    after = engine.drafter.model.state_dict()
    assert all(torch.equal(after[name], t) for name, t in before.items())
    torch.testing.assert_close(drafter_logits(engine.drafter), logits, rtol=0, atol=0)


def test_swap_rejects_a_different_draft_vocabulary():
    target = tiny_llama(seed=75)
    engine = SpeculativeEngine(target, self_draft(target, 1, draft_vocab=[1, 2, 3, 4]), FixedK(2))
    other = self_draft(target, 1, draft_vocab=[1, 2, 3, 5])
    with pytest.raises(DrafterSwapError, match="draft vocabulary"):
        engine.swap_drafter(other)
    assert engine.drafter.draft_to_target.tolist() == [1, 2, 3, 4] and engine.drafter_version == 0


class _Gate:
    """A k policy that holds the engine inside generate() until released (to test the swap lock)."""

    def __init__(self):
        self.inside, self.release = threading.Event(), threading.Event()

    def choose_k(self, batch_size: int) -> int:
        self.inside.set()
        assert self.release.wait(10), "test gate never released"
        return 2

    def observe(self, record) -> None:
        pass


def test_swap_waits_for_a_running_generate():
    target = tiny_llama(seed=76)
    gate = _Gate()
    engine = SpeculativeEngine(target, self_draft(target, 1), gate)
    before = weights_of(engine.drafter)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    generating = threading.Thread(target=engine.generate, args=(PROMPTS, params))
    generating.start()
    assert gate.inside.wait(10)
    swapping = threading.Thread(target=engine.swap_drafter, args=(other_weights(),))
    swapping.start()
    swapping.join(0.2)
    assert swapping.is_alive()  # blocked behind the running generate
    assert engine.drafter_version == 0
    assert all(torch.equal(engine.drafter.model.state_dict()[n], t) for n, t in before.items())
    gate.release.set()
    generating.join(10)
    swapping.join(10)
    assert engine.drafter_version == 3
