"""The actor's soft labels, taken from a forward pass the RL loop runs anyway.

Before the actor update, verl recomputes the rollouts' log-probs with the actor that generated
them (the "old log-prob" pass): one forward over the whole batch, whose logits are exactly the
labels the drafter learns from in async mode. `LabelCapture` hooks that forward and keeps the top-k
labels of every row, so the learner does not run a second forward of the actor over the batch (a
cost of the actor's size, not the drafter's).

Rows are split from the call's own inputs: a padded batch (`attention_mask` [B, L], the valid
tokens of each row) or a packed one (`input_ids` [1, N] whose `position_ids` restart at 0 for each
sequence). `CapturedLabels.get(prompt, response)` finds a rollout's labels by its tokens, so the
order of the two passes does not matter; a rollout that is not found is labelled the usual way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from respec_verl.drafter.kd_loss import TeacherTargets

LabelFn = Callable[[torch.Tensor], TeacherTargets]  # logits [B, T, V] -> labels [B, T, K]


class CapturedLabels:
    """Labels per captured sequence, looked up by a rollout's prompt and response tokens."""

    def __init__(self) -> None:
        self._by_prompt_start: dict[tuple[int, ...], list[tuple[list[int], TeacherTargets]]] = {}
        self.sequences = 0

    def add(self, tokens: list[int], labels: TeacherTargets) -> None:
        """`labels[t]` are the actor's labels for the token after `tokens[t]`."""
        self._by_prompt_start.setdefault(tuple(tokens[:_KEY]), []).append((tokens, labels))
        self.sequences += 1

    def get(self, prompt: Sequence[int], response: Sequence[int]) -> TeacherTargets | None:
        """The labels at the positions that predict `response`, or None if no captured row holds it."""
        p, r = list(prompt), list(response)
        if not p or not r:
            return None
        for tokens, labels in self._by_prompt_start.get(tuple((p + r)[:_KEY]), ()):
            if len(tokens) >= len(p) + len(r) and tokens[: len(p) + len(r)] == p + r:
                at = slice(len(p) - 1, len(p) - 1 + len(r))
                return TeacherTargets(labels.logprobs[at], None if labels.sparse_ids is None else labels.sparse_ids[at])
        return None


_KEY = 16  # tokens of a sequence's start that index it (prompts differ early; the full check follows)


class LabelCapture:
    """A forward hook that turns each call's logits into labels, row by row (see the module doc)."""

    def __init__(self, label_fn: LabelFn) -> None:
        self.label_fn = label_fn
        self.labels = CapturedLabels()
        self.skipped_calls = 0  # calls whose inputs could not be split into rows
        self.seconds = 0.0  # spent labelling, inside the hooked forward: the capture's cost to its pass

    @contextmanager
    def hooked(self, module: torch.nn.Module) -> Iterator[CapturedLabels]:
        handle = module.register_forward_hook(self._hook, with_kwargs=True)
        try:
            yield self.labels
        finally:
            handle.remove()

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        logits = getattr(output, "logits", None)
        if not isinstance(ids, torch.Tensor) or not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            self.skipped_calls += 1
            return
        rows = _rows(ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
        if rows is None or logits.shape[:2] != ids.shape:
            self.skipped_calls += 1
            return
        start = time.perf_counter()
        with torch.no_grad():
            for row, positions in rows:
                labels = self.label_fn(logits[row : row + 1, positions].detach())
                tokens = [int(t) for t in ids[row, positions].tolist()]
                sparse = None if labels.sparse_ids is None else labels.sparse_ids[0].cpu()
                self.labels.add(tokens, TeacherTargets(labels.logprobs[0].cpu(), sparse))
        self.seconds += time.perf_counter() - start


def _rows(ids: torch.Tensor, mask: Any, position_ids: Any) -> list[tuple[int, torch.Tensor]] | None:
    """(row, positions) of each sequence in a padded [B, L] or packed [1, N] batch; None if unknown."""
    if ids.dim() != 2:
        return None
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        rows = [(b, mask[b].nonzero().flatten()) for b in range(ids.shape[0])]
        ok = all(len(p) > 0 and int(p[-1] - p[0]) + 1 == len(p) for _, p in rows)  # one contiguous run each
        return [(b, slice(int(p[0]), int(p[-1]) + 1)) for b, p in rows] if ok else None
    if mask is None and ids.shape[0] == 1 and isinstance(position_ids, torch.Tensor):
        pos = position_ids.reshape(-1, ids.shape[1])[0]  # mrope ids [3, 1, N]: the first is the text position
        starts = (pos == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            return None
        ends = [*starts[1:], ids.shape[1]]
        return [(0, slice(s, e)) for s, e in zip(starts, ends)]
    if mask is None and ids.shape[0] >= 1:  # no mask: every token of every row is real
        return [(b, slice(0, ids.shape[1])) for b in range(ids.shape[0])]
    return None
