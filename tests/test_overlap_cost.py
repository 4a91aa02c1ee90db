"""`bench.overlap_cost`: its modes and the CPU share it gives a background update (the timings are the benchmark)."""

from __future__ import annotations

import json
import math
import os
import threading

import pytest
import torch

from bench import overlap_cost as overlap
from respec_verl.drafter import LearnerConfig, self_draft
from tests.conftest import tiny_llama


def test_modes_parse_into_dtype_threads_niceness_and_stream():
    assert overlap.parse_mode("drafter/bfloat16") == ("bfloat16", 0, 0, False)
    assert overlap.parse_mode("overlap/float32/threads=1/nice=10") == ("float32", 1, 10, False)
    assert overlap.parse_mode("overlap/bfloat16/stream") == ("bfloat16", 0, 0, True)
    assert all(overlap.parse_mode(m)[0] in ("float32", "bfloat16") for m in overlap.MODES if m != "actor")


class Recording(overlap.SharingLearner):
    def _loss(self, draft_logits, batch):
        self.seen = (torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super()._loss(draft_logits, batch)


def test_the_share_applies_to_the_background_update_only_and_is_undone_for_later_threads():
    target = tiny_llama(seed=3)
    prompts = [[1, 2, 3], [4, 5, 6]]
    responses = [[7, 8], [9, 10]]
    caller = torch.get_num_threads()
    narrow = 1 if caller > 1 else 2  # differs from the caller's, so the check can fail
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    for background, expected in ((False, (caller, nice)), (True, (narrow, nice + 2))):
        learner = Recording(self_draft(target, 1), LearnerConfig(steps_per_update=1, top_k=0, async_update=background),
                            target=target)
        learner.share = (narrow, 2)
        learner.add_rollouts(prompts, responses, [0.0, 1.0])
        learner.update(1)
        learner.wait()
        assert learner.seen == expected
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [caller] and torch.get_num_threads() == caller


def test_a_random_smollm2_runs_every_cpu_mode_and_writes_json(tmp_path):
    """The GPU session's script (`--model random`) on the CPU: SmolLM2's architecture, 3 layers."""
    out = tmp_path / "overlap.json"
    overlap.main(["--model", "random", "--layers", "3", "--rounds", "1", "--rollouts", "4",
                  "--response-length", "4", "--modes", "actor,drafter/float32,overlap/float32", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["median_s"]) == {"actor", "drafter/float32", "overlap/float32"}
    assert "gpu" not in result["machine"] and result["machine"]["torch_threads"] >= 1  # where it ran
    assert all(t > 0 for t in result["median_s"].values())
    assert math.isfinite(result["kd_loss"]["float32"])


def test_a_stream_mode_needs_a_gpu(capsys):
    with pytest.raises(SystemExit):
        overlap.main(["--model", "random", "--modes", "actor,overlap/float32/stream", "--out", "unused.json"])
    assert "needs --device cuda" in capsys.readouterr().err
