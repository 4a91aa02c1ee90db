"""The arithmetic task in verl's RL format: train/val parquet files and the reward function.

Each row is what verl's `RLHFDataset` reads: `data_source`, `prompt` (chat messages, templated by
the actor's tokenizer), `ability`, `reward_model` (`style` "rule" and the `ground_truth`) and
`extra_info`. The reward is `compute_score` with verl's custom-reward signature; give verl this
file's path, `reward.custom_reward_function.path=<.../respec_verl/data/verl_task.py>` (`reward_path()`),
and verl loads the function from the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from respec_verl.data.arithmetic import make_problems, score_answer

DATA_SOURCE = "respec_arithmetic"
ABILITY = "math"


def rows(n: int, seed: int, split: str, max_operand: int = 9) -> list[dict]:
    """`n` verl dataset rows of addition problems drawn with `seed`."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": problem.question}],
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
            "extra_info": {"split": split, "index": index, "a": problem.a, "b": problem.b},
        }
        for index, problem in enumerate(make_problems(n, seed=seed, max_operand=max_operand))
    ]


def write_verl_task(
    folder: str | Path, n_train: int = 64, n_val: int = 8, seed: int = 0, max_operand: int = 9
) -> dict[str, Path]:
    """Write `train.parquet` and `val.parquet` into `folder` (each atomically); returns their paths.

    Train and val draw from different seeds, so the same sum may appear in both but the sets are
    independent draws.
    """
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1)):
        path = folder / f"{split}.parquet"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{split}.", suffix=".parquet")
        os.close(fd)
        try:
            pd.DataFrame(rows(n, split_seed, split, max_operand)).to_parquet(tmp, index=False)
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
    """verl's custom reward: 1.0 when the last integer of the response is the sum, else 0.0."""
    if data_source != DATA_SOURCE:
        raise ValueError(f"compute_score scores {DATA_SOURCE!r} rows only, got data_source={data_source!r}")
    return score_answer(int(ground_truth), solution_str)
