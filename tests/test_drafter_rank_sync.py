"""One drafter across data-parallel ranks: 2 CPU ranks on gloo, each with its own shard of rollouts."""

from __future__ import annotations

import datetime
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from respec_verl.drafter import DrafterLearner, LearnerConfig, self_draft
from respec_verl.drafter.rank_sync import RankSync
from tests.conftest import tiny_llama
from tests.test_learner import rollouts

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str, synced: bool, poison_rank: int, poison: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a rank left waiting in a collective fails the test within a minute instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        target = tiny_llama(97, seed=1)
        config = LearnerConfig(steps_per_update=2, batch_size=4, lr=1e-3, top_k=0,
                               async_update=rank == 1)  # one rank updates in a background thread
        learner = DrafterLearner(self_draft(target, 1), config, target=target,
                                 rank_sync=RankSync.for_data_parallel() if synced else None)
        learner.add_rollouts(*rollouts(target, 8, seed=10 + rank))  # each rank its own shard
        if rank == poison_rank and poison == "inf":  # this rank's loss explodes: every rank must reject
            learner._loss = lambda logits, batch: logits.sum() * float("inf")
        if rank == poison_rank and poison == "raise":  # an error, not a guard: the same, and no rank hangs
            learner._loss = lambda logits, batch: (_ for _ in ()).throw(RuntimeError("out of memory"))
        warnings: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: warnings.append(record.getMessage())
        logging.getLogger("respec_verl.drafter.learner").addHandler(handler)
        learner.update(step=1)
        learner.wait()
        drafter = learner.latest()
        torch.save({"version": drafter.version, "weights": drafter.model.state_dict(), "warnings": warnings,
                    "failures": learner.metrics.get("respec/drafter/failures")}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path, synced: bool, poison_rank: int = -1, poison: str = "") -> list[dict]:
    mp.spawn(_rank, args=(_free_port(), str(tmp_path), synced, poison_rank, poison), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_ranks_publish_the_same_drafter_version_and_weights(tmp_path):
    first, second = _run(tmp_path, synced=True)
    assert first["version"] == second["version"] == 1
    assert _same(first["weights"], second["weights"])


def test_without_the_sync_the_ranks_drafters_drift_apart(tmp_path):
    first, second = _run(tmp_path, synced=False)
    assert first["version"] == second["version"] == 1
    assert not _same(first["weights"], second["weights"])  # what the sync prevents


@pytest.mark.parametrize("poison_rank,poison", [(0, "inf"), (1, "raise")])  # a guard, an error
def test_a_rejected_update_on_one_rank_is_rejected_on_every_rank(tmp_path, poison_rank, poison):
    first, second = _run(tmp_path, synced=True, poison_rank=poison_rank, poison=poison)
    assert first["version"] == second["version"] == 0
    assert first["failures"] == second["failures"] == 1
    assert _same(first["weights"], second["weights"])
    healthy = (first, second)[1 - poison_rank]
    # rejected by agreement at the step, not by a collective that timed out or lost its peer
    assert any("on this rank or another" in w for w in healthy["warnings"]), healthy["warnings"]
