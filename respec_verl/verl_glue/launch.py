"""Launch verl's trainer (`python -m verl.trainer.main_ppo`) on a CPU-only host, supervised.

The code side of CPU support is the plugin's CPU module (`respec_verl.verl_glue.cpu`, loaded at
`import verl` in every process). The rest is configuration, which this module assembles:

- `cpu_overrides`: what any CPU run needs (fake Ray GPUs and enough logical CPUs, one
  TransferQueue storage unit, no vLLM sleep mode, vLLM's worker in its engine-core process,
  sdpa attention, no remove-padding or torch.compile, one reward and one agent-loop worker, a
  small weight-sync bucket), and the precision: the rollout's `dtype` and the trainer's FSDP
  `mixed_precision.param_dtype` are set together, so that vLLM and the trainer compute the same
  probabilities (verl's defaults are a bf16 trainer, whatever the rollout dtype);
- `small_run_overrides`: a short run of the arithmetic task (batch and lengths for a smoke test);
- `cpu_env`: `LD_PRELOAD` of the Intel OpenMP runtime shipped with the Python environment (vLLM's
  CPU backend is built against it), `VLLM_CPU_KVCACHE_SPACE`, `VLLM_ENABLE_V1_MULTIPROCESSING=0`
  (the one-process vLLM executor), a short `TMPDIR` (Ray puts Unix sockets under it, with a
  107-byte path limit), and `RESPEC_VERL_CPU=1`; `launch` adds `RESPEC_VERL_INSTALL=1` (respec's
  trainer in the run, with the key on or off: `install_switch`).

User overrides come last and replace any default with the same key. The run goes through
`supervisor.supervise` (own process group, outer timeout, fatal-line detection, log file), and
`launch` returns the result with verl's per-step metrics parsed from the log.

    python -m respec_verl.verl_glue.launch --model tiny --work /tmp/run \
        --config-path recipes/respec_grpo/config --config-name respec_grpo \
        actor_rollout_ref.respec.enable=false
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from respec_verl.cpu_features import cpu_has_fast_bf16
from respec_verl.upstream.ray_compat import PRESTART_WORKER_FIRST_DRIVER_ENV
from respec_verl.verl_glue.install_switch import with_install
from respec_verl.verl_glue.supervisor import RunResult, parse_step_metrics, supervise

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}  # rollout dtype -> verl's FSDP PrecisionType name
DTYPE_CHOICES = ("auto", *DTYPES)
MAX_PROMPT_TOKENS = 64  # data.max_prompt_length of the short runs: every respec task's chat prompt fits


def cpu_dtype(name: str = "auto") -> str:
    """The run's dtype on this CPU: "auto" is bfloat16 where the CPU has bf16 matmul instructions
    (AVX-512 bf16 or AMX), else float32. Without them bf16 is emulated: every bf16 matmul costs
    more than fp32's, and a speculative step, which verifies several tokens, costs more still."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype = {name!r} is not valid; allowed: {', '.join(DTYPE_CHOICES)}")
    if name != "auto":
        return name
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def cpu_overrides(dtype: str = "float32", bucket_mb: int = 256) -> list[str]:
    """The config-only part of CPU support (see the module docstring), for rollout `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype = {dtype!r} is not valid; allowed: {', '.join(DTYPES)}")
    trainer_dtype = DTYPES[dtype]
    return [
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1",
        # verl's resource pools are GPU-shaped: give Ray one logical GPU, and logical CPUs for the
        # colocated bundle plus the actors (oversubscribed on purpose)
        "+ray_kwargs.ray_init.num_gpus=1",
        "ray_kwargs.ray_init.num_cpus=16",
        "+ray_kwargs.ray_init.include_dashboard=False",  # one process less to start on a small host
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "reward.num_workers=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "data.dataloader_num_workers=0",
        # vLLM on CPU: no sleep mode, one rank, eager
        "+actor_rollout_ref.rollout.enable_sleep_mode=False",
        "actor_rollout_ref.rollout.free_cache_engine=False",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.1",
        # vLLM's worker inside its engine-core process, not a process of its own (one Python with torch
        # less in the run's peak memory); vLLM's CPU platform allows it only with
        # VLLM_ENABLE_V1_MULTIPROCESSING=0, which `cpu_env` sets
        "+actor_rollout_ref.rollout.engine_kwargs.vllm.distributed_executor_backend=uni",
        f"actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes={bucket_mb}",
        # trainer: no flash-attention, no unpadding kernels, no compile
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        # one precision on both sides, so the rollout's probabilities are the trainer's
        f"actor_rollout_ref.rollout.dtype={dtype}",
        f"+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype={trainer_dtype}",
        f"+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype={trainer_dtype}",
    ]


def small_run_overrides(
    model: str | Path, data_dir: str | Path, reward_path: str | Path, work_dir: str | Path, steps: int = 2
) -> list[str]:
    """A short GRPO run on the arithmetic task: 4 prompts x 2 samples, 32-token answers."""
    data_dir = Path(data_dir)
    return [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data_dir / 'train.parquet'}",
        f"data.val_files={data_dir / 'val.parquet'}",
        "data.train_batch_size=4",
        f"data.max_prompt_length={MAX_PROMPT_TOKENS}",
        "data.max_response_length=32",
        "data.filter_overlong_prompts=False",
        f"reward.custom_reward_function.path={reward_path}",
        "reward.custom_reward_function.name=compute_score",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.max_model_len=128",
        "actor_rollout_ref.rollout.max_num_seqs=8",
        "actor_rollout_ref.rollout.max_num_batched_tokens=512",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        "trainer.logger=[console]",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=1",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={Path(work_dir) / 'checkpoints'}",
    ]


def override_key(override: str) -> str:
    """The config key an override sets: "+a.b=1" -> "a.b", "~a.b" -> "a.b"."""
    return override.split("=", 1)[0].lstrip("~+")


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Later groups replace earlier overrides of the same key (Hydra rejects "+key" twice)."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            key = override_key(override)
            merged.pop(key, None)  # re-insert: keeps the order in which the winners were given
            merged[key] = override
    return list(merged.values())


def find_libiomp5() -> Path | None:
    """The Intel OpenMP runtime of this Python environment (pip's intel-openmp puts it in lib/)."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        candidate = Path(prefix) / "lib" / "libiomp5.so"
        if candidate.exists():
            return candidate
    return None


def cpu_env(base: dict[str, str], tmp_dir: str | Path, kv_cache_gib: int = 1) -> dict[str, str]:
    """`base` plus the environment of a CPU run (see the module docstring)."""
    env = dict(base)
    env.update(
        {
            "RESPEC_VERL_CPU": "1",
            "VERL_PLATFORM": "cpu",
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "TMPDIR": str(tmp_dir),
            # lets the one-process executor of `cpu_overrides` through (vLLM-CPU turns "uni" back into
            # "mp" otherwise); verl's server still runs the engine core in a process of its own
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "PYTHONUNBUFFERED": "1",
            # Ray starts a pool of idle Python workers (one per logical CPU) when the driver connects;
            # on a small host their imports compete with the run's own start-up, and verl does not use them
            PRESTART_WORKER_FIRST_DRIVER_ENV: "0",
        }
    )
    return with_libiomp5(env)


def with_libiomp5(env: dict[str, str]) -> dict[str, str]:
    """`env` with this environment's Intel OpenMP runtime first in `LD_PRELOAD` (when there is one)."""
    libiomp5 = find_libiomp5()
    if libiomp5 is not None:
        preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
        if str(libiomp5) not in preload:
            env["LD_PRELOAD"] = ":".join([str(libiomp5), *preload])
    return env


def trainer_command(overrides: Sequence[str], config_path: str | Path | None = None, config_name: str | None = None) -> list[str]:
    """`python -m verl.trainer.main_ppo [--config-path P --config-name N] overrides...`."""
    command = [sys.executable, "-m", "verl.trainer.main_ppo"]
    if config_path is not None:
        command += ["--config-path", str(Path(config_path).resolve())]
    if config_name is not None:
        command += ["--config-name", config_name]
    return command + list(overrides)


@dataclass
class LaunchResult:
    run: RunResult
    command: list[str]
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)


def launch(
    model: str | Path,
    work_dir: str | Path,
    data_dir: str | Path | None = None,
    reward_path: str | Path | None = None,
    steps: int = 2,
    dtype: str = "auto",
    config_path: str | Path | None = None,
    config_name: str | None = None,
    overrides: Sequence[str] = (),
    timeout_s: float = 600.0,
    kv_cache_gib: int = 1,
    check: bool = True,
    echo: bool = False,
) -> LaunchResult:
    """Run a short GRPO job on the CPU; the log is `<work_dir>/main_ppo.log`.

    `model` is a Hugging Face folder, or "tiny" (written to `<work_dir>/tiny` by `save_tiny_llama`)
    or "smollm2". Without `data_dir` the arithmetic task is written to `<work_dir>/data`. `dtype`
    is the rollout's and the trainer's (`cpu_dtype`: "auto" follows the CPU's instructions). Raises
    `RunFailed` (with the log's tail) on timeout, a fatal line or a non-zero exit when `check`.
    """
    from respec_verl.data.verl_task import reward_path as task_reward_path
    from respec_verl.data.verl_task import write_verl_task

    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(model, work_dir)
    if data_dir is None:
        data_dir = work_dir / "data"
        write_verl_task(data_dir, task="add")  # the short-run smoke test: 32-token answers
    reward_path = reward_path or task_reward_path()
    all_overrides = merge_overrides(
        small_run_overrides(model, data_dir, reward_path, work_dir, steps), cpu_overrides(cpu_dtype(dtype)), overrides
    )
    command = trainer_command(all_overrides, config_path, config_name)
    tmp_dir = Path(tempfile.mkdtemp(prefix="rv-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        run = supervise(
            command,
            work_dir / "main_ppo.log",
            env=with_install(cpu_env(dict(os.environ), tmp_dir, kv_cache_gib)),
            timeout_s=timeout_s,
            check=check,
            echo=echo,
            cwd=work_dir,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    with open(run.log_path, encoding="utf-8", errors="replace") as log:
        metrics = parse_step_metrics(log)
    return LaunchResult(run=run, command=command, metrics=metrics)


def resolve_model(model: str | Path, work_dir: Path) -> Path:
    if str(model) == "tiny":
        from respec_verl.models.tiny import save_tiny_llama

        return save_tiny_llama(work_dir / "tiny")
    if str(model) == "smollm2":
        from respec_verl.models.smollm2 import smollm2_path

        return smollm2_path()
    path = Path(model).resolve()
    if not (path / "config.json").exists():
        raise ValueError(f"--model {model!r} is not valid; allowed: tiny, smollm2, or a Hugging Face model folder")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a Hugging Face model folder")
    parser.add_argument("--work", required=True, help="folder for the log, data, tiny model and checkpoints")
    parser.add_argument("--data", default=None, help="folder with train.parquet and val.parquet (default: written)")
    parser.add_argument("--reward", default=None, help="reward file with compute_score (default: the arithmetic task)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="auto: bfloat16 on a CPU with bf16 "
                        "instructions (avx512_bf16, amx_bf16), else float32")
    parser.add_argument("--config-path", default=None, help="Hydra config folder, e.g. recipes/respec_grpo/config")
    parser.add_argument("--config-name", default=None, help="Hydra config name, e.g. respec_grpo")
    parser.add_argument("--timeout", type=float, default=600.0, help="outer timeout in seconds")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="do not echo the log")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, applied last")
    args = parser.parse_args(argv)
    result = launch(
        args.model, args.work, args.data, args.reward, args.steps, args.dtype, args.config_path, args.config_name,
        args.overrides, args.timeout, args.kv_cache_gib, check=True, echo=not args.quiet,
    )
    run = result.run
    summary = {
        "returncode": run.returncode,
        "wall_s": round(run.wall_s, 1),
        "peak_run_rss_gib": round(run.peak_run_rss_gib, 2),
        "peak_host_used_gib": round(run.peak_host_used_gib, 2),
        "log": str(run.log_path),
        "steps": {step: {k: v for k, v in m.items() if k.startswith(("training/rollout_probs", "timing_s/step"))}
                  for step, m in result.metrics.items()},
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
