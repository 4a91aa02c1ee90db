"""A causal LM's KV cache for a ragged batch, where each row keeps only the tokens it accepted.

Rows accept different numbers of drafts, so instead of a per-row crop (which a dense cache cannot
do) rejected positions become holes: they stay in the cache but the attention mask hides them, and
position ids count only the valid tokens before them. Trailing columns that are holes in every row
are cropped away, so at batch size 1 the cache never holds a hole.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class KVState:
    """Owns one model's cache, attention mask and positions for the rows still generating."""

    def __init__(self, model: torch.nn.Module, feature_layers: tuple[int, ...] = ()):
        self.model = model
        self.cache = DynamicCache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, cache_len]: False marks a hole
        # with feature_layers, each forward also keeps those layers' hidden states side by side (an
        # EAGLE drafter's input): `features` [B, T, len(feature_layers) * d] of the last forward's tokens
        self.feature_layers = feature_layers
        self.features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Append `tokens` [B, T] (entries where `valid` is False are holes) and return their logits.

        Returns [B, T, V] logits, or [B, V] logits of the last column when `last_only`.
        """
        if self.valid.shape[1] == 0:
            self.valid = torch.zeros(tokens.shape[0], 0, dtype=torch.bool)
        mask = torch.cat([self.valid, valid], dim=1)
        # a token's position is the number of valid tokens before it (holes get a harmless one)
        positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)[:, -tokens.shape[1] :]
        out = self.model(
            input_ids=tokens,
            attention_mask=mask.long(),
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **({"output_hidden_states": True} if self.feature_layers else {}),
        )
        if self.feature_layers:  # hidden_states[i]: the residual stream after i layers (0: the embeddings)
            self.features = torch.cat([out.hidden_states[i] for i in self.feature_layers], dim=-1)
        self.cache = out.past_key_values
        self.valid = mask
        logits = out.logits
        return logits[:, -1] if last_only else logits

    def keep_last(self, keep: torch.Tensor) -> None:
        """Overwrite the validity of the last `keep.shape[1]` columns (turning rejections into holes)."""
        self.valid[:, -keep.shape[1] :] &= keep
        self._crop_trailing_holes()

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (finished requests leave the batch, so the live batch shrinks)."""
        self.cache.batch_select_indices(rows)
        self.valid = self.valid[rows]
        self._crop_trailing_holes()

    def _crop_trailing_holes(self) -> None:
        any_valid = self.valid.any(dim=0).nonzero()
        length = int(any_valid[-1]) + 1 if len(any_valid) else 0
        if length < self.valid.shape[1]:
            self.cache.crop(length)
            self.valid = self.valid[:, :length]
