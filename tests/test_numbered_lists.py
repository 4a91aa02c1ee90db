"""The long-answer task: its generator and its reward on written answers."""

import pytest

from respec_verl.data.numbered_lists import (
    MAX_ITEMS,
    MIN_ITEMS,
    TOPICS,
    ListProblem,
    item_numbers,
    make_list_problems,
    score_list,
    solved,
)
from respec_verl.data.tasks import TASKS, get_task, task_for_source


def numbered(numbers, sentence="A short sentence about it."):
    return "\n".join(f"{i}. {sentence}" for i in numbers)


def test_generator_is_deterministic_for_a_seed():
    assert make_list_problems(50, seed=3) == make_list_problems(50, seed=3)
    assert make_list_problems(50, seed=3) != make_list_problems(50, seed=4)


def test_generator_draws_the_configured_range_and_topics():
    problems = make_list_problems(400, seed=0)
    assert {p.n for p in problems} == set(range(MIN_ITEMS, MAX_ITEMS + 1))
    assert {p.topic for p in problems} == set(TOPICS)
    assert ListProblem(7, "birds").question == "Write a numbered list of 7 birds, with one short sentence about each."


def test_bad_item_range_names_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: 1 <= min_items <= max_items"):
        make_list_problems(3, seed=0, min_items=9, max_items=4)


def test_right_answer_scores_one():
    text = "Here are 5 birds:\n\n" + numbered(range(1, 6)) + "\n\nI hope this helps!"
    assert score_list(5, text) == 1.0 and solved(5, text)


@pytest.mark.parametrize(
    "text, expected",
    [
        (numbered(range(1, 4)), 3 / 5),  # stops early: 3 of 5 in place
        (numbered(range(1, 9)), 5 / 8),  # runs on: 5 in place, 8 written
        (numbered([1, 2, 2, 3, 4]), 2 / 5),  # loses count
        (numbered(range(1, 6)) + "\n" + numbered(range(1, 3)), 5 / 7),  # a second list after the first
    ],
)
def test_wrong_answers_earn_partial_credit(text, expected):
    assert score_list(5, text) == pytest.approx(expected)
    assert not solved(5, text)


@pytest.mark.parametrize("text", ["", "   \n", "Birds are lovely animals.", "1.\n2.\n3.", "- robin\n- crow"])
def test_empty_and_malformed_answers_score_zero(text):
    assert score_list(3, text) == 0.0 and not solved(3, text)


def test_item_formats_that_count():
    text = "1. plain\n2) paren\n**3.** bold\n  4. indented\n5.no space\nnot 6. an item\n7 no dot"
    assert item_numbers(text) == [1, 2, 3, 4, 5]


def test_task_registry_scores_through_the_data_source():
    task = get_task("long")
    assert task_for_source(task.data_source) is task
    question, truth, info = task.questions(1, seed=0)[0]
    assert truth == str(info["n"]) and question == ListProblem(info["n"], info["topic"]).question
    assert task.score(truth, numbered(range(1, info["n"] + 1))) == 1.0
    assert task.solved(truth, numbered(range(1, info["n"] + 1)))
    assert TASKS["long"].response_length > TASKS["add"].response_length


def test_unknown_task_and_source_name_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: long, add"):
        get_task("gsm8k")
    with pytest.raises(ValueError, match="allowed: respec_numbered_lists, respec_arithmetic"):
        task_for_source("openai/gsm8k")
