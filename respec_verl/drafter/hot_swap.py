"""Hot-swapping new drafter weights into a live engine, all or nothing.

The learner publishes a new drafter every RL step; the engine must take it without a half-loaded
state. So a swap is two phases: `prepare_weights` validates and builds every new tensor while the
old drafter keeps serving, and `commit_weights` only copies same-shape, same-dtype tensors in place
(which cannot fail) and then sets the version. The engine runs the commit under its generate lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from respec_verl.speculation.drafting import DrafterSwapError

if TYPE_CHECKING:
    from respec_verl.speculation.drafting import TrainableDrafter

__all__ = ["DrafterSwapError", "DrafterWeights", "commit_weights", "prepare_weights"]


@dataclass(frozen=True)
class DrafterWeights:
    """Validated weights in the engine drafter's dtype and device, ready to copy."""

    tensors: dict[str, torch.Tensor]
    version: int


def prepare_weights(
    drafter: TrainableDrafter, new: TrainableDrafter | Mapping[str, torch.Tensor], version: int | None = None
) -> DrafterWeights:
    """Check `new` against `drafter` (keys, shapes, finiteness, vocabulary) and copy it out.

    `new` is a drafter of the same type (a `Drafter`, an `Eagle3Drafter`; its version is used unless
    `version` is given) or a state dict (then `version` is required). The result owns its tensors,
    so a source still being trained (the learner's copy) cannot change them between validation and
    commit.
    """
    if isinstance(new, type(drafter)):
        _check_same_vocab(drafter, new)
        source, version = new.model.state_dict(), new.version if version is None else version
    elif isinstance(new, Mapping):
        if version is None:
            raise DrafterSwapError("swapping in a state dict needs the drafter version it holds")
        source = new
    else:
        raise DrafterSwapError(f"expected a Drafter or a state dict, got {type(new).__name__}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DrafterSwapError(f"drafter version must be an integer >= 0, got {version!r}")

    current = drafter.model.state_dict()
    missing, unexpected = sorted(set(current) - set(source)), sorted(set(source) - set(current))
    if missing or unexpected:
        raise DrafterSwapError(f"drafter weights do not match: missing keys {missing}, unexpected keys {unexpected}")
    tensors = {}
    for name, old in current.items():
        value = source[name]
        if not isinstance(value, torch.Tensor):
            raise DrafterSwapError(f"{name} is a {type(value).__name__}, not a tensor")
        if value.shape != old.shape:
            raise DrafterSwapError(f"{name} has shape {tuple(value.shape)}, the drafter needs {tuple(old.shape)}")
        if value.is_floating_point() != old.is_floating_point():
            raise DrafterSwapError(f"{name} has dtype {value.dtype}, the drafter needs {old.dtype}")
        # clone: the new tensor must not alias a source that may still change
        tensors[name] = value.detach().to(device=old.device, dtype=old.dtype, copy=True)
        if tensors[name].is_floating_point() and not torch.isfinite(tensors[name]).all():
            raise DrafterSwapError(f"{name} has NaN or infinite values")
    _check_tied(current, tensors)
    return DrafterWeights(tensors, version)


@torch.no_grad()
def commit_weights(drafter: TrainableDrafter, weights: DrafterWeights) -> None:
    """Copy prepared weights into the drafter in place and publish their version."""
    current = drafter.model.state_dict()
    for name, value in weights.tensors.items():
        current[name].copy_(value)
    drafter.version = weights.version


def _check_same_vocab(drafter: TrainableDrafter, new: TrainableDrafter) -> None:
    old_map, new_map = drafter.draft_to_target, new.draft_to_target
    same = (old_map is None and new_map is None) or (
        old_map is not None and new_map is not None and torch.equal(old_map.cpu(), new_map.cpu())
    )
    if not same:
        raise DrafterSwapError("the new drafter has a different draft vocabulary (draft_to_target); swap weights only")


def _check_tied(current: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Tied weights (one storage, two names) must receive one value, or the last copy would win silently."""
    first_name: dict[int, str] = {}
    for name, old in current.items():
        ptr = old.data_ptr()
        if old.numel() == 0:
            continue
        if ptr in first_name and not torch.equal(tensors[first_name[ptr]], tensors[name]):
            raise DrafterSwapError(f"{name} is tied to {first_name[ptr]} in the drafter but the new values differ")
        first_name.setdefault(ptr, name)
