"""How stale can a frozen drafter get when the actor's answers change form? An upper bound on CPU.

`bench.evolution` found that on the addition task GRPO makes the actor easier to draft, and the
frozen drafter goes stale only on a degenerating actor. This bench measures the most a healthy
change of form can do instead. The task's `sentence` form asks for one fixed reply, "The sum of a
and b is c.", which SmolLM2-135M-Instruct gives now and then and otherwise talks around. Here the
actor is taught that reply outright by supervised fine-tuning, to where a healthy GRPO run on
this task would converge: every answer in the form. At each fine-tuning checkpoint the bench
measures, on held-out problems:

- form: the share of sampled answers that are exactly the required reply (`score_sentence`);
- frozen: the acceptance length of the self-draft distilled on the base actor (the demo's warm-up
  recipe: 2 layers, 2048-token vocabulary, 120 steps, the base actor's answers at the rollout
  temperature);
- oracle: the same recipe applied afresh to the checkpoint's actor, which is what an evolving
  drafter can at best keep up with.

oracle / frozen is then the most any drafter evolution can gain on this change of form, with this
drafter. At step 0 the oracle is the frozen drafter (the same recipe on the same actor).

    python -m bench.form_shift --out bench/results/form_shift.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.common import fixed_k_rollouts, load_actor, save_result, script_parser
from respec_verl.data.arithmetic import make_problems, score, sentence_reply
from respec_verl.data.tasks import TASKS
from respec_verl.demo.run import TASK_SETTINGS, DemoJob
from respec_verl.speculation import SamplingParams


def reply_ids(tokenizer, prompt: Sequence[int], question: str, reply: str, stops: Sequence[int]) -> list[int]:
    """The assistant turn's tokens as the chat template writes them, up to its end-of-turn token.

    Taken from the templated two-turn chat, so that the fine-tuned actor ends its reply the way the
    base model does (the token a rollout stops on), not with a token the template never emits.
    """
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != list(prompt):
        raise ValueError("the chat template's two-turn text does not start with its generation prompt")
    answer = full[len(prompt):]
    ends = [i for i, token in enumerate(answer) if token in stops]
    if not ends:
        raise ValueError(f"the templated reply {reply!r} has no stop token {list(stops)}")
    return answer[: ends[0] + 1]


def fine_tune(actor: torch.nn.Module, examples: list[tuple[list[int], list[int]]], steps: int, lr: float,
              batch_size: int, optimizer: torch.optim.Optimizer | None = None, start: int = 0):
    """`steps` AdamW steps of cross-entropy on the replies only (prompt tokens masked); returns (optimizer, losses)."""
    optimizer = optimizer or torch.optim.AdamW(actor.parameters(), lr=lr)
    actor.train()
    losses = []
    for step in range(start, start + steps):
        batch = [examples[(step * batch_size + i) % len(examples)] for i in range(batch_size)]
        loss = torch.zeros(())
        for prompt, reply in batch:
            ids = torch.tensor([prompt + reply])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            loss = loss + actor(input_ids=ids, labels=labels).loss / len(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    actor.eval()
    return optimizer, losses


def measure(actor, drafter, prompts, problems, params: SamplingParams, k: int, tokenizer) -> tuple[float, float]:
    """(acceptance length at k, share of answers in the required form) of sampled rollouts."""
    out = fixed_k_rollouts(actor, drafter, prompts, params, k)
    texts = tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
    form = sum(score(p, t) for p, t in zip(problems, texts)) / len(problems)
    return out.stats.mean_accept_length, form


def position_acceptance(actor, drafter, examples: list[tuple[list[int], list[int]]], temperature: float) -> list[float]:
    """Mean probability that a one-token draft is accepted at each reply position, on the teacher-forced replies.

    sum_v min(p(v), q(v)) is the acceptance probability of rejection sampling at a position; all
    `examples` must have replies of one length, so that position i is the same word in each.
    """
    total = None
    with torch.no_grad():
        for prompt, reply in examples:
            ids = torch.tensor([prompt + reply])
            span = slice(len(prompt) - 1, ids.shape[1] - 1)  # the logits that predict the reply's tokens
            p = torch.softmax(actor(ids).logits[0, span] / temperature, -1)
            q_draft = torch.softmax(drafter.model(ids).logits[0, span] / temperature, -1)
            accept = torch.minimum(p, drafter.to_target_probs(q_draft, p.shape[-1])).sum(-1)
            total = accept if total is None else total + accept
    return [float(x) / len(examples) for x in total]


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",")})
    except ValueError:
        steps = []
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"--sft-steps = {text!r} is not valid; allowed: integers >= 0, e.g. 0,10,30")
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--sft-steps", type=parse_steps, default=[0, 5, 10, 30],
                        help="fine-tuning steps after which to measure (cumulative)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="draft length of the acceptance measurement")
    parser.add_argument("--temperature", type=float, default=DemoJob.temperature, help="the demo's rollout temperature")
    parser.add_argument("--response-length", type=int, default=TASKS["add"].response_length)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="respec_form_shift", help="folder for the actor checkpoints and drafters")
    parser.add_argument("--out", default="bench/results/form_shift.json")
    args = parser.parse_args(argv)
    if args.lr <= 0:
        parser.error(f"--lr = {args.lr} is not valid; allowed: a number > 0")
    from transformers import AutoTokenizer

    from respec_verl.drafter.drafter_dir import load_drafter_dir
    from respec_verl.drafter.warm_folder import stop_token_ids, write_warm_self_draft
    from respec_verl.models.smollm2 import encode_chat, smollm2_path

    work = Path(args.work).resolve()
    base = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    actor = load_actor(base)
    stops = stop_token_ids(tokenizer, actor)
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.response_length, stop_token_ids=stops)
    warm_questions = [p.question for p in make_problems(TASK_SETTINGS["add"].warmup_questions, args.seed + 10_000, form="sentence")]
    warm = dict(questions=warm_questions, steps=TASK_SETTINGS["add"].warmup_steps, max_new_tokens=args.response_length,
                temperature=args.temperature, draft_vocab_size=DemoJob.draft_vocab_size, seed=args.seed)
    print("distilling the frozen drafter on the base actor's answers", flush=True)
    frozen_dir, _ = write_warm_self_draft(base, work / "frozen", **warm)
    frozen = load_drafter_dir(frozen_dir)
    train = []
    for problem in make_problems(64, args.seed + 30_000, form="sentence"):
        prompt = encode_chat(tokenizer, problem.question)
        reply = sentence_reply(problem.a, problem.b)
        train.append((prompt, reply_ids(tokenizer, prompt, problem.question, reply, stops)))
    problems = make_problems(args.eval_prompts, args.seed + 20_000, form="sentence")
    prompts = [encode_chat(tokenizer, p.question) for p in problems]

    rows, optimizer, done, losses = [], None, 0, []
    torch.manual_seed(args.seed)
    for target in args.sft_steps:
        optimizer, new = fine_tune(actor, train, target - done, args.lr, args.batch_size, optimizer, start=done)
        losses += new
        done = target
        frozen_len, form = measure(actor, frozen, prompts, problems, params, args.k, tokenizer)
        if target == 0:
            oracle_len = frozen_len
        else:
            actor_dir = work / f"actor_step_{target}"
            actor.save_pretrained(actor_dir)
            tokenizer.save_pretrained(actor_dir)
            oracle_dir, _ = write_warm_self_draft(actor_dir, work / f"oracle_step_{target}", **warm)
            oracle_len, _ = measure(actor, load_drafter_dir(oracle_dir), prompts, problems, params, args.k, tokenizer)
        row = {"sft_steps": target, "sft_loss": losses[-1] if losses else None, "form_rate": form,
               "frozen": frozen_len, "oracle": oracle_len, "oracle_over_frozen": oracle_len / frozen_len}
        rows.append(row)
        print(f"after {target:3d} fine-tuning steps: form {form:.2f}, frozen {frozen_len:.2f}, "
              f"oracle {oracle_len:.2f}, oracle/frozen {row['oracle_over_frozen']:.2f}", flush=True)
    # where the frozen drafter loses on the last checkpoint's replies: two-digit sums, so every reply has one length
    examples = [(prompt, reply_ids(tokenizer, prompt, p.question, sentence_reply(p.a, p.b), stops))
                for prompt, p in zip(prompts, problems) if p.answer >= 10]
    drafters = {"frozen": frozen, "oracle": frozen if done == 0 else load_drafter_dir(work / f"oracle_step_{done}")}
    positions = {"tokens": tokenizer.convert_ids_to_tokens(examples[0][1])} if examples else {}
    for name, drafter in drafters.items() if examples else ():
        positions[name] = position_acceptance(actor, drafter, examples, args.temperature)
        print(f"{name:>6} acceptance per reply position: " + " ".join(f"{a:.2f}" for a in positions[name]))
    save_result(args.out, {"args": {**vars(args), "work": str(work)}, "rows": rows, "sft_losses": losses,
                           "position_acceptance": positions})


if __name__ == "__main__":
    main(sys.argv[1:])
