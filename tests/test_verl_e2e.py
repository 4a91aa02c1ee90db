"""The one key in a real verl run: `python -m verl.trainer.main_ppo` GRPO with respec on, on the CPU.

Two steps of our GRPO recipe on the tiny Llama with `actor_rollout_ref.respec.enable=true` (vLLM
rollouts with a self-draft, the drafter distilled after each actor update and pushed into vLLM),
a checkpoint at step 2, then a resumed run to step 3. Each run is supervised with an outer
timeout that kills the whole process tree (a failure inside vLLM would otherwise hang).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "respec_grpo" / "config"
RESPEC_ON = [
    "actor_rollout_ref.respec.enable=true",
    "actor_rollout_ref.respec.drafter.self_draft_layers=1",
    # the tiny model's drafter costs as much as the target (its output layer dominates), so the
    # adaptive controller would rightly never speculate; a fixed k exercises every speculative path
    "actor_rollout_ref.respec.controller.policy=fixed",
    "actor_rollout_ref.respec.controller.max_k=2",
    "actor_rollout_ref.respec.evolution.async_update=false",
    "trainer.save_freq=2",
]
# Rollout (vLLM, speculating) vs trainer (FSDP) probabilities of the sampled tokens. Both run the same
# fp32 weights; what differs is kernels and summation order, which moves a probability by ~1e-6 on this
# model (measured 2e-6 to 3e-6 with and without speculation). Wrong weights or a lossy verifier give
# differences of order 0.1 (the tiny model's token probabilities are 0.1-1).
PROBS_DIFF_TOLERANCE = 1e-4


def _run(work: Path, steps: int):
    from respec_verl.verl_glue.launch import launch

    return launch("tiny", work, steps=steps, config_path=RECIPE, config_name="respec_grpo", overrides=RESPEC_ON,
                  timeout_s=900)


def test_grpo_with_respec_runs_evolves_the_drafter_and_resumes(tmp_path):
    first = _run(tmp_path, steps=2)
    assert first.run.returncode == 0
    assert sorted(first.metrics) == [1, 2]
    for step, m in first.metrics.items():
        assert m["respec/drafter/version"] == step  # one drafter update per RL step, pushed and checked
        assert m["rollout/spec_accept_length"] >= 1.0  # speculative rollouts reported per step
        assert 0.0 <= m["rollout/spec_accept_rate"] <= 1.0
        assert m["training/rollout_probs_diff_mean"] < PROBS_DIFF_TOLERANCE
        assert m["respec/drafter/failures"] == 0
    assert first.metrics[2]["respec/controller/k_mean"] == 2.0  # the fixed policy's k reached vLLM's scheduler

    checkpoint = tmp_path / "checkpoints" / "global_step_2"
    assert (checkpoint / "actor" / "respec_drafter_learner.pt").exists()
    saved = json.loads((checkpoint / "respec_controller_state.json").read_text())
    assert saved["observed_steps"] > 0

    resumed = _run(tmp_path, steps=3)
    assert sorted(resumed.metrics) == [3]
    # a fresh learner would publish version 1; the restored one continues from the checkpoint's 2
    assert resumed.metrics[3]["respec/drafter/version"] == 3
    assert resumed.metrics[3]["training/rollout_probs_diff_mean"] < PROBS_DIFF_TOLERANCE
