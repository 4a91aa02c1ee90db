"""`respec-verl demo` and `bench.e2e`: the step records, summary, plots and comparison on synthetic
metrics (fast), and, marked slow, the demo itself for two GRPO steps on the tiny model."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from respec_verl.demo.run import DemoJob, job_overrides
from respec_verl.demo.progress import progress_figures
from respec_verl.demo.comparison import compare_rewards, compare_runs, compare_seeds, format_seeds_table, plot_seeds
from respec_verl.demo.report import (
    RLStep,
    format_summary,
    non_finite_metrics,
    plot_run,
    read_jsonl,
    records_from_metrics,
    summarize,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parent.parent


def verl_metrics(step: int, reward: float, spec: bool = True) -> dict[str, float]:
    """One step's metrics as verl logs them (names as in a real run)."""
    m = {
        "critic/score/mean": reward,
        "timing_s/gen": 10.0 if step > 1 else 40.0,
        "timing_s/step": 30.0 if step > 1 else 90.0,
        "response_length/mean": 20.0,
        "training/rollout_probs_diff_mean": 2e-6,
        "actor/pg_loss": 0.1,
    }
    if spec:
        m.update({
            "rollout/spec_accept_length": 1.5 + 0.1 * step,
            "rollout/spec_accept_rate": 0.4,
            "respec/controller/k_mean": 2.0,
            "respec/controller/plain_fraction": 0.25,
            "respec/controller/k_at_batch_16": 1.0,
            "respec/controller/k_at_batch_2": 3.0,
            "respec/drafter/version": float(step),
            "respec/drafter/loss": 1.0 / step,
        })
    return m


def test_records_keep_the_figures_a_user_looks_at():
    records = records_from_metrics({2: verl_metrics(2, 0.5), 1: verl_metrics(1, 0.25)})
    assert [r.step for r in records] == [1, 2]
    second = records[1]
    assert (second.reward, second.drafter_version, second.rollout_s, second.step_s) == (0.5, 2.0, 10.0, 30.0)
    assert second.accept_length == pytest.approx(1.7) and second.k_mean == 2.0
    assert second.k_at_batch == {2: 3.0, 16: 1.0}  # sorted by batch size, as ints


def test_records_without_speculation_have_no_spec_figures():
    record = records_from_metrics({1: verl_metrics(1, 0.5, spec=False)})[0]
    assert record.accept_length is None and record.drafter_version is None and record.k_at_batch == {}


def test_jsonl_round_trips_and_stays_valid_json_with_nan(tmp_path):
    metrics = {1: verl_metrics(1, 0.25), 2: {**verl_metrics(2, 0.5), "respec/drafter/loss": math.nan}}
    records = records_from_metrics(metrics)
    write_jsonl(tmp_path / "m.jsonl", records)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["drafter_loss"] is None  # null, not NaN
    assert json.loads(lines[0])["k_at_batch"] == {"2": 3.0, "16": 1.0}
    assert read_jsonl(tmp_path / "m.jsonl") == records
    assert non_finite_metrics(metrics) == ["step 2: respec/drafter/loss"]  # but the summary reports it


def test_summary_compares_the_first_and_last_steps_and_skips_warmup_in_times():
    records = records_from_metrics({s: verl_metrics(s, r) for s, r in zip(range(1, 7), [0.0, 0.25, 0.5, 0.5, 0.75, 1.0])})
    summary = summarize(records, window=2)
    assert summary["reward_first"] == pytest.approx(0.125) and summary["reward_last"] == pytest.approx(0.875)
    assert (summary["drafter_version_first"], summary["drafter_version_last"]) == (1.0, 6.0)
    assert summary["rollout_s_mean"] == 10.0 and summary["step_s_mean"] == 30.0  # step 1's 40 s / 90 s left out
    assert summary["k_at_batch"] == {"2": 3.0, "16": 1.0}
    text = format_summary(summary)
    assert "0.12 (first steps) -> 0.88 (last steps)" in text and "version 1 -> 6" in text


def test_plots_are_written(tmp_path):
    spec = records_from_metrics({s: verl_metrics(s, 0.1 * s) for s in (1, 2, 3)})
    plain = records_from_metrics({s: verl_metrics(s, 0.1 * s, spec=False) for s in (1, 2, 3)})
    for records, name in ((spec, "spec.png"), (plain, "plain.png")):
        assert plot_run(records, tmp_path / name).stat().st_size > 10_000
    runs = {0: (spec, plain), 1: (spec, plain)}
    assert plot_seeds(runs, compare_seeds(runs), tmp_path / "cmp.png").stat().st_size > 10_000


def test_speed_ratios_use_the_steps_after_the_first():
    spec = [RLStep(step=1, reward=0.5, rollout_s=100.0, step_s=200.0)] + [
        RLStep(step=s, reward=0.5, rollout_s=10.0, step_s=30.0) for s in (2, 3)]
    plain = [RLStep(step=1, reward=0.5, rollout_s=50.0, step_s=90.0)] + [
        RLStep(step=s, reward=0.5, rollout_s=20.0, step_s=40.0) for s in (2, 3)]
    comparison = compare_runs(spec, plain)
    assert comparison["rollout_s_speedup"] == pytest.approx(2.0)
    assert comparison["step_s_speedup"] == pytest.approx(40 / 30)
    assert comparison["wilcoxon_p"] == 1.0 and comparison["indistinguishable_at_0.05"]


def test_seeds_give_each_ratio_its_spread_and_pair_rewards_by_seed_and_step():
    def run(rollout_s, step_s, rewards):
        return [RLStep(step=1, reward=rewards[0], rollout_s=99.0, step_s=99.0)] + [
            RLStep(step=s, reward=r, rollout_s=rollout_s, step_s=step_s) for s, r in enumerate(rewards[1:], start=2)]

    runs = {
        0: (run(10.0, 30.0, [0.2, 0.4, 0.6]), run(20.0, 40.0, [0.2, 0.5, 0.6])),  # rollout 2x, share off 0.5
        1: (run(10.0, 20.0, [0.3, 0.5, 0.7]), run(15.0, 25.0, [0.3, 0.5, 0.8])),  # rollout 1.5x, share off 0.6
    }
    comparison = compare_seeds(runs)
    ratio = comparison["rollout_s_speedup"]
    assert ratio["per_seed"] == pytest.approx([2.0, 1.5]) and ratio["mean"] == pytest.approx(1.75)
    assert ratio["sd"] == pytest.approx(math.sqrt(2 * 0.25**2)) and (ratio["min"], ratio["max"]) == (1.5, 2.0)
    assert comparison["rollout_share_plain"]["per_seed"] == pytest.approx([0.5, 0.6])
    assert comparison["rewards"]["steps"] == 6  # every (seed, step) pair, the first steps included
    assert comparison["rewards"]["reward_mean_diff"] == pytest.approx(-0.2 / 6)
    table = format_seeds_table(comparison)
    assert "| rollout time, SD off / SD on | 1.75 ± 0.35 (min 1.50, max 2.00) |" in table
    assert "| rollout share of the step, SD off | 0.55 ± 0.07 (min 0.50, max 0.60) |" in table


def test_e2e_report_only_compares_the_finished_runs_and_says_which(tmp_path):
    """An interrupted benchmark keeps its finished runs: --report-only compares the seeds with both."""
    from bench import e2e

    for seed, names in ((0, ("spec", "plain")), (1, ("spec",))):  # seed 1 lost its SD-off run
        for name in names:
            folder = tmp_path / "work" / f"seed{seed}" / name
            folder.mkdir(parents=True)
            rollout = 10.0 if name == "spec" else 20.0
            records = [RLStep(step=s, reward=0.5, rollout_s=rollout, step_s=40.0) for s in (1, 2, 3)]
            write_jsonl(folder / "metrics.jsonl", records)
            (folder / "summary.json").write_text(json.dumps({"job": {"dtype": "float32"}}))
    out = tmp_path / "e2e.json"
    e2e.main(["--report-only", "--seeds", "0,1", "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["args"]["seeds_reported"] == [0] and result["args"]["dtype"] == "float32"
    assert result["comparison"]["rollout_s_speedup"]["per_seed"] == pytest.approx([2.0])
    assert out.with_suffix(".png").exists()
    with pytest.raises(SystemExit):
        e2e.main(["--report-only", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(out)])


def test_e2e_alternates_the_order_of_the_runs_between_seeds():
    from bench import e2e

    assert [name for name, _ in e2e.run_order(0)] == ["spec", "plain"]
    assert [name for name, _ in e2e.run_order(1)] == ["plain", "spec"]
    assert e2e.seeds_arg("0,1,2") == [0, 1, 2]
    with pytest.raises(Exception, match="distinct integers"):
        e2e.seeds_arg("0,0")


def test_reward_tests_separate_different_curves_and_not_equal_ones():
    """Fixed data, no randomness: clearly separated curves give small p-values, equal ones p = 1."""
    low = [0.1, 0.15, 0.2, 0.1, 0.15, 0.2, 0.1, 0.15, 0.2, 0.1]
    high = [0.8, 0.85, 0.9, 0.8, 0.85, 0.9, 0.8, 0.85, 0.9, 0.8]
    different = compare_rewards(high, low)
    assert different["mann_whitney_p"] < 0.001 and different["wilcoxon_p"] < 0.01
    assert not different["indistinguishable_at_0.05"]
    same = compare_rewards(low, list(low))
    assert same["mann_whitney_p"] == pytest.approx(1.0) and same["wilcoxon_p"] == 1.0


def test_job_overrides_turn_the_one_key_and_keep_the_job_otherwise_equal():
    on, off = job_overrides(DemoJob(spec=True)), job_overrides(DemoJob(spec=False))
    assert "actor_rollout_ref.respec.enable=true" in on and "actor_rollout_ref.respec.enable=false" in off
    assert [o for o in on if "respec.enable" not in o] == [o for o in off if "respec.enable" not in o]
    gpu = job_overrides(DemoJob(gpus=4))
    assert "trainer.n_gpus_per_node=4" in gpu
    assert job_overrides(DemoJob(overrides=("data.seed=7",)))[-1] == "data.seed=7"  # user overrides come last


def test_default_job_is_the_documented_one():
    job = DemoJob()
    overrides = job_overrides(job)
    assert "actor_rollout_ref.rollout.temperature=0.6" in overrides  # ReSpec's rollout temperature
    assert "actor_rollout_ref.actor.use_kl_loss=false" in overrides  # no reference model on the CPU
    assert job.task == "long" and "data.max_response_length=384" in overrides  # the long-answer task
    # vLLM's context holds the prompt cap (64) and the answer cap, in 128-token blocks; one block more per
    # rollout for the speculative lookahead
    assert "actor_rollout_ref.rollout.max_model_len=512" in overrides
    assert "+actor_rollout_ref.rollout.engine_kwargs.vllm.num_gpu_blocks_override=80" in overrides  # 16 x (4 + 1)
    # long answers of very different lengths: one per micro-batch, which verl pads to its longest
    assert "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1" in overrides and job.warmup_steps == 60
    add = job_overrides(DemoJob(task="add"))
    assert "data.max_response_length=32" in add and "actor_rollout_ref.rollout.max_model_len=128" in add
    assert "+actor_rollout_ref.rollout.engine_kwargs.vllm.num_gpu_blocks_override=32" in add  # 2 per rollout
    assert "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4" in add and DemoJob(task="add").warmup_steps == 120
    assert DemoJob(warmup_steps=0, micro_batch=2).micro_batch == 2  # an explicit choice stays
    assert job.warms_up and not DemoJob(spec=False).warms_up and not DemoJob(model="tiny").warms_up
    assert not DemoJob(warmup_steps=0).warms_up
    # a drafter cut at start (no warm-up) predicts over a reduced vocabulary; a warmed one has its own
    assert "actor_rollout_ref.respec.drafter.draft_vocab_size=2048" in overrides
    warmed = job_overrides(job, drafter_path="/w")
    assert "actor_rollout_ref.respec.drafter.path=/w" in warmed and not any("draft_vocab_size" in o for o in warmed)
    assert not any("num_gpu_blocks_override" in o for o in job_overrides(DemoJob(gpus=2)))


@pytest.mark.parametrize("kwargs, key", [({"steps": 0}, "--steps"), ({"gpus": 0}, "--gpus"), ({"group": 1}, "group"),
                                         ({"temperature": 0.0}, "--temperature"), ({"task": "gsm8k"}, "--task"),
                                         ({"dtype": "fp16"}, "--dtype"), ({"response_length": 0}, "response_length")])
def test_bad_job_values_name_the_flag(kwargs, key):
    with pytest.raises(ValueError, match=key):
        DemoJob(**kwargs)


def test_job_overrides_compose_on_the_recipe():
    """Every key the demo sets exists in verl's config (a typo would fail the run only after minutes)."""
    pytest.importorskip("verl")
    from hydra import compose, initialize_config_dir

    from respec_verl.demo.run import RECIPE
    from respec_verl.verl_glue import launch as launcher

    for job in (DemoJob(), DemoJob(model="tiny", spec=False)):
        overrides = launcher.merge_overrides(
            launcher.small_run_overrides("/m", "/d", "/r.py", "/w"), launcher.cpu_overrides(), job_overrides(job)
        )
        with initialize_config_dir(config_dir=str(RECIPE), version_base=None):
            cfg = compose(config_name="respec_grpo", overrides=overrides)
        assert cfg.actor_rollout_ref.rollout.n == job.group
        assert cfg.actor_rollout_ref.rollout.max_num_seqs == job.prompts_per_step * job.group


def test_progress_figures():
    record = records_from_metrics({3: verl_metrics(3, 0.5)})[0]
    assert progress_figures(record) == "reward 0.50, accept len 1.80, k 2.0, drafter v3, rollout 10s, step 30s"


def test_progress_follows_the_log_through_phases_and_steps(tmp_path):
    from respec_verl.demo.progress import LogProgress

    log = tmp_path / "main_ppo.log"
    progress = LogProgress(log, steps=2, desc="GRPO")
    lines = progress.lines()
    assert next(lines) == []  # no log yet
    log.write_text("2026 INFO worker.py:2038 -- Started a local Ray instance.\n(TaskRunnerV1) INFO create worker group\npart")
    assert [progress.update(line) for line in next(lines)] == ["phase: starting verl's workers",
                                                               "phase: loading the actor and the reference"]
    with open(log, "a") as f:
        f.write("ial line\n(TaskRunnerV1) Started a local Ray instance\n"
                "(TaskRunnerV1 pid=1) step:1 - critic/score/mean:0.25 - timing_s/gen:12.0 - timing_s/step:30.0\n")
    changes = [progress.update(line) for line in next(lines)]
    assert changes == [None, None, "step 1/2: reward 0.25, rollout 12s, step 30s"]  # phases never go back


# ---------------------------------------------------------------- the real demo


@pytest.mark.slow
def test_demo_runs_two_grpo_steps_on_the_tiny_model_and_writes_what_it_promises(tmp_path):
    """`respec-verl demo --model tiny --steps 2`, as a user runs it, under an outer timeout."""
    pytest.importorskip("vllm")
    pytest.importorskip("transfer_queue")
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "respec_verl.cli", "demo", "--model", "tiny", "--steps", "2", "--out", str(out),
               "--no-progress", "--timeout", "600"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reward" in done.stdout and "acceptance length" in done.stdout  # the printed summary

    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    expected = {"step", "reward", "accept_length", "accept_rate", "k_mean", "k_at_batch", "drafter_version",
                "drafter_loss", "rollout_s", "step_s", "rollout_probs_diff"}
    assert expected <= set(records[0])
    for r in records:  # logged at every step
        for key in ("reward", "accept_length", "accept_rate", "drafter_version", "rollout_s", "step_s", "rollout_probs_diff"):
            assert isinstance(r[key], (int, float)), f"step {r['step']}: {key} = {r[key]!r}"
        assert 0.0 <= r["reward"] <= 1.0 and r["accept_length"] >= 1.0
    last = records[-1]  # the controller's state and the first drafter update arrive after step 1
    assert last["k_at_batch"] and last["k_mean"] == 2.0 and isinstance(last["drafter_loss"], float)
    assert last["drafter_version"] > records[0]["drafter_version"]  # the drafter evolved (async: one step behind)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["non_finite_metrics"] == []  # no NaN or inf anywhere in verl's metrics
    assert summary["steps"] == 2 and summary["drafter_version_last"] >= 1
    assert (out / "metrics.png").stat().st_size > 10_000
    log = (out / "main_ppo.log").read_text()
    assert "step:2 - " in log
    reused = [float(v) for v in re.findall(r"respec/drafter/labels_reused:([0-9.]+)", log)]
    assert len(reused) == 2 and all(v == 1.0 for v in reused)  # async: every label from verl's old-log-prob pass
    label_s = [float(v) for v in re.findall(r"respec/drafter/label_time_s:([0-9.e-]+)", log)]
    assert len(label_s) == 2 and all(0.0 < v < 60.0 for v in label_s)  # timed at every step, update or not

