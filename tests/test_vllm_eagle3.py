"""An EAGLE-3 head saved by respec, run by vLLM-CPU's own `eagle3` method: vLLM drafts what the core
engine drafts (same greedy output, same accepted tokens up to vLLM's extra proposal at the length
cap). About 3 minutes on 2 cores: `python -m pytest -m extended tests/test_vllm_eagle3.py`."""

from __future__ import annotations

import os

import pytest
import torch

vllm = pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.extended]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

COUNTERS = ("vllm:spec_decode_num_accepted_tokens", "vllm:spec_decode_num_draft_tokens")


def test_vllm_eagle3_drafts_what_the_core_engine_drafts(tmp_path):
    from transformers import LlamaForCausalLM
    from vllm import LLM
    from vllm import SamplingParams as VllmParams
    from vllm.inputs import TokensPrompt

    from respec_verl.drafter import eagle3_drafter, frequent_tokens
    from respec_verl.drafter.distill import distill
    from respec_verl.drafter.eagle3_dir import save_eagle3_dir
    from respec_verl.models.tiny import save_tiny_llama
    from respec_verl.speculation import FixedK, SamplingParams, SpeculativeEngine

    actor = save_tiny_llama(tmp_path / "actor", num_layers=4)
    target = LlamaForCausalLM.from_pretrained(actor, dtype=torch.float32).eval()
    prompts = torch.randint(1, 2000, (128, 4), generator=torch.Generator().manual_seed(0)).tolist()
    responses = SpeculativeEngine(target).generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=24)).token_ids
    drafter = eagle3_drafter(target, target_layers=(1, 2, 3), draft_vocab=frequent_tokens(responses, 1024))
    distill(drafter, target, prompts, responses, steps=150, batch_size=32, lr=1e-2, progress=False)
    head = save_eagle3_dir(drafter, tmp_path / "head")

    asked = prompts[:8]  # seen in training, so that the head accepts some drafts there
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    core = [SpeculativeEngine(target, drafter, FixedK(3)).generate([p], params) for p in asked]
    core_accepted = sum(sum(out.stats.accepted_per_pos) for out in core)

    llm = LLM(model=str(actor), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=1, seed=0,
              disable_log_stats=False,
              speculative_config={"method": "eagle3", "model": str(head), "num_speculative_tokens": 3})
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in asked],
                           VllmParams(temperature=0.0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    counters = {m.name: m.value for m in llm.get_metrics() if m.name in COUNTERS}

    assert [list(o.outputs[0].token_ids) for o in outputs] == [out.token_ids[0] for out in core]
    assert counters["vllm:spec_decode_num_draft_tokens"] > 0 and core_accepted > 0
    # vLLM also drafts at the length cap, where the core engine decodes plainly: at most one more per request
    assert core_accepted <= counters["vllm:spec_decode_num_accepted_tokens"] <= core_accepted + len(asked)
