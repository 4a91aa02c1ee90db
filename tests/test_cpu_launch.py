"""The CPU launcher and its supervisor (on small shell commands), the verl task files and the tiny model.

The launcher's end-to-end run (verl's GRPO trainer on the CPU with a real vLLM server) is
tests/test_verl_e2e.py, with respec on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from respec_verl.verl_glue import launch as launcher
from respec_verl.verl_glue.supervisor import RunFailed, parse_step_metrics, supervise, tagged_processes

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "respec_grpo" / "config"


# ---------------------------------------------------------------- supervisor


def test_supervise_streams_to_the_log_and_returns(tmp_path):
    result = supervise([sys.executable, "-c", "print('step:1 - a/b:0.5 - c:2')"], tmp_path / "log.txt", timeout_s=30)
    assert result.ok and result.returncode == 0
    assert parse_step_metrics(open(result.log_path)) == {1: {"a/b": 0.5, "c": 2.0}}


def test_supervise_raises_with_the_tail_on_a_nonzero_exit(tmp_path):
    with pytest.raises(RunFailed, match="exit code 3") as info:
        supervise([sys.executable, "-c", "print('last words'); raise SystemExit(3)"], tmp_path / "log.txt", timeout_s=30)
    assert "last words" in str(info.value)


def _sleeper_tree(marker_file: Path) -> str:
    """A parent that starts a child in its own session (like Ray's daemons) and both sleep."""
    return (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(marker_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def test_timeout_ends_the_whole_run_including_detached_children(tmp_path):
    marker = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(RunFailed, match="timeout after 3 s") as info:
        supervise([sys.executable, "-c", _sleeper_tree(marker)], tmp_path / "log.txt", timeout_s=3)
    assert time.monotonic() - start < 60
    assert "started" in str(info.value)  # the tail comes with the error
    assert not _alive(int(marker.read_text()))  # its own session, found by the run tag and ended


def test_sigterm_to_the_caller_ends_the_whole_run(tmp_path):
    """`kill <demo pid>`: with `exit_on_sigterm` the supervised run and its detached children end too."""
    marker = tmp_path / "child.pid"
    caller = (
        "import sys\n"
        "from respec_verl.verl_glue.supervisor import exit_on_sigterm, supervise\n"
        "exit_on_sigterm()\n"
        f"supervise([sys.executable, '-c', {_sleeper_tree(marker)!r}], {str(tmp_path / 'log.txt')!r}, timeout_s=300)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", caller])
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(marker.read_text())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not _alive(child)


def test_a_fatal_line_ends_a_run_that_would_hang(tmp_path):
    code = "import time\nprint('EngineCore encountered a fatal error', flush=True)\ntime.sleep(300)\n"
    with pytest.raises(RunFailed, match="fatal line: EngineCore encountered a fatal error"):
        supervise([sys.executable, "-c", code], tmp_path / "log.txt", timeout_s=120, fatal_grace_s=1)


def test_no_tagged_process_survives_a_normal_exit(tmp_path):
    marker = tmp_path / "child.pid"
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
    )
    supervise([sys.executable, "-c", code], tmp_path / "log.txt", timeout_s=30)
    assert not _alive(int(marker.read_text()))
    assert tagged_processes("no-such-run") == []


# ---------------------------------------------------------------- launcher


def test_user_overrides_replace_defaults_of_the_same_key():
    merged = launcher.merge_overrides(
        ["a.b=1", "+ray_kwargs.ray_init.num_gpus=1", "c=3"], ["a.b=2", "+ray_kwargs.ray_init.num_gpus=2"]
    )
    assert merged == ["c=3", "a.b=2", "+ray_kwargs.ray_init.num_gpus=2"]


def test_cpu_overrides_keep_both_sides_at_one_precision():
    fp32 = launcher.cpu_overrides("float32")
    assert "actor_rollout_ref.rollout.dtype=float32" in fp32
    assert "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32" in fp32
    assert "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32" in fp32
    assert "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16" in launcher.cpu_overrides("bfloat16")
    with pytest.raises(ValueError, match="dtype = 'fp8' is not valid"):
        launcher.cpu_overrides("fp8")


def test_cpu_overrides_compose_on_the_recipe():
    """Every default key exists in verl's config or is added with `+` (a typo fails composition)."""
    pytest.importorskip("verl")
    from hydra import compose, initialize_config_dir

    overrides = launcher.merge_overrides(
        launcher.small_run_overrides("/m", "/d", "/r.py", "/w"), launcher.cpu_overrides(), ["actor_rollout_ref.respec.enable=false"]
    )
    with initialize_config_dir(config_dir=str(RECIPE), version_base=None):
        cfg = compose(config_name="respec_grpo", overrides=overrides)
    assert cfg.trainer.device == "cpu" and cfg.ray_kwargs.ray_init.num_gpus == 1
    assert cfg.actor_rollout_ref.rollout.enable_sleep_mode is False
    assert cfg.reward.num_workers == 1


def test_cpu_env(tmp_path):
    env = launcher.cpu_env({"LD_PRELOAD": "/x/libother.so"}, tmp_path, kv_cache_gib=2)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["TMPDIR"] == str(tmp_path)
    assert env["RESPEC_VERL_CPU"] == "1" and env["VERL_PLATFORM"] == "cpu"
    # the one-process executor of cpu_overrides needs it: vLLM-CPU turns "uni" into "mp" without it
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "+actor_rollout_ref.rollout.engine_kwargs.vllm.distributed_executor_backend=uni" in launcher.cpu_overrides()
    libiomp5 = launcher.find_libiomp5()
    if libiomp5 is not None:
        assert env["LD_PRELOAD"] == f"{libiomp5}:/x/libother.so"


def test_trainer_command():
    command = launcher.trainer_command(["a=1"], config_path=RECIPE, config_name="respec_grpo")
    assert command[:3] == [sys.executable, "-m", "verl.trainer.main_ppo"]
    assert command[3:] == ["--config-path", str(RECIPE.resolve()), "--config-name", "respec_grpo", "a=1"]


# ---------------------------------------------------------------- task files and tiny model


@pytest.mark.parametrize("task", ["add", "long"])
def test_task_rows_are_in_verls_format_and_score(tmp_path, task):
    pd = pytest.importorskip("pandas")
    from respec_verl.data.tasks import get_task
    from respec_verl.data.verl_task import compute_score, reward_path, write_verl_task

    paths = write_verl_task(tmp_path, n_train=6, n_val=2, task=task)
    train = pd.read_parquet(paths["train"])
    assert len(train) == 6 and len(pd.read_parquet(paths["val"])) == 2
    row = train.iloc[0]
    source = get_task(task).data_source
    assert row["data_source"] == source and row["prompt"][0]["role"] == "user"
    truth = row["reward_model"]["ground_truth"]
    if task == "add":
        assert int(truth) == row["extra_info"]["a"] + row["extra_info"]["b"]
        right, wrong = f"It is {truth}.", "It is 1000."
    else:
        assert int(truth) == row["extra_info"]["n"] and row["extra_info"]["topic"] in row["prompt"][0]["content"]
        right = "\n".join(f"{i}. Item {i} is here." for i in range(1, int(truth) + 1))
        wrong = "1. Only one."
    assert compute_score(source, right, truth) == 1.0
    assert compute_score(source, wrong, truth) < 1.0
    assert reward_path().name == "verl_task.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet", "val.parquet"]  # no temp files left


def test_unknown_task_writes_nothing(tmp_path):
    from respec_verl.data.verl_task import write_verl_task

    with pytest.raises(ValueError, match="--task = 'nope' is not valid; allowed: long, add"):
        write_verl_task(tmp_path / "data", task="nope")
    assert not (tmp_path / "data").exists()


def test_tiny_model_loads_with_smollm2s_tokenizer(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from respec_verl.models.tiny import VOCAB_SIZE, save_tiny_llama

    path = save_tiny_llama(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == VOCAB_SIZE == len(tokenizer)
    assert model.config.head_dim in (32, 64)  # sizes vLLM's CPU attention supports
    assert (path / "model.safetensors").exists() and json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2
    ids = tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # the staging folder was renamed, not left
