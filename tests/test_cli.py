"""The `respec-verl` command: subcommands, help and argument errors (no model is loaded)."""

from __future__ import annotations

import pytest

from respec_verl.cli import BENCHES, build_parser, main


def test_subcommands_parse_with_defaults():
    parser = build_parser()
    demo = parser.parse_args(["demo"])
    assert (demo.command, demo.k, demo.out) == ("demo", 3, "respec_demo")
    bench = parser.parse_args(["bench", "spec", "--batch-sizes", "1,2"])
    assert bench.name == "spec" and bench.args == ["--batch-sizes", "1,2"]
    assert parser.parse_args(["profile", "--dtype", "bf16"]).dtype == "bf16"


def test_every_bench_name_has_a_script_in_the_checkout():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "bench"
    assert all((root / script).exists() for script in BENCHES.values())


@pytest.mark.parametrize("argv", [[], ["bench", "nope"], ["profile", "--dtype", "fp8"], ["unknown"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: respec-verl" in capsys.readouterr().err
