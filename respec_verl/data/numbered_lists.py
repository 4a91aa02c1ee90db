"""The long-answer task: "Write a numbered list of n <topic>, with one short sentence about each."

RL rollouts that look like reasoning are long, of varied length, and have a long tail: a few
answers run on while the rest have finished. This task gives that shape to a 135M model: each item
is a numbered line with a sentence, so an answer of n items runs to about 10-20 tokens per item,
and an answer that loses count runs on until the length cap. The reward is read from the text: the
share of the numbered items that are in place (item i numbered i, for i = 1..n), over the larger of
n and the number of items written, so that a list that stops early or runs on earns partial credit
and only the exact list 1..n earns 1.0. The content of the sentences is not scored.

Why this task and not the others tried (counting a range, times tables, running sums, copying a
list; with and without examples in the prompt): SmolLM2-135M-Instruct follows their format but
cannot do their arithmetic or keep its place, and rarely got one exactly right. It writes
numbered lists readily, and keeping count to n is the skill that sometimes fails, so the base
model succeeds on some answers and not others, and GRPO's groups carry a signal.

`bench/task_stats.py` measures the task on an actor (success rate, mixed groups, answer lengths,
the longest answer of a step against its median); the base model's figures are in
docs/results.md and docs/notebook/long-task.md.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TOPICS = (
    "animals", "fruits", "cities", "sports", "tools", "games", "trees", "musical instruments",
    "countries", "vegetables", "birds", "jobs", "flowers", "rivers", "foods", "hobbies",
)
QUESTION = "Write a numbered list of {n} {topic}, with one short sentence about each."
MIN_ITEMS, MAX_ITEMS = 5, 15
# a numbered item: "3. ...", "3) ...", "**3.** ..." at the start of a line, with some text after it
_ITEM = re.compile(r"^\s*[*_]{0,2}(\d{1,4})[.)][*_]{0,2}\s*\S")


@dataclass(frozen=True)
class ListProblem:
    n: int  # items asked for
    topic: str

    @property
    def question(self) -> str:
        return QUESTION.format(n=self.n, topic=self.topic)


def make_list_problems(count: int, seed: int, min_items: int = MIN_ITEMS, max_items: int = MAX_ITEMS) -> list[ListProblem]:
    """`count` problems drawn with `seed`: n uniform in min_items..max_items, a topic from `TOPICS`."""
    if not 1 <= min_items <= max_items:
        raise ValueError(f"items = {min_items}..{max_items} is not valid; allowed: 1 <= min_items <= max_items")
    rng = random.Random(seed)
    return [ListProblem(rng.randint(min_items, max_items), rng.choice(TOPICS)) for _ in range(count)]


def item_numbers(response_text: str) -> list[int]:
    """The numbers of the response's numbered items, in the order written."""
    return [int(match.group(1)) for match in map(_ITEM.match, response_text.splitlines()) if match]


def score_list(n: int, response_text: str) -> float:
    """Share of items in place: #{i <= n: item i is numbered i} / max(n, items written); 0.0 for none."""
    numbers = item_numbers(response_text)
    if not numbers:
        return 0.0
    in_place = sum(1 for i, number in enumerate(numbers[:n], start=1) if number == i)
    return in_place / max(n, len(numbers))


def solved(n: int, response_text: str) -> bool:
    """Whether the response's numbered items are exactly 1..n."""
    return item_numbers(response_text) == list(range(1, n + 1))
