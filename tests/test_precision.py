"""`drafter/precision.py`: which dtype the drafter update's forward takes."""

from __future__ import annotations

import pytest
import torch

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
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_compute_dtype("auto", "cpu") == expected


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = precision.cpu_flags()
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
