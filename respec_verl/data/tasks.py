"""The RL tasks, by the name that `--task` takes: `long` (numbered lists) and `add` (small sums).

A task turns a seed into verl dataset rows (chat prompt, ground truth) and a response into a reward,
and says how long its answers run (the response cap the jobs use). The demo, the benchmarks and
verl's reward function (`verl_task.compute_score`) all go through here, so one name selects the
prompts, the reward and the lengths together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from respec_verl.data import arithmetic, numbered_lists


Question = tuple[str, str, dict]  # (question, ground truth, extra info for verl's row)


@dataclass(frozen=True)
class Task:
    name: str
    data_source: str  # verl's `data_source` column; selects the reward in `verl_task.compute_score`
    ability: str
    response_length: int  # tokens: the answers' cap in the jobs
    describe: str  # one line for `--help` and logs
    questions: Callable[[int, int], list[Question]]  # (count, seed) -> questions drawn with that seed
    score: Callable[[str, str], float]  # (ground truth, response) -> reward in [0, 1]
    solved: Callable[[str, str], bool]  # (ground truth, response) -> entirely right (the success rate's count)


def _list_questions(count: int, seed: int) -> list[Question]:
    return [(p.question, str(p.n), {"n": p.n, "topic": p.topic}) for p in numbered_lists.make_list_problems(count, seed)]


def _add_questions(count: int, seed: int) -> list[Question]:
    return [(p.question, str(p.answer), {"a": p.a, "b": p.b}) for p in arithmetic.make_problems(count, seed)]


TASKS = {
    "long": Task(
        name="long", data_source="respec_numbered_lists", ability="instruction_following", response_length=384,
        describe="numbered lists of 5-15 items with a sentence each (answers of 20-384 tokens, a long tail)",
        questions=_list_questions,
        score=lambda truth, text: numbered_lists.score_list(int(truth), text),
        solved=lambda truth, text: numbered_lists.solved(int(truth), text),
    ),
    "add": Task(
        name="add", data_source="respec_arithmetic", ability="math", response_length=32,
        describe="'What is a + b? Reply with just the number.' (answers of a few tokens)",
        questions=_add_questions,
        score=lambda truth, text: arithmetic.score_answer(int(truth), text),
        solved=lambda truth, text: arithmetic.score_answer(int(truth), text) == 1.0,
    ),
}
DEFAULT_TASK = "long"


def get_task(name: str) -> Task:
    """The task called `name`; a ValueError names the allowed ones."""
    if name not in TASKS:
        raise ValueError(f"--task = {name!r} is not valid; allowed: {', '.join(TASKS)}")
    return TASKS[name]


def task_for_source(data_source: str) -> Task:
    """The task whose rows carry `data_source`."""
    for task in TASKS.values():
        if task.data_source == data_source:
            return task
    allowed = ", ".join(task.data_source for task in TASKS.values())
    raise ValueError(f"data_source = {data_source!r} is not one of respec's tasks; allowed: {allowed}")
