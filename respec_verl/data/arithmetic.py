"""A verifiable task generated locally: small additions, scored by the last integer in the answer.

GRPO needs prompts the base model solves sometimes but not always, so that groups carry a signal;
`max_operand` sets the difficulty (measure the base success rate before choosing it).

The answer is the response's last integer, as in verl's gsm8k reward (flexible mode): asked for
"just the number", SmolLM2-135M-Instruct mostly replies "7 + 5 = 12", so the first integer would be
an operand and almost no answer would count. At the demo's rollout temperature the base model
gets about half of the sums right, so most GRPO groups hold both right and wrong answers (the
measured base success rates: docs/notebook/verl-e2e-and-demo.md, section 5).

The `sentence` form asks for a fixed reply, "The sum of a and b is c.", and scores only that reply
(with the right sum, nothing before or after). The base model follows it now and then and otherwise
talks around the sum, so learning it changes the form of the answers, not just their correctness:
`bench/form_shift.py` uses it to bound how stale a drafter distilled before the change can get.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

QUESTIONS = {
    "number": "What is {a} + {b}? Reply with just the number.",
    "sentence": "What is {a} + {b}? Reply in the form: The sum of {a} and {b} is <number>.",
}
QUESTION = QUESTIONS["number"]
FORMS = tuple(QUESTIONS)
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class AdditionProblem:
    a: int
    b: int
    form: str = "number"  # one of FORMS: what the question asks the reply to look like

    def __post_init__(self):
        check_form(self.form)

    @property
    def question(self) -> str:
        return QUESTIONS[self.form].format(a=self.a, b=self.b)

    @property
    def answer(self) -> int:
        return self.a + self.b


def check_form(form: str) -> str:
    if form not in QUESTIONS:
        raise ValueError(f"task form = {form!r} is not valid; allowed: {', '.join(FORMS)}")
    return form


def make_problems(n: int, seed: int, max_operand: int = 9, form: str = "number") -> list[AdditionProblem]:
    """`n` problems drawn with `seed`; the same seed draws the same sums in every form."""
    check_form(form)
    rng = random.Random(seed)
    return [AdditionProblem(rng.randint(1, max_operand), rng.randint(1, max_operand), form) for _ in range(n)]


def score(problem: AdditionProblem, response_text: str) -> float:
    """The problem's form's score: 1.0 for a right answer, else 0.0."""
    if problem.form == "sentence":
        return score_sentence(problem.a, problem.b, response_text)
    return score_answer(problem.answer, response_text)


def sentence_reply(a: int, b: int) -> str:
    """The reply the `sentence` form asks for."""
    return f"The sum of {a} and {b} is {a + b}."


def score_sentence(a: int, b: int, response_text: str) -> float:
    """1.0 when the whole response is `sentence_reply(a, b)` (final period optional), else 0.0."""
    sentence = rf"\s*{re.escape(sentence_reply(a, b).removesuffix('.'))}\.?\s*"
    return float(re.fullmatch(sentence, response_text) is not None)


def score_answer(answer: int, response_text: str) -> float:
    """1.0 when the last integer in the response is `answer`, else 0.0."""
    found = _INT.findall(response_text)
    return float(bool(found) and int(found[-1]) == answer)
