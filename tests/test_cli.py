"""The `respec-verl` command: subcommands, help and argument errors (no model is loaded)."""

from __future__ import annotations

import pytest

from respec_verl.cli import BENCHES, build_parser, main
from respec_verl.demo.run import DEFAULT_STEPS


def test_subcommands_parse_with_defaults():
    parser = build_parser()
    demo = parser.parse_args(["demo"])
    assert (demo.command, demo.model, demo.steps, demo.out, demo.no_spec) == ("demo", "smollm2", DEFAULT_STEPS, "respec_demo", False)
    assert not demo.generation_only and demo.k == 3  # the generation-only demo keeps its flags
    demo = parser.parse_args(["demo", "--no-spec", "--gpus", "8", "--override", "a=1", "--override", "b=2"])
    assert demo.no_spec and demo.gpus == 8 and demo.override == ["a=1", "b=2"]
    bench = parser.parse_args(["bench", "spec", "--batch-sizes", "1,2"])
    assert bench.name == "spec" and bench.args == ["--batch-sizes", "1,2"]
    assert parser.parse_args(["profile", "--dtype", "bf16"]).dtype == "bf16"


def test_every_bench_name_is_a_module_of_the_checkout():
    import importlib.util

    assert all(importlib.util.find_spec(f"bench.{module}") is not None for module in BENCHES.values())


def test_bench_runs_the_module_with_the_arguments_passed_on(capsys, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "bench.spec_vs_plain", raising=False)  # runpy runs it afresh
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "spec", "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m bench.spec_vs_plain" in capsys.readouterr().out


def test_bench_outside_a_source_checkout_says_so(monkeypatch, tmp_path):
    from respec_verl import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "respec_verl" / "cli.py"))  # an installed copy: no bench/
    with pytest.raises(SystemExit, match="bench not found; run it from a source checkout of respec_verl"):
        cli.run_bench("spec", [])


def test_bad_demo_values_say_what_to_do(capsys):
    with pytest.raises(SystemExit, match="--steps = 0 is not valid; allowed: an integer >= 1"):
        main(["demo", "--steps", "0"])


@pytest.mark.parametrize("argv", [[], ["bench", "nope"], ["profile", "--dtype", "fp8"], ["unknown"], ["demo", "--steps", "x"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: respec-verl" in capsys.readouterr().err


def test_the_demo_runs_the_long_task_unless_told_otherwise():
    from respec_verl.cli import demo_task

    parser = build_parser()
    assert demo_task(parser.parse_args(["demo"])) == "long"
    assert demo_task(parser.parse_args(["demo", "--task", "add"])) == "add"
    assert demo_task(parser.parse_args(["demo", "--quick"])) == "add"
    assert demo_task(parser.parse_args(["demo", "--model", "tiny"])) == "add"  # the smoke test stays short
    assert demo_task(parser.parse_args(["demo", "--model", "tiny", "--task", "long"])) == "long"
    with pytest.raises(SystemExit, match="--quick runs --task add; it cannot run with --task long"):
        demo_task(parser.parse_args(["demo", "--quick", "--task", "long"]))
