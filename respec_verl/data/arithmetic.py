"""A verifiable task generated locally: small additions, scored by the last integer in the answer.

GRPO needs prompts the base model solves sometimes but not always, so that groups carry a signal;
`max_operand` sets the difficulty (measure the base success rate before choosing it).

The answer is the response's last integer, as in verl's gsm8k reward (flexible mode): asked for
"just the number", SmolLM2-135M-Instruct mostly replies "7 + 5 = 12", so the first integer would be
an operand. Base success rate of SmolLM2-135M-Instruct (fp32, 64 problems with operands 1..9, 32
new tokens): greedy 0.89; sampled at temperature 0.6 (the demo's rollouts) 0.50, with 73% of groups
of 4 holding a right and a wrong answer; at temperature 1, 0.19-0.23. Scored by the first integer,
the same answers succeed 0.00 (greedy) and 0.04 (sampled at 1).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

QUESTION = "What is {a} + {b}? Reply with just the number."
_INT = re.compile(r"-?\d+")


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
    """1.0 when the last integer in the response is the sum, else 0.0."""
    return score_answer(problem.answer, response_text)


def score_answer(answer: int, response_text: str) -> float:
    """1.0 when the last integer in the response is `answer`, else 0.0."""
    found = _INT.findall(response_text)
    return float(bool(found) and int(found[-1]) == answer)
