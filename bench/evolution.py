"""Drafter evolution during a real (small) GRPO run: frozen vs uniform KD vs reward-weighted KD vs oracle.

A GRPO loop around verl's own `core_algos` (GRPO advantages, the vanilla clipped policy loss) and
our engine: SmolLM2-135M-Instruct learns small additions; rollouts use speculative decoding with
the reward-weighted evolving drafter (updated asynchronously while the actor updates). A second,
uniform-KD learner sees the same rollouts. The actor is snapshotted every few steps, and each
drafter policy's acceptance length is then measured on each snapshot:

- frozen: the warm-up drafter, never updated;
- uniform: evolved with uniform KD weights (the ablation);
- reward: evolved with the reward-weighted KD loss (ours);
- oracle: a fresh self-draft distilled on the snapshot actor's own answers.

Finally a few extra steps measure the step time with the drafter update async, sync and off.

    python bench/evolution.py --out bench/results/evolution.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos

from respec_verl.data.arithmetic import make_problems, score
from respec_verl.drafter import Drafter, DrafterLearner, LearnerConfig
from respec_verl.drafter.distill import make_kd_batch
from respec_verl.drafter.warmup import actor_answers, warm_up_self_draft
from respec_verl.json_file import write_json_atomic
from respec_verl.models.smollm2 import encode_chat, load_smollm2
from respec_verl.spec import FixedK, SamplingParams, SpeculativeEngine

POLICY_LOSS_CONFIG = OmegaConf.create(
    {"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None, "clip_ratio_c": 3.0, "global_batch_info": {}}
)


def response_logits(actor, prompts, responses, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Actor logits at the positions predicting each response token: [N, T_resp, V] and the mask [N, T_resp]."""
    batch = make_kd_batch(prompts, responses)
    with torch.set_grad_enabled(grad):
        logits = actor(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    width = max(len(r) for r in responses)
    out = logits.new_zeros(len(responses), width, logits.shape[-1])
    mask = torch.zeros(len(responses), width, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        out[i, : len(r)] = logits[i, len(p) - 1 : len(p) - 1 + len(r)]
        mask[i, : len(r)] = True
    return out, mask


class GRPOLoop:
    """One GRPO step at a time: speculative rollouts, verl's GRPO advantage and policy loss, drafter KD."""

    def __init__(self, actor, tokenizer, learner: DrafterLearner, shadow: DrafterLearner, args):
        self.actor, self.tokenizer, self.learner, self.shadow, self.args = actor, tokenizer, learner, shadow, args
        self.optimizer = torch.optim.AdamW(actor.parameters(), lr=args.lr, weight_decay=0.0)
        self.params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, stop_token_ids=(tokenizer.eos_token_id,))

    def step(self, step: int, drafter_mode: str = "async") -> dict:
        args = self.args
        start = time.perf_counter()
        problems = make_problems(args.prompts_per_step, seed=1000 + step, max_operand=args.max_operand)
        prompts = [encode_chat(self.tokenizer, p.question) for p in problems for _ in range(args.group)]
        drafter = self.learner.latest()
        engine = SpeculativeEngine(self.actor, drafter, FixedK(args.k))
        out = engine.generate(prompts, self.params, seeds=[step * 10_000 + i for i in range(len(prompts))])
        rollout_s = time.perf_counter() - start
        responses = out.token_ids
        rewards = torch.tensor(
            [score(problems[i // args.group], self.tokenizer.decode(responses[i])) for i in range(len(responses))]
        )

        old_logits, mask = response_logits(self.actor, prompts, responses, grad=False)
        if drafter_mode != "off":  # the drafter learns from the actor that produced these rollouts
            self.learner.add_rollouts(prompts, responses, rewards, teacher_logits=list(old_logits))
            self.learner.update(step)  # async: overlaps with the actor update below
            if drafter_mode == "sync":
                self.learner.wait()
        old_log_prob = torch.log_softmax(old_logits, -1).gather(-1, self._ids(responses, mask)[..., None]).squeeze(-1)
        token_rewards = torch.zeros_like(old_log_prob)
        lengths = mask.sum(1)
        token_rewards[torch.arange(len(responses)), lengths - 1] = rewards
        index = np.array([i // args.group for i in range(len(responses))])
        advantages, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask.float(), index)

        self.actor.train()
        logits, _ = response_logits(self.actor, prompts, responses, grad=True)
        log_prob = torch.log_softmax(logits.float(), -1).gather(-1, self._ids(responses, mask)[..., None]).squeeze(-1)
        loss, _ = core_algos.compute_policy_loss_vanilla(
            old_log_prob, log_prob, advantages, mask.float(), loss_agg_mode="token-mean", config=POLICY_LOSS_CONFIG
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), 1.0)
        self.optimizer.step()
        self.actor.eval()
        if drafter_mode == "async":
            self.learner.wait()  # the next rollout may use this version (one behind at most)
        step_s = time.perf_counter() - start

        self.shadow.add_rollouts(prompts, responses, rewards, teacher_logits=list(old_logits))
        self.shadow.update(step)  # the uniform-KD ablation: off the timed path
        return {
            "step": step, "reward": float(rewards.mean()), "accept_length": out.stats.mean_accept_length,
            "rollout_s": rollout_s, "step_s": step_s, "drafter_version_used": drafter.version,
            "drafter_version": self.learner.version, "kd_loss": self.learner.metrics.get("respec/drafter/loss"),
        }

    @staticmethod
    def _ids(responses, mask) -> torch.Tensor:
        ids = torch.zeros(mask.shape, dtype=torch.long)
        for i, r in enumerate(responses):
            ids[i, : len(r)] = torch.tensor(r)
        return ids


def accept_length(actor, drafter: Drafter, prompts, params, k: int) -> float:
    out = SpeculativeEngine(actor, drafter, FixedK(k)).generate(prompts, params, seeds=list(range(len(prompts))))
    return out.stats.mean_accept_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--max-operand", type=int, default=9)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--snapshot-every", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--timing-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/evolution.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    actor, tokenizer = load_smollm2(torch.float32)
    eos = tokenizer.eos_token_id
    sampled = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, stop_token_ids=(eos,))
    warm = [encode_chat(tokenizer, p.question) for p in make_problems(128, seed=args.seed, max_operand=args.max_operand)]

    def fresh_drafter(model) -> Drafter:
        answers = actor_answers(model, warm, sampled)
        return warm_up_self_draft(model, warm, answers, always_tokens=[eos], steps=args.warmup_steps, seed=args.seed)[0]

    frozen = fresh_drafter(actor)
    learner = DrafterLearner(copy.deepcopy(frozen), LearnerConfig(weighting="reward", async_update=True))
    shadow = DrafterLearner(copy.deepcopy(frozen), LearnerConfig(weighting="uniform", async_update=False))
    loop = GRPOLoop(actor, tokenizer, learner, shadow, args)

    history, snapshots = [], {}
    for step in range(args.steps + 1):
        if step % args.snapshot_every == 0 or step == args.steps:
            snapshots[step] = {"actor": copy.deepcopy(actor.state_dict()), "reward": learner.latest(), "uniform": shadow.latest()}
        if step == args.steps:
            break
        history.append(loop.step(step))
        h = history[-1]
        print(f"step {step:3d} reward {h['reward']:.2f} AL {h['accept_length']:.2f} rollout {h['rollout_s']:.1f}s "
              f"step {h['step_s']:.1f}s drafter v{h['drafter_version_used']}->v{h['drafter_version']}", flush=True)

    timing = {}
    for mode in ("off", "sync", "async"):
        steps = [loop.step(args.steps + len(timing) * args.timing_steps + i, mode)["step_s"] for i in range(args.timing_steps)]
        timing[mode] = float(np.mean(steps))
    print("step time (s): " + ", ".join(f"{m} {t:.1f}" for m, t in timing.items()))

    eval_prompts = [encode_chat(tokenizer, p.question) for p in make_problems(args.eval_prompts, seed=999, max_operand=args.max_operand)]
    evaluation = []
    snapshot_actor = copy.deepcopy(actor)
    for step, snap in snapshots.items():
        snapshot_actor.load_state_dict(snap["actor"])
        row = {"step": step}
        for name, drafter in (("frozen", frozen), ("uniform", snap["uniform"]), ("reward", snap["reward"]),
                              ("oracle", fresh_drafter(snapshot_actor))):
            row[name] = accept_length(snapshot_actor, drafter, eval_prompts, sampled, args.k)
        evaluation.append(row)
        print(f"snapshot {step:3d}: " + ", ".join(f"{n} {row[n]:.2f}" for n in ("frozen", "uniform", "reward", "oracle")), flush=True)

    last = evaluation[-1]
    result = {"args": vars(args), "history": history, "evaluation": evaluation, "step_time_s": timing,
              "reward_over_frozen": last["reward"] / last["frozen"], "reward_over_oracle": last["reward"] / last["oracle"],
              "async_overhead": timing["async"] / timing["off"] - 1, "sync_overhead": timing["sync"] / timing["off"] - 1}
    out = Path(args.out)
    write_json_atomic(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"after {args.steps} steps: reward-weighted / frozen = {result['reward_over_frozen']:.2f}, "
          f"/ oracle = {result['reward_over_oracle']:.2f}; async update adds {100 * result['async_overhead']:.0f}% "
          f"(sync {100 * result['sync_overhead']:.0f}%) to the step time")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = [r["step"] for r in result["evaluation"]]
    for name in ("frozen", "uniform", "reward", "oracle"):
        left.plot(steps, [r[name] for r in result["evaluation"]], marker="o", label=name)
    left.set(xlabel="RL step (actor snapshot)", ylabel="acceptance length", title="Drafter policies on each actor snapshot")
    left.legend()
    hist = result["history"]
    mid.plot([h["step"] for h in hist], [h["reward"] for h in hist], label="mean reward")
    mid.plot([h["step"] for h in hist], [h["accept_length"] for h in hist], label="rollout acceptance length")
    mid.set(xlabel="RL step", title="Training run (reward-weighted drafter in the loop)")
    mid.legend()
    right.bar(list(result["step_time_s"]), list(result["step_time_s"].values()))
    right.set(ylabel="seconds per RL step", title="Drafter update: off / sync / async")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
