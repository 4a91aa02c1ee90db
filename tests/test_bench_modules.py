"""The benchmarks are the package `bench`: every script imports as `bench.<name>`, and none is loaded by its path."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")
# what loading a script by its file path takes: importlib's file loaders, runpy's run_path, exec of a file's
# text, or the script's folder put on sys.path
BY_PATH = re.compile(r"spec_from_file_location|SourceFileLoader|run_path\(|exec\(open|sys\.path\.(insert|append)")
# the command's `bench` subcommand puts the checkout (not a script's folder) on sys.path to run `-m bench.<name>`
ALLOWED = {("respec_verl/cli.py", "sys.path.insert")}


def test_bench_is_a_regular_package():
    assert importlib.import_module("bench").__file__ == str(ROOT / "bench" / "__init__.py")  # not a namespace


@pytest.mark.parametrize("name", MODULES)
def test_every_bench_script_imports_as_a_module_of_the_package(name):
    module = importlib.import_module(f"bench.{name}")
    assert module.__name__ == f"bench.{name}" and module.__doc__


def test_no_script_is_loaded_by_its_file_path():
    found = []
    for folder in ("tests", "respec_verl", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "tests/test_bench_modules.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                match = BY_PATH.search(line)
                if match and (rel, match.group(0)) not in ALLOWED:
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "load bench scripts as modules (`from bench import x`, `python -m bench.x`):\n" + "\n".join(found)
