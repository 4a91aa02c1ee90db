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


SHORT = "What is {a} + {b}? Answer with the number only."
LONG = ["Write a short story about {s}.", "Explain in detail how {s} changes over a year.", "Write a poem about {s}."]


def make_long_tail_questions(n: int, seed: int, long_fraction: float = 0.25) -> list[str]:
    """A batch whose answers end at very different lengths, like an RL rollout's long tail.

    Most questions are answered in a few tokens; `long_fraction` of them ask for long texts that run
    to the length cap, so the live batch shrinks from n to a handful of stragglers.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        template = rng.choice(LONG) if rng.random() < long_fraction else rng.choice([SHORT] + TEMPLATES)
        out.append(template.format(a=rng.randint(2, 99), b=rng.randint(2, 99), s=rng.choice(SUBJECTS)))
    return out
