"""Short templated chat questions: a local, in-domain workload for drafting benchmarks and the demo."""

from __future__ import annotations

import random

SUBJECTS = ["the sea", "a cat", "the moon", "coffee", "a city", "winter", "music", "a river", "trees", "a robot"]
TEMPLATES = [
    "What is {a} + {b}? Answer with the number.",
    "What is {a} times {b}?",
    "Write one sentence about {s}.",
    "Give two facts about {s}.",
    "Describe {s} in a few words.",
    "Is {a} larger than {b}? Explain briefly.",
]


def make_questions(n: int, seed: int) -> list[str]:
    """n questions drawn from the templates; different seeds give disjoint-enough sets for held-out use."""
    rng = random.Random(seed)
    return [
        rng.choice(TEMPLATES).format(a=rng.randint(2, 99), b=rng.randint(2, 99), s=rng.choice(SUBJECTS))
        for _ in range(n)
    ]
