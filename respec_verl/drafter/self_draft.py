"""A drafter cut from the target itself, for users without a drafter checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch

from respec_verl.drafter.drafter import Drafter


def self_draft(
    target: torch.nn.Module, num_layers: int, draft_vocab: Sequence[int] | torch.Tensor | None = None
) -> Drafter:
    """Copy the target's embedding, first `num_layers` decoder layers, final norm and lm_head.

    With `draft_vocab` (target token ids, e.g. from `frequent_tokens`) the lm_head keeps only those
    rows: on small models the full output layer dominates the drafter's cost.
    """
    total = target.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"self_draft num_layers must be in [1, {total}] for this target, got {num_layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:num_layers]
    param = next(target.parameters())
    model = type(target)(config).to(dtype=param.dtype, device=param.device)
    source = target.state_dict()
    model.load_state_dict({name: source[name].clone() for name in model.state_dict()})
    model.eval()
    if draft_vocab is None:
        return Drafter(model)

    ids = torch.as_tensor(draft_vocab, dtype=torch.long, device=param.device).unique()
    head = torch.nn.Linear(config.hidden_size, ids.numel(), bias=False).to(dtype=param.dtype, device=param.device)
    head.weight.data.copy_(target.get_output_embeddings().weight.data[ids])
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return Drafter(model, draft_to_target=ids)


def frequent_tokens(sequences: Iterable[Sequence[int]], size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The `size` most frequent token ids of `sequences` (the actor's own outputs), plus `always`."""
    flat = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
    counts = torch.bincount(flat) if flat.numel() else torch.zeros(0, dtype=torch.long)
    always = torch.tensor(list(always), dtype=torch.long)
    ranked = counts.argsort(descending=True)[: max(size - always.numel(), 0)]
    ranked = ranked[counts[ranked] > 0]
    return torch.cat([always, ranked]).unique()


def pad_with_low_ids(ids: Iterable[int] | torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    """`ids` plus the lowest unused token ids, `size` in all, sorted.

    A BPE tokenizer numbers its merges in the order it learnt them, most frequent first, so low ids
    are a prior for the tokens a drafter should cover when the actor's own outputs are few.
    """
    if not 1 <= size <= vocab_size:
        raise ValueError(f"draft vocabulary size {size} is not valid; allowed: 1..{vocab_size}")
    chosen = list(dict.fromkeys(int(t) for t in (ids.tolist() if torch.is_tensor(ids) else ids)))
    if any(not 0 <= t < vocab_size for t in chosen):
        raise ValueError(f"draft vocabulary ids must lie in [0, {vocab_size})")
    chosen = chosen[:size]
    taken = set(chosen)
    chosen += [t for t in range(min(vocab_size, 2 * size)) if t not in taken][: size - len(chosen)]
    return torch.tensor(sorted(chosen), dtype=torch.long)
