"""Recorded drafter updates: the rollouts each update trained on, replayable offline.

With `LearnerConfig.record_dir` set, every finished update writes `update_<version>.pt`: its
rollouts (prompt and response ids, score, the actor's labels at the rollout temperature, and for
an EAGLE-3 drafter the actor's hidden states). The
labels are the actor's of that RL step, so a second learner fed the same files in order
(`DrafterLearner.add_labelled` + `update`) follows another drafter policy (uniform instead of
reward weights, say) on exactly the same actor trajectory, without the actor itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from respec_verl.drafter.kd_loss import TeacherTargets

_FILE = re.compile(r"update_(\d+)\.pt$")


@dataclass
class LabelledRollout:
    """One rollout and the actor's labels at the positions that predict its response tokens."""

    prompt: list[int]
    response: list[int]
    score: float
    teacher: TeacherTargets  # logprobs [R, Vd or K], sparse_ids [R, K] or None
    features: torch.Tensor | None = None  # [P + R, F]: the actor's hidden states for a drafter with target_layers


def record_update(folder: str | os.PathLike, version: int, rollouts: list[LabelledRollout]) -> Path:
    """Write the rollouts of the update that published `version` (atomic: a reader never sees half)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"update_{version:05d}.pt"
    rows = [
        {"prompt": r.prompt, "response": r.response, "score": r.score,
         "logprobs": r.teacher.logprobs, "sparse_ids": r.teacher.sparse_ids, "features": r.features}
        for r in rollouts
    ]
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"version": int(version), "rollouts": rows}, tmp)
    os.replace(tmp, path)
    return path


def recorded_updates(folder: str | os.PathLike) -> list[tuple[int, list[LabelledRollout]]]:
    """Every recorded update in `folder`, by version: (version, rollouts)."""
    found = sorted((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := _FILE.match(p.name)))
    out = []
    for version, path in found:
        doc = torch.load(path, weights_only=False)
        rollouts = [
            LabelledRollout(r["prompt"], r["response"], r["score"], TeacherTargets(r["logprobs"], r["sparse_ids"]),
                            r.get("features"))
            for r in doc["rollouts"]
        ]
        out.append((version, rollouts))
    return out
