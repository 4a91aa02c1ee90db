"""`drafter/precision.py`: which dtype the drafter update's forward takes."""

from __future__ import annotations

import pytest
import torch

from respec_verl import cpu_features
from respec_verl.drafter import precision


def test_explicit_dtypes_pass_through():
    assert precision.resolve_compute_dtype("float32", "cpu") == torch.float32
    assert precision.resolve_compute_dtype("bfloat16", "cpu") == torch.bfloat16


@pytest.mark.parametrize("flags,expected", [
    (set(), torch.float32),
    ({"avx2", "fma"}, torch.float32),
    ({"avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"amx_tile", "amx_bf16"}, torch.bfloat16),
])
def test_auto_on_a_cpu_follows_its_bf16_flags(flags, expected, monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_compute_dtype("auto", "cpu") == expected


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = cpu_features.cpu_flags()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert flags == frozenset()
        return
    line = next(line for line in text.splitlines() if line.startswith("flags"))
    assert flags == frozenset(line.split(":", 1)[1].split()) and flags  # a real CPU has some flags


@pytest.mark.parametrize("major,expected", [(7, False), (8, True), (9, True)])
def test_a_gpu_runs_bf16_natively_from_ampere_on(major, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert precision.fast_bf16("cuda:0") is expected


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma"}, "float32"),
    ({"avx512f", "avx512_bf16"}, "bfloat16"),
    ({"amx_tile", "amx_bf16"}, "bfloat16"),
])
def test_the_cpu_runs_rollouts_in_the_dtype_it_runs_fast(flags, expected, monkeypatch):
    from respec_verl.verl_glue.launch import cpu_dtype, cpu_overrides

    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert cpu_dtype("auto") == expected
    assert cpu_dtype("float32") == "float32" and cpu_dtype("bfloat16") == "bfloat16"  # an explicit choice stays
    assert f"actor_rollout_ref.rollout.dtype={expected}" in cpu_overrides(cpu_dtype("auto"))


def test_a_bad_dtype_names_the_allowed_ones():
    from respec_verl.verl_glue.launch import cpu_dtype

    with pytest.raises(ValueError, match="dtype = 'fp16' is not valid; allowed: auto, float32, bfloat16"):
        cpu_dtype("fp16")
