"""The EAGLE-3 drafter: a one-layer head over the target's hidden states, trained with training-time test.

It implements the core's `TrainableDrafter` (and so `DraftSource`): the engine runs it through
`Eagle3Proposer`, which declares the target layers it reads, and the learner and `distill` train
it on the target's soft labels with the hidden states of the same forward. Its `draft_logits`
unrolls the head `unroll` steps as EAGLE-3 trains it ("training-time test"): step 0 reads the
target's features, each further step the head's own output at the previous step, so the head
learns to draft on from its own guesses, as it does at inference. The folder it is saved as
(`eagle3_dir`) is the one vLLM's `eagle3` method loads.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from respec_verl.drafter.draft_vocab import DraftVocabulary
from respec_verl.drafter.eagle3_head import Eagle3Head, aux_layer_ids
from respec_verl.drafter.eagle3_proposer import Eagle3Proposer

EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"  # a name vLLM's registry maps to `Eagle3LlamaForCausalLM`


@dataclass
class Eagle3Drafter(DraftVocabulary):
    """An `Eagle3Head` with its draft vocabulary map and version; `unroll` is the training-time-test depth."""

    model: Eagle3Head
    draft_to_target: torch.Tensor | None = None
    version: int = 0
    unroll: int = 3

    @property
    def target_layers(self) -> tuple[int, ...]:
        """The target layers (residual stream after that many layers) the head reads, as vLLM numbers them."""
        return aux_layer_ids(self.model.config)

    @property
    def draft_vocab_size(self) -> int:
        return self.model.lm_head.out_features

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything but the input embedding (a frozen copy of the target's)."""
        frozen = {id(p) for p in self.model.embed_tokens.parameters()}
        return [p for p in self.model.parameters() if id(p) not in frozen]

    def draft_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """Logits [unroll, B, T, V_draft] of right-padded sequences and the target's features [B, T, F] at them.

        Step j's entry at t predicts token t+1 after j of the head's own steps: it comes from the
        pair (token t-j, features at t-j-1), so entries t <= j do not exist (zeros;
        `kd_loss.unrolled_kd_loss` masks them). Step j's query at a position attends to the real
        positions up to it and to its own chain of steps 1..j there, as a proposal's j-th draft does.
        """
        batch, length = input_ids.shape
        pairs = length - 1  # pair p: (token p+1, features at p)
        positions = torch.arange(pairs, device=input_ids.device).expand(batch, -1)
        valid = attention_mask[:, 1:].bool()
        real = torch.ones(pairs, pairs, dtype=torch.bool, device=input_ids.device).tril() & valid[:, None, :]
        own = torch.eye(pairs, dtype=torch.bool, device=input_ids.device).expand(batch, -1, -1)
        hidden, past, steps = self.model.fuse(features[:, :-1]), None, []
        for j in range(self.unroll):
            tokens = torch.nn.functional.pad(input_ids[:, 1 + j :], (0, j))  # token p+1+j, zeros past the end
            mask = torch.cat([real | own] + [own] * j, dim=2) if j else real | own
            logits, hidden, kv = self.model(tokens, hidden, positions + j, past, mask)
            past = kv if past is None else (torch.cat([past[0], kv[0]], 2), torch.cat([past[1], kv[1]], 2))
            aligned = logits.new_zeros(batch, length, logits.shape[-1])
            aligned[:, 1 + j :] = logits[:, : pairs - j]
            steps.append(aligned)
        return torch.stack(steps)

    def replica(self, model: torch.nn.Module, version: int) -> Eagle3Drafter:
        return Eagle3Drafter(model, self.draft_to_target, version, self.unroll)

    def serving_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What vLLM's `Eagle3LlamaForCausalLM.load_weights` takes: the head's tensors but the
        embedding (vLLM shares the target's), and d2t as offsets when the vocabulary is reduced."""
        for name, tensor in self.model.state_dict().items():
            if not name.startswith("embed_tokens."):
                yield name, tensor.detach()
        if self.draft_to_target is not None:
            d2t = self.draft_to_target.to(torch.long)
            yield "d2t", d2t - torch.arange(d2t.numel(), device=d2t.device)  # vLLM: target id = j + d2t[j]

    def describe(self) -> str:
        layers = ".".join(str(i) for i in self.target_layers)
        return f"Eagle3-L{layers}-{self.draft_vocab_size}V"

    def new_proposer(self, target_vocab_size: int) -> Eagle3Proposer:
        return Eagle3Proposer(self, target_vocab_size)


@dataclass
class Eagle3Config:
    """The EAGLE-3 drafter's own settings (`eagle3_drafter`'s keywords; the draft vocabulary size is
    the drafter block's, shared with the self-draft). target_layers: the target layers whose residual
    streams the head fuses, None for vLLM's default (a low, a middle and a high layer). unroll: the
    training-time-test depth, the number of the head's own steps each training position unrolls."""

    target_layers: tuple[int, ...] | None = None
    unroll: int = 3

    def __post_init__(self) -> None:
        layers = self.target_layers
        if layers is not None and (not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                     for i in layers)):
            raise ValueError(f"eagle3 target_layers = {layers!r} is not valid; allowed: null (vLLM's default) "
                             "or a non-empty list of layer ids >= 0")
        if isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or self.unroll < 1:
            raise ValueError(f"eagle3 unroll = {self.unroll!r} is not valid; allowed: an integer >= 1")


def default_target_layers(num_layers: int) -> tuple[int, ...]:
    """vLLM's default (`get_eagle3_default_aux_hidden_state_layers`): a low, a middle and a high layer."""
    return (2, num_layers // 2, num_layers - 3)


def eagle3_drafter(
    target: torch.nn.Module,
    target_layers: Sequence[int] | None = None,
    draft_vocab: Sequence[int] | torch.Tensor | None = None,
    unroll: int = 3,
    seed: int = 0,
) -> Eagle3Drafter:
    """A fresh EAGLE-3 head for `target`: the target's embedding (frozen), final norm and, over
    `draft_vocab` (target ids, e.g. `frequent_tokens`; None: all), its lm_head rows; the fusion and
    the decoder layer are random (`seed`) and learnt by distillation."""
    Eagle3Config(None if target_layers is None else tuple(target_layers), unroll)
    total = target.config.num_hidden_layers
    layers = tuple(default_target_layers(total) if target_layers is None else target_layers)
    if any(not 0 <= i < total for i in layers):
        raise ValueError(f"eagle3 target_layers = {list(layers)} is not valid for this target; allowed: ids in "
                         f"[0, {total})")
    param = next(target.parameters())
    ids = None if draft_vocab is None else torch.as_tensor(draft_vocab, dtype=torch.long).unique()
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = 1
    config.layer_types = None if getattr(config, "layer_types", None) is None else config.layer_types[:1]
    config.architectures = [EAGLE3_ARCHITECTURE]
    config.draft_vocab_size = config.vocab_size if ids is None else ids.numel()
    config.target_hidden_size = config.hidden_size
    config.tie_word_embeddings = False
    # both vLLM model runners read the top-level ids; llama_eagle3 counts the fused layers from eagle_config
    config.eagle_aux_hidden_state_layer_ids = list(layers)
    config.eagle_config = {"eagle_aux_hidden_state_layer_ids": list(layers), "use_aux_hidden_state": True}
    torch.manual_seed(seed)
    head = Eagle3Head(config).to(dtype=param.dtype, device=param.device)
    with torch.no_grad():
        for module in (head.fc, head.midlayer.self_attn.q_proj, head.midlayer.self_attn.k_proj,
                       head.midlayer.self_attn.v_proj, head.midlayer.self_attn.o_proj, head.midlayer.mlp.gate_proj,
                       head.midlayer.mlp.up_proj, head.midlayer.mlp.down_proj):
            module.weight.normal_(0.0, module.in_features**-0.5)
        head.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
        head.norm.weight.copy_(target.model.norm.weight)
        lm_head = target.get_output_embeddings().weight
        head.lm_head.weight.copy_(lm_head if ids is None else lm_head[ids.to(lm_head.device)])
    return Eagle3Drafter(head.eval(), None if ids is None else ids.to(param.device), unroll=unroll)
