"""Offline warm-up distillation of a drafter on the target's own outputs (ReSpec Algorithm 1, init).

A self-draft cut from the target starts with low acceptance (its few layers were never trained to
predict the next token alone); a few hundred optimizer steps on the target's outputs fix that.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from respec_verl.drafter.kd_loss import TeacherTargets, teacher_targets, unrolled_kd_loss
from respec_verl.speculation.drafting import TrainableDrafter


@dataclass
class KDBatch:
    """Right-padded prompt+response ids, and the positions whose next token is a response token."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T]: True where logits[t] predict a response token
    teacher: TeacherTargets | None = None
    weights: torch.Tensor | None = None
    features: torch.Tensor | None = None  # [B, T, F]: the target's hidden states, for a drafter with target_layers


def make_kd_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int = 0) -> KDBatch:
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    response = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, (prompt, resp) in enumerate(zip(prompts, responses)):
        seq = list(prompt) + list(resp)
        ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        response[row, len(prompt) - 1 : len(seq) - 1] = True
    return KDBatch(ids, attention, response)


@torch.no_grad()
def attach_teacher(
    batch: KDBatch, target: torch.nn.Module, drafter: TrainableDrafter, temperature: float, top_k: int
) -> None:
    """Compute the target's soft labels once, in the drafter's vocabulary (on the target's device), and
    the hidden states of the same forward when the drafter reads them (`target_layers`)."""
    device = next(target.parameters()).device
    layers = tuple(getattr(drafter, "target_layers", ()))
    out = target(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        **({"output_hidden_states": True} if layers else {}),
    )
    batch.teacher = teacher_targets(out.logits, temperature, drafter.draft_to_target, top_k)
    if layers:  # hidden_states[i]: the residual stream after i layers, as the engine's features
        batch.features = torch.cat([out.hidden_states[i] for i in layers], dim=-1)


def batch_logits(drafter: TrainableDrafter, batch: KDBatch) -> torch.Tensor:
    """The drafter's logits on a batch, with the target's features when it reads them."""
    if batch.features is None:
        return drafter.draft_logits(batch.input_ids, batch.attention_mask)
    return drafter.draft_logits(batch.input_ids, batch.attention_mask, batch.features)


def kd_step(drafter: TrainableDrafter, batch: KDBatch, optimizer: torch.optim.Optimizer, temperature: float) -> float:
    """One optimizer step of the (reward-weighted) KD loss on one batch; returns the loss."""
    drafter.model.train()
    logits = batch_logits(drafter, batch)
    loss = unrolled_kd_loss(logits, batch.teacher, batch.response_mask, batch.weights, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(drafter.trainable_parameters(), 1.0)
    optimizer.step()
    drafter.model.eval()
    return float(loss.detach())


def distill(
    drafter: TrainableDrafter,
    target: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 3e-4,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Distil `target` into `drafter` on (prompt, response) pairs; returns the loss per step.

    The drafter must be in float32 (cast it down afterwards for inference); its version goes up by one.
    """
    if next(drafter.model.parameters()).dtype != torch.float32:
        raise ValueError("distill trains in float32: build the drafter from a float32 target, cast it afterwards")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    batches = []
    for start in tqdm(range(0, len(order), batch_size), desc="teacher targets", disable=not progress):
        rows = order[start : start + batch_size]
        batch = make_kd_batch([prompts[r] for r in rows], [responses[r] for r in rows])
        attach_teacher(batch, target, drafter, temperature, top_k)
        batches.append(batch)
    optimizer = torch.optim.AdamW(drafter.trainable_parameters(), lr=lr, weight_decay=0.0)
    losses = []
    with frozen_untrained(drafter), tqdm(range(steps), desc="distilling drafter", disable=not progress) as bar:
        for step in bar:
            losses.append(kd_step(drafter, batches[step % len(batches)], optimizer, temperature))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    drafter.version += 1
    return losses


@contextmanager
def frozen_untrained(drafter: TrainableDrafter) -> Iterator[None]:
    """No gradient for the parameters an update does not change (a self-draft's input embedding)
    while training: autograd would build a dense [V, d] one every step that no optimizer reads. The
    flags are restored after, since a self-draft may share its embedding tensor with the actor."""
    trained = {id(p) for p in drafter.trainable_parameters()}
    params = [p for p in drafter.model.parameters() if id(p) not in trained]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
