"""A verifiable task generated locally: small additions, scored by the first integer in the answer.

GRPO needs prompts the base model solves sometimes but not always, so that groups carry a signal;
`max_operand` sets the difficulty (measure the base success rate before choosing it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

QUESTION = "What is {a} + {b}? Reply with just the number."
_FIRST_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class AdditionProblem:
    a: int
    b: int

    @property
    def question(self) -> str:
        return QUESTION.format(a=self.a, b=self.b)

    @property
    def answer(self) -> int:
        return self.a + self.b


def make_problems(n: int, seed: int, max_operand: int = 9) -> list[AdditionProblem]:
    rng = random.Random(seed)
    return [AdditionProblem(rng.randint(1, max_operand), rng.randint(1, max_operand)) for _ in range(n)]


def score(problem: AdditionProblem, response_text: str) -> float:
    """1.0 when the first integer in the response is the sum, else 0.0."""
    return score_answer(problem.answer, response_text)


def score_answer(answer: int, response_text: str) -> float:
    """1.0 when the first integer in the response is `answer`, else 0.0."""
    found = _FIRST_INT.search(response_text)
    return float(found is not None and int(found.group()) == answer)
