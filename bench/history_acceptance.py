"""How many tokens per verification step the history drafter would give on a task's sampled rollouts.

Reads the answers that `bench.task_stats` sampled from the base actor (groups of answers to each
prompt at the rollout temperature) and replays each answer through the history drafter
(`respec_verl.drafter.history`): at each position the drafter proposes up to k tokens from its
index, the drafts that match the sampled answer are accepted, and the sampled token after them is
the one the verifier emits. For a deterministic draft d, verification accepts with probability
p(d), which is exactly the chance that the sampled answer has d there, so this replay estimates
the engine's tokens per step without bias and without running a model. (Answers are re-tokenised
from their text, which can differ from the sampled tokens at a few places.)

Histories compared, from less to more of what an RL rollout has:
- `own`: the answer's own prompt and its prefix only;
- `siblings`: plus the other answers of its group, as far as they have got (generated side by
  side, they advance in lockstep) — GRPO's group;
- `siblings_done`: plus the other answers of the group complete (siblings that finished earlier);
- `epoch2`: the group's first half as an earlier epoch's rollouts of the same prompt (complete),
  replayed on the second half with its siblings in lockstep; the policy is the same, as in an
  epoch where GRPO has not moved it much;
- `epoch2_global`: `epoch2` plus every answer to the earlier prompts (a global window).

Reports tokens per step (emitted tokens over verification steps; a step with no draft is a plain
step of one token) and the share of steps with a draft, per history and per k. JSON and a PNG.

    python -m bench.history_acceptance --stats bench/results/task_stats_long.json \
        --out bench/results/history_acceptance_long.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import int_list, pyplot, save_result, script_parser
from respec_verl.drafter.history import HistoryConfig, SuffixIndex

HISTORIES = ("own", "siblings", "siblings_done", "epoch2", "epoch2_global")


def replay(answers: list[list[int]], prompt: list[int], index: SuffixIndex, k: int) -> tuple[int, int, int, int]:
    """Replay answers side by side (lockstep by verification step); returns (tokens, steps, drafted
    steps, drafted tokens)."""
    seq_ids = [index.add(prompt) for _ in answers]
    contexts = [list(prompt) for _ in answers]
    positions = [0] * len(answers)
    tokens = steps = drafted = slots = 0
    while any(pos < len(a) for pos, a in zip(positions, answers)):
        for row, answer in enumerate(answers):
            pos = positions[row]
            if pos >= len(answer):
                continue
            draft = index.draft(contexts[row], min(k, len(answer) - pos - 1)) if pos + 1 < len(answer) else []
            accepted = 0
            while accepted < len(draft) and draft[accepted] == answer[pos + accepted]:
                accepted += 1
            emitted = answer[pos:pos + accepted + 1]
            contexts[row].extend(emitted)
            index.extend(seq_ids[row], emitted)
            positions[row] += len(emitted)
            tokens += len(emitted)
            steps += 1
            drafted += bool(draft)
            slots += len(draft)
    return tokens, steps, drafted, slots


def measure(groups: list[tuple[list[int], list[list[int]]]], history: str, k: int, config: HistoryConfig) -> dict:
    tokens = steps = drafted = slots = 0
    global_index = SuffixIndex(config)
    for prompt, answers in groups:
        index = global_index if history == "epoch2_global" else SuffixIndex(config)
        half = len(answers) // 2
        if history.startswith("epoch2"):
            for earlier in answers[:half]:
                index.add(prompt + earlier)
            runs = [answers[half:]]
        elif history == "siblings":
            runs = [answers]
        elif history == "siblings_done":
            runs = []
            for row, answer in enumerate(answers):
                other = SuffixIndex(config)
                for sibling in answers[:row] + answers[row + 1:]:
                    other.add(prompt + sibling)
                t, s, d, n = replay([answer], prompt, other, k)
                tokens, steps, drafted, slots = tokens + t, steps + s, drafted + d, slots + n
        else:  # own
            runs = [[a] for a in answers]
        for run in runs:
            t, s, d, n = replay(run, prompt, index, k)
            tokens, steps, drafted, slots = tokens + t, steps + s, drafted + d, slots + n
    return {"tokens_per_step": tokens / steps, "drafted_share": drafted / steps,
            "drafted_tokens_per_step": slots / steps, "tokens": tokens, "steps": steps}


def load_groups(stats_path: Path, actor: str | None) -> list[tuple[list[int], list[list[int]]]]:
    from transformers import AutoTokenizer

    from respec_verl.models.smollm2 import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(actor or smollm2_path())
    doc = json.loads(stats_path.read_text(encoding="utf-8"))
    groups = []
    for item in doc["per_prompt"]:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": item["question"]}],
                                             add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(chat, add_special_tokens=False)
        answers = [tokenizer.encode(a["text"], add_special_tokens=False) for a in item["answers"]]
        groups.append((prompt, answers))
    return groups


def plot(result: dict, out: Path) -> None:
    from respec_verl.demo.report import save_figure

    fig, ax = pyplot().subplots(figsize=(7, 4))
    for history in HISTORIES:
        rows = result["results"][history]
        ks = sorted(int(k) for k in rows)
        ax.plot(ks, [rows[str(k)]["tokens_per_step"] for k in ks], marker="o", label=history)
    ax.axhline(2.5, color="grey", linestyle=":", label="bar (epoch 2): 2.5")
    ax.set_xlabel("k (most drafted tokens per step)")
    ax.set_ylabel("tokens per verification step")
    ax.set_title(f"History drafting, replayed on {result['args']['stats']}", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--stats", default="bench/results/task_stats_long.json", help="bench.task_stats's JSON")
    parser.add_argument("--actor", default=None, help="tokenizer folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--ks", type=int_list, default="1,2,4,8,16", help="comma-separated k")
    parser.add_argument("--min-match", type=int, default=HistoryConfig.min_match)
    parser.add_argument("--min-agreement", type=float, default=HistoryConfig.min_agreement,
                        help="share of the occurrences that must agree for a draft to go on")
    parser.add_argument("--max-match", type=int, default=HistoryConfig.max_match)
    parser.add_argument("--out", default="bench/results/history_acceptance_long.json")
    args = parser.parse_args(argv)
    config = HistoryConfig(min_match=args.min_match, max_match=args.max_match, min_agreement=args.min_agreement)
    groups = load_groups(Path(args.stats), args.actor)
    ks = args.ks
    results = {h: {str(k): measure(groups, h, k, config) for k in ks} for h in HISTORIES}
    result = {"args": vars(args), "answers": sum(len(a) for _, a in groups), "prompts": len(groups), "results": results}
    print(f"{'history':<15}" + "".join(f"k={k:<7}" for k in ks))
    for h in HISTORIES:
        print(f"{h:<15}" + "".join(f"{results[h][str(k)]['tokens_per_step']:<9.2f}" for k in ks))
    save_result(args.out, result, plot)


if __name__ == "__main__":
    main(sys.argv[1:])
