"""What the benchmark scripts share: their parser, the models they load, the warm-up's answers, timing,
and writing a result (JSON that names the machine it ran on, a PNG beside it).

Each script keeps its own measurement; only what several of them repeat is here. Heavy imports (torch,
transformers, matplotlib) are made where they are needed, so that `--help` and the scripts that read
JSON only stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from respec_verl.cpu_features import cpu_has_fast_bf16
from respec_verl.storage.json_file import write_json_atomic

if TYPE_CHECKING:
    import torch

    from respec_verl.speculation import GenerationOutput, SamplingParams

T = TypeVar("T")

# SmolLM2-135M-Instruct's shape (its config.json), for random-weight models of the actor's size
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3)
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser with its module docstring as the help, commands and lists kept as written; run as
    `python -m bench.<name>`, its usage line says so."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None and spec.name.startswith("bench.") else None
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def int_list(text: str) -> list[int]:
    """argparse type of the list flags (`--batch-sizes 1,2,4`, `--ks`): comma-separated integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; allowed: comma-separated integers, e.g. 1,2,4")
    return values


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--dtype` value: fp32/float32 or bf16/bfloat16."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])


def load_actor(folder: str | Path, dtype: str = "float32", **kwargs: Any) -> torch.nn.Module:
    """A Hugging Face causal LM from a folder (the actor, or a checkpoint of it), in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype), **kwargs).eval()


def random_llama(device: str | torch.device = "cpu", dtype: str = "float32", **config: Any) -> torch.nn.Module:
    """A Llama causal LM of `config`'s shape with random weights, built on `device`: step costs do not
    depend on the weights, and nothing has to be carried to a host that cannot reach the model's package."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config))
    return model.to(torch_dtype(dtype)).eval()


def greedy(tokenizer, max_new_tokens: int) -> SamplingParams:
    """Greedy decoding up to `max_new_tokens`, stopping at the tokenizer's end of sequence."""
    from respec_verl.speculation import SamplingParams

    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,))


def greedy_answers(target, tokenizer, questions: Sequence[str], max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """(chat prompts, the target's greedy answers) of `questions`: what a self-draft is warmed up on."""
    from respec_verl.drafter.warmup import actor_answers
    from respec_verl.models.smollm2 import encode_chat

    prompts = [encode_chat(tokenizer, q) for q in questions]
    return prompts, actor_answers(target, prompts, greedy(tokenizer, max_new_tokens))


def fixed_k_rollouts(actor, drafter, prompts: list[list[int]], params: SamplingParams, k: int) -> GenerationOutput:
    """The core engine's rollouts at draft length k, row i seeded with i, so drafters compare on the same draws."""
    from respec_verl.speculation import FixedK, SpeculativeEngine

    return SpeculativeEngine(actor, drafter, FixedK(k)).generate(prompts, params, seeds=list(range(len(prompts))))


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def in_process_vllm(kv_cache_gib: int) -> None:
    """vLLM's engine core in this process (respec's CPU patches apply there), with a KV cache of `kv_cache_gib`
    on a CPU; before vLLM is imported. A value the user set is kept."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))


def cpu_model() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`); "unknown" elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a result ran on (docs/results.md names it beside each figure): the CPU, its cores and native
    bf16, torch's threads where the script used torch, and the GPU's name for a CUDA device."""
    out: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_bf16": cpu_has_fast_bf16()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        if str(device).startswith("cuda"):
            out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_result(out: str | Path, result: dict, plot: Callable[[dict, Path], Any] | None = None,
                device: str | torch.device = "cpu") -> Path:
    """Write `result` with a `machine` entry as JSON at `out`, and `plot(result, PNG path)` beside it; say so."""
    out = Path(out)
    write_json_atomic(out, {**result, "machine": machine(device)})
    if plot is None:
        print(f"wrote {out}")
    else:
        plot(result, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return out
