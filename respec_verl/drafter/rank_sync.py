"""One drafter across data-parallel ranks: averaged gradients and decisions every rank agrees on.

With data parallelism each rank sees its own shard of the rollouts. If each trained its own drafter
copy, the vLLM replicas of one run would serve different drafters. `RankSync` makes the learners
of all ranks one model: every optimizer step averages the gradients over the ranks (so from the
same starting weights every rank takes the same step), and every accept/reject decision of an
update (an empty buffer, a loss or gradient norm over its guard) is taken on the all-reduced value,
so all ranks commit or roll back together and publish the same version. The collectives run on a
process group of their own (the learner may run in a background thread while the actor's FSDP
collectives run on the default group); torch.distributed only, no verl.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class RankSync:
    """Collectives of the drafter learner over `group` (all ranks of the group must call them in the same order)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.world_size = dist.get_world_size(group)
        self._cpu_only = dist.get_backend(group) == "gloo"

    @classmethod
    def for_data_parallel(cls) -> RankSync | None:
        """A gloo group over all ranks when there are several, else None (one rank needs no sync).

        Every rank must call it at the same point (it creates a process group).
        """
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        return cls(dist.new_group(backend="gloo"))

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one all-reduce for all)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self._all_reduce(torch.cat([g.reshape(-1).float() for g in grads]), dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank."""
        return bool(self._all_reduce(torch.tensor([float(flag)]), dist.ReduceOp.MAX).item())

    def min(self, value: float) -> float:
        return float(self._all_reduce(torch.tensor([float(value)], dtype=torch.float64), dist.ReduceOp.MIN).item())

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        device = tensor.device
        work = tensor.cpu() if self._cpu_only else tensor
        dist.all_reduce(work, op=op, group=self.group)
        return work.to(device)
