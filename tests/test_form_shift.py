"""`bench.form_shift`: the reply it teaches, its fine-tuning and its arguments (the runs are the benchmark)."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import form_shift
from respec_verl.data.arithmetic import AdditionProblem, sentence_reply

from .conftest import tiny_llama


def test_the_taught_reply_is_the_template_s_assistant_turn_ending_on_a_stop_token(smollm2):
    from respec_verl.drafter.warm_folder import stop_token_ids
    from respec_verl.models.smollm2 import encode_chat

    model, tokenizer = smollm2
    problem = AdditionProblem(4, 9, form="sentence")
    prompt = encode_chat(tokenizer, problem.question)
    stops = stop_token_ids(tokenizer, model)
    reply = form_shift.reply_ids(tokenizer, prompt, problem.question, sentence_reply(problem.a, problem.b), stops)
    assert reply[-1] in stops and not any(t in stops for t in reply[:-1])
    assert tokenizer.decode(reply, skip_special_tokens=True) == "The sum of 4 and 9 is 13."
    assert tokenizer.decode(reply[-1:]) == "<|im_end|>"  # what the chat model ends a turn with


def _reply_logprob(model, prompt: list[int], reply: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(reply)[:, None]).sum())


def test_fine_tuning_raises_the_reply_and_leaves_the_prompt_untaught():
    model = tiny_llama(seed=3)
    prompt, reply = [5, 6, 7, 8], [20, 21, 22]
    before = _reply_logprob(model, prompt, reply)
    prompt_before = _reply_logprob(model, prompt[:1], prompt[1:])
    _, losses = form_shift.fine_tune(model, [(prompt, reply)], steps=15, lr=1e-2, batch_size=2)
    assert losses[-1] < 0.5 * losses[0]
    assert _reply_logprob(model, prompt, reply) > before + 3.0
    # the prompt's tokens carry no loss, so the model is not taught to produce them
    assert _reply_logprob(model, prompt[:1], prompt[1:]) < prompt_before + 1.0
    assert not model.training


def test_sft_steps_parse_sorted_and_reject_bad_values():
    assert form_shift.parse_steps("30,0,10,10") == [0, 10, 30]
    for bad in ("x", "-1,5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--sft-steps"):
            form_shift.parse_steps(bad)


def test_position_acceptance_is_one_for_the_actor_itself_and_the_overlap_of_p_and_q_otherwise():
    from respec_verl.drafter import Drafter

    actor, other = tiny_llama(seed=1), tiny_llama(seed=2, layers=1)
    examples = [([3, 4, 5], [9, 10, 11]), ([6, 7], [12, 13, 14])]
    assert form_shift.position_acceptance(actor, Drafter(actor), examples, 0.6) == pytest.approx([1.0] * 3)
    got = form_shift.position_acceptance(actor, Drafter(other), examples, 0.6)
    with torch.no_grad():  # the first example's first reply position by hand: sum_v min(p, q)
        p = torch.softmax(actor(torch.tensor([[3, 4, 5]])).logits[0, -1] / 0.6, -1)
        q = torch.softmax(other(torch.tensor([[3, 4, 5]])).logits[0, -1] / 0.6, -1)
        p2 = torch.softmax(actor(torch.tensor([[6, 7]])).logits[0, -1] / 0.6, -1)
        q2 = torch.softmax(other(torch.tensor([[6, 7]])).logits[0, -1] / 0.6, -1)
    expected = (float(torch.minimum(p, q).sum()) + float(torch.minimum(p2, q2).sum())) / 2
    assert got[0] == pytest.approx(expected, rel=1e-5) and all(a < 0.99 for a in got)
