"""The one key in a real verl run: `python -m verl.trainer.main_ppo` GRPO with respec on, on the CPU.

Two steps of our GRPO recipe on the tiny Llama with `actor_rollout_ref.respec.enable=true` (vLLM
rollouts with a self-draft, the drafter distilled after each actor update and pushed into vLLM),
and a checkpoint at step 2. The self-draft keeps both of the tiny actor's layers, so the drafter
vLLM should run is the actor itself: near-total acceptance proves that the pushed drafter is the
one vLLM runs (vLLM starts from dummy weights here, so a push that missed a tensor shows at once). The run is supervised with an outer
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
    "actor_rollout_ref.respec.drafter.self_draft_layers=2",
    # this drafter costs as much as the target, so the adaptive controller would rightly never
    # speculate; a fixed k exercises every speculative path
    "actor_rollout_ref.respec.controller.policy=fixed",
    "actor_rollout_ref.respec.controller.max_k=2",
    "actor_rollout_ref.respec.evolution.async_update=false",
    "trainer.save_freq=2",
]
# A random tiny model never solves the task, so a reward that varies within each group stands in for
# it: GRPO advantages and the KD weights are non-zero and uneven, and lr 1e-3 moves the actor (step 2's
# `actor/kl_loss` is about 0.1 nats per token), so stale weights in vLLM would show.
VARYING_REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """Varies between the samples of a group, so GRPO advantages and gradients are non-zero."""
    return (sum(map(ord, solution_str)) % 7) / 7
'''
# verl's `training/rollout_probs_diff_mean` is the mean |p_vLLM - p_trainer| over the sampled tokens
# (p of order 0.1-1 for this model). In fp32 on both sides, speculating or not, we measured 2e-6 to
# 3e-6 (max below 1e-4): kernels and summation order. Weights left stale in vLLM after the update, or a
# lossy verifier, differ by the policy change itself, of order 1e-2 to 1e-1; 1e-3 separates the two.
PROBS_DIFF_MEAN_TOLERANCE = 1e-3
PROBS_DIFF_MAX_TOLERANCE = 1e-2


def _run(work: Path, steps: int):
    from respec_verl.verl_glue.launch import launch

    reward = work / "varying_reward.py"
    work.mkdir(parents=True, exist_ok=True)
    reward.write_text(VARYING_REWARD)
    overrides = [*RESPEC_ON, "actor_rollout_ref.actor.optim.lr=1e-3"]
    return launch("tiny", work, reward_path=reward, steps=steps, dtype="float32", config_path=RECIPE,
                  config_name="respec_grpo", overrides=overrides, timeout_s=900)


def test_grpo_with_respec_runs_evolves_the_drafter_and_checkpoints_it(tmp_path):
    first = _run(tmp_path, steps=2)
    assert first.run.returncode == 0
    assert sorted(first.metrics) == [1, 2]
    for step, m in first.metrics.items():
        assert m["respec/drafter/version"] == step  # one drafter update per RL step, pushed and checked
        assert m["rollout/spec_accept_length"] >= 1.0  # speculative rollouts reported per step
        assert 0.0 <= m["rollout/spec_accept_rate"] <= 1.0
        assert m["training/rollout_probs_diff_mean"] < PROBS_DIFF_MEAN_TOLERANCE
        assert m["training/rollout_probs_diff_max"] < PROBS_DIFF_MAX_TOLERANCE
        assert m["respec/drafter/failures"] == 0
        assert m["respec/drafter/weight_min"] < m["respec/drafter/weight_max"]  # rewards weight the rollouts
    assert first.metrics[2]["actor/kl_loss"] > 0.01, "the actor did not move, so stale weights would not show"
    # step 1 speculates with drafter version 0, the actor's own weights pushed at start: q = p
    assert first.metrics[1]["rollout/spec_accept_rate"] > 0.9
    assert first.metrics[2]["respec/controller/k_mean"] == 2.0  # the fixed policy's k reached vLLM's scheduler
    # vLLM's worker ran inside its engine-core process (launch's one-process executor): vLLM tags the
    # log lines of each of its processes, and a worker process of its own would log as "(Worker pid=N)"
    log = first.run.log_path.read_text(errors="replace")
    assert "(EngineCore pid=" in log and "(Worker pid=" not in log

    checkpoint = tmp_path / "checkpoints" / "global_step_2"
    assert (checkpoint / "actor" / "respec_drafter_learner.pt").exists()
    saved = json.loads((checkpoint / "respec_controller_state.json").read_text())
    assert saved["observed_steps"] > 0

    # resuming from it (verl's `_load_checkpoint`) is covered piecewise: the controller state by
    # tests/test_vllm_glue.py::test_controller_state_is_restored_before_vllm_starts, the learner by
    # tests/test_learner.py's state_dict round trip; a manual resume to step 3 published version 3.


@pytest.mark.extended  # about 5 minutes: `python -m pytest -m extended tests/test_verl_e2e.py`
def test_grpo_with_the_history_drafter_runs_in_vllm_without_a_drafter_model(tmp_path):
    """`drafter.method=history`: vLLM drafts through respec's custom proposer; nothing is trained or pushed.

    The random tiny actor starts its answers with the same few likely tokens whatever the prompt, and
    the chat template ends every prompt alike, so step 2's rollouts find step 1's in the history.
    """
    from respec_verl.verl_glue.launch import launch

    overrides = ["actor_rollout_ref.respec.enable=true", "actor_rollout_ref.respec.drafter.method=history",
                 "actor_rollout_ref.respec.controller.max_k=3"]
    result = launch("tiny", tmp_path, steps=2, dtype="float32", config_path=RECIPE, config_name="respec_grpo",
                    overrides=overrides, timeout_s=900)
    assert result.run.returncode == 0
    for m in result.metrics.values():
        assert m["training/rollout_probs_diff_mean"] < PROBS_DIFF_MEAN_TOLERANCE  # lossless
        assert m["training/rollout_probs_diff_max"] < PROBS_DIFF_MAX_TOLERANCE
        assert not any(name.startswith("respec/drafter/") for name in m)  # no learner
        assert m["respec/controller/k_mean"] == 3.0  # history runs at controller.max_k
    assert result.metrics[2]["rollout/spec_accept_length"] > 1.0  # drafts from step 1's rollouts were accepted
    assert not (tmp_path / "checkpoints" / "respec" / "self_draft").exists()  # no drafter folder was cut
    log = result.run.log_path.read_text(errors="replace")
    assert '"method": "custom_class"' in log and "history_proposer.HistoryProposer" in log
