"""The arithmetic task's forms: the questions they ask and the answers they accept."""

from __future__ import annotations

import pytest

from respec_verl.data.arithmetic import FORMS, AdditionProblem, make_problems, score, score_sentence


def test_the_number_form_is_the_default_and_scores_the_last_integer():
    problem = make_problems(1, seed=0)[0]
    assert problem.form == "number"
    assert problem.question == f"What is {problem.a} + {problem.b}? Reply with just the number."
    assert score(problem, f"{problem.a} + {problem.b} = {problem.answer}") == 1.0
    assert score(problem, f"The sum of {problem.a} and {problem.b} is {problem.answer + 1}.") == 0.0


def test_every_form_draws_the_same_sums_from_a_seed():
    sums = {form: [(p.a, p.b) for p in make_problems(20, seed=7, form=form)] for form in FORMS}
    assert len({tuple(s) for s in sums.values()}) == 1


def test_the_sentence_form_accepts_only_the_whole_required_reply():
    problem = AdditionProblem(3, 8, form="sentence")
    assert "The sum of 3 and 8 is <number>." in problem.question
    assert score(problem, "The sum of 3 and 8 is 11.") == 1.0
    assert score(problem, " The sum of 3 and 8 is 11\n") == 1.0  # the final period is optional
    assert score(problem, "The sum of 3 and 8 is 12.") == 0.0
    assert score(problem, "The sum of 8 and 3 is 11.") == 0.0  # the operands as asked
    assert score(problem, "Sure! The sum of 3 and 8 is 11.") == 0.0
    assert score(problem, "The sum of 3 and 8 is 11. That is because 3 + 8 = 11.") == 0.0
    assert score(problem, "The sum of 3 and 8 is 110.") == 0.0
    assert score_sentence(3, 8, "11") == 0.0  # a right number alone is not the form


@pytest.mark.parametrize("make", [lambda: make_problems(2, seed=0, form="json"), lambda: AdditionProblem(1, 2, "json")])
def test_an_unknown_form_names_the_allowed_ones(make):
    with pytest.raises(ValueError, match="form = 'json' is not valid; allowed: number, sentence"):
        make()
