"""Self-drafts, reduced vocabularies and the vocabulary check."""

from __future__ import annotations

import pytest
import torch

from respec_verl.drafter import Drafter, frequent_tokens, self_draft
from respec_verl.speculation import SpeculativeEngine
from tests.conftest import tiny_llama


def test_self_draft_copies_the_first_layers():
    target = tiny_llama(seed=31, layers=4)
    drafter = self_draft(target, 2)
    assert drafter.model.config.num_hidden_layers == 2 and target.config.num_hidden_layers == 4
    draft_sd, target_sd = drafter.model.state_dict(), target.state_dict()
    assert set(draft_sd) < set(target_sd)
    for name, tensor in draft_sd.items():
        assert torch.equal(tensor, target_sd[name]), name
        assert tensor.data_ptr() != target_sd[name].data_ptr(), f"{name} shares storage with the target"


def test_full_self_draft_predicts_like_the_target():
    target = tiny_llama(seed=32, layers=3)
    drafter = self_draft(target, 3)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(drafter.model(input_ids=ids).logits, target(input_ids=ids).logits)


def test_reduced_vocab_maps_back_to_target_ids():
    target = tiny_llama(seed=33)
    vocab = [3, 17, 42, 90]
    drafter = self_draft(target, 2, draft_vocab=vocab)
    assert drafter.draft_vocab_size == 4
    assert drafter.to_target_ids(torch.tensor([0, 3])).tolist() == [3, 90]
    head = drafter.model.get_output_embeddings().weight
    torch.testing.assert_close(head, target.get_output_embeddings().weight[vocab])
    q = drafter.to_target_probs(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 97)
    assert q.shape == (1, 97) and q[0, 42] == 0.3 and q.sum() == pytest.approx(1.0)
    assert q[0, [i for i in range(97) if i not in vocab]].abs().sum() == 0


def test_vocabulary_mismatch_is_a_clear_error():
    target = tiny_llama(97, seed=34)
    with pytest.raises(ValueError, match="vocabulary"):
        SpeculativeEngine(target, Drafter(tiny_llama(128, seed=35)))
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        SpeculativeEngine(target, Drafter(tiny_llama(4, seed=36), draft_to_target=torch.tensor([0, 1, 2, 200])))


def test_self_draft_rejects_bad_layer_counts():
    target = tiny_llama(seed=37, layers=4)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="num_layers"):
            self_draft(target, bad)


def test_frequent_tokens_ranks_by_count_and_keeps_always():
    outputs = [[5, 5, 5, 7, 7, 9], [5, 7, 11]]
    assert frequent_tokens(outputs, 2).tolist() == [5, 7]
    assert frequent_tokens(outputs, 3, always=[0]).tolist() == [0, 5, 7]
