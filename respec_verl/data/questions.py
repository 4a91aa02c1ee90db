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


def make_long_tail_questions(n: int, seed: int, long_fraction: float = 0.0625) -> list[str]:
    """A batch whose answers end at very different lengths, like an RL rollout's long tail.

    round(n * long_fraction) questions (at least one) ask for long texts that run to the length cap;
    the others are sums answered in a few tokens. The live batch drops from n to those few
    stragglers within a couple of dozen steps and stays there, as a GRPO batch does when most
    responses finish early and a few run to the maximum length.
    """
    rng = random.Random(seed)
    long = set(rng.sample(range(n), max(1, min(n, round(n * long_fraction)))))
    return [
        (rng.choice(LONG) if i in long else SHORT).format(a=rng.randint(2, 99), b=rng.randint(2, 99), s=rng.choice(SUBJECTS))
        for i in range(n)
    ]
