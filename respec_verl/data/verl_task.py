"""respec's tasks in verl's RL format: train/val parquet files and the reward function.

Each row is what verl's `RLHFDataset` reads: `data_source` (which task), `prompt` (chat messages,
templated by the actor's tokenizer), `ability`, `reward_model` (`style` "rule" and the
`ground_truth`) and `extra_info`. The reward is `compute_score` with verl's custom-reward signature;
give verl this file's path, `reward.custom_reward_function.path=<.../respec_verl/data/verl_task.py>`
(`reward_path()`), and verl loads the function from the file. It scores every task of
`respec_verl.data.tasks`, chosen by the row's `data_source`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from respec_verl.data.tasks import DEFAULT_TASK, get_task, task_for_source


def rows(n: int, seed: int, split: str, task: str = DEFAULT_TASK) -> list[dict]:
    """`n` verl dataset rows of `task`'s questions drawn with `seed`."""
    spec = get_task(task)
    return [
        {
            "data_source": spec.data_source,
            "prompt": [{"role": "user", "content": question}],
            "ability": spec.ability,
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": split, "index": index, **info},
        }
        for index, (question, truth, info) in enumerate(spec.questions(n, seed))
    ]


def write_verl_task(
    folder: str | Path, n_train: int = 64, n_val: int = 8, seed: int = 0, task: str = DEFAULT_TASK
) -> dict[str, Path]:
    """Write `task`'s `train.parquet` and `val.parquet` into `folder` (each atomically); returns their paths.

    Train and val draw from different seeds, so the same question may appear in both but the sets
    are independent draws.
    """
    import pandas as pd

    get_task(task)  # a bad name fails before anything is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1)):
        path = folder / f"{split}.parquet"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{split}.", suffix=".parquet")
        os.close(fd)
        try:
            pd.DataFrame(rows(n, split_seed, split, task)).to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths[split] = path
    return paths


def reward_path() -> Path:
    """The file to give verl as `reward.custom_reward_function.path` (this module)."""
    return Path(__file__).resolve()


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl's custom reward: the score of the task that `data_source` names (see `tasks.TASKS`)."""
    return task_for_source(data_source).score(str(ground_truth), solution_str)
