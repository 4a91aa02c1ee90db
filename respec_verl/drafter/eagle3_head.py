"""The EAGLE-3 head as a PyTorch module, its parameters named as vLLM's `llama_eagle3` loader reads them.

One Llama decoder layer whose attention reads 2d inputs: the normed embedding of a token next to
a normed hidden state, which is either the target's features at the previous position (three of
its layers' residual streams, fused 3d -> d by `fc`) or, from the second draft step on, the head's
own pre-norm output (EAGLE's feature feedback). The layer is vLLM's `LlamaDecoderLayer` of
`llama_eagle3` with `layer_idx = 0` and `norm_before_residual = False`; the output is normed by
`norm` for the logits over the draft vocabulary, and kept pre-norm as the feature fed back.

Attention takes its past keys and an explicit mask, so that one forward serves the proposer (a
cache of real positions and the chain being drafted) and training-time test (the real positions
and, per position, the chain of the head's own steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, H_kv, T, head_dim] (rotary applied)


def aux_layer_ids(config: LlamaConfig) -> tuple[int, ...]:
    """The target layers whose residual streams the head reads (vLLM's `eagle_aux_hidden_state_layer_ids`)."""
    return tuple(config.eagle_aux_hidden_state_layer_ids)


class Eagle3Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or d // heads
        bias = getattr(config, "attention_bias", False)
        self.q_proj = nn.Linear(2 * d, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(2 * d, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(2 * d, kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, d, bias=bias)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], past: KV | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, KV]:
        """x [B, T, 2d]; mask [B, T, past + T] (True: attend). Returns the output and this chunk's keys/values."""
        batch, length = x.shape[:2]
        q, k, v = (proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2) for proj in
                   (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary_pos_emb(q, k, *rotary)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), (k, v)


class Eagle3DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps)
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps)
        self.self_attn = Eagle3Attention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps)
        self.mlp = LlamaMLP(config)

    def forward(self, embeds, hidden, rotary, past: KV | None, mask) -> tuple[torch.Tensor, torch.Tensor, KV]:
        residual = hidden
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        attended, kv = self.self_attn(x, rotary, past, mask)
        residual = attended + residual
        return self.mlp(self.post_attention_layernorm(residual)), residual, kv


class Eagle3Head(nn.Module):
    """fc (3 target layers -> d), one decoder layer over [embedding, feature], norm, lm_head over the draft vocabulary.

    `config` is the head's config.json (a LlamaConfig with `draft_vocab_size` and `eagle_config`);
    `embed_tokens` is a frozen copy of the target's (vLLM shares the target's own instead).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        target_d = getattr(config, "target_hidden_size", None) or d
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.fc = nn.Linear(len(aux_layer_ids(config)) * target_d, d, bias=False)
        self.midlayer = Eagle3DecoderLayer(config)
        self.norm = LlamaRMSNorm(d, config.rms_norm_eps)
        self.lm_head = nn.Linear(d, config.draft_vocab_size, bias=False)
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def forward(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, past: KV | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, KV]:
        """Tokens [B, T] and features [B, T, d] (fused or fed back) at `positions` [B, T].

        Returns the draft logits [B, T, V_draft], the pre-norm output fed back as the next step's
        feature [B, T, d], and this chunk's keys/values for the caller's cache.
        """
        embeds = self.embed_tokens(input_ids)
        rotary = self.rotary_emb(hidden, positions)
        out, residual, kv = self.midlayer(embeds, hidden, rotary, past, mask)
        prenorm = out + residual
        return self.lm_head(self.norm(prenorm)), prenorm, kv

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """The target's features [..., 3 * d_target] (its layers' residual streams side by side) -> [..., d]."""
        return self.fc(features)
