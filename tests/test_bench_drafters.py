"""bench.drafters: the acceptance run on the real actor (tiny settings) and the projection path on CPU."""

from __future__ import annotations

import json

import pytest

from bench import drafters


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    out = tmp_path_factory.mktemp("drafters") / "acceptance.json"
    drafters.main(["--out", str(out), "--batch-sizes", "1", "--group", "2", "--long-tail", "2",
                   "--long-tail-groups", "2", "--max-new-tokens", "12", "--warmup-prompts", "2",
                   "--warmup-steps", "2", "--k-history", "3", "--k-hybrid", "2", "--k-self-draft", "2"])
    return out


def test_every_drafter_runs_both_epochs_of_every_scenario_against_plain(acceptance):
    doc = json.loads(acceptance.read_text())
    cells = {(r["name"], r["drafter"], r["epoch"]) for r in doc["results"]}
    assert cells == {(n, d, e) for n in ("B1", "long_tail_g2") for d in drafters.DRAFTERS for e in (1, 2)}
    for r in doc["results"]:
        assert r["tokens"] > 0 and r["tokens_per_step"] >= 1.0
        if r["name"].startswith("B") and r["drafter"] != "history":  # history decodes plainly without a match,
            assert (r["spec_steps"] == 0) == (r["drafter"] == "plain")  # and the long tail's schedule may say 0
        assert r["decode_tokens_per_s"] > 0 and r["prefill_s"] > 0 and r["calls"] == 1
        if r["drafter"] == "plain":
            assert r["speedup"] == r["speedup_wall"] == 1.0 and r["spec_step_s"] is None
        if r["name"] == "long_tail_g2" and r["drafter"] != "plain":  # the schedule of the fixed-batch ratios
            assert set(r["schedule"]) == {"1"}
    hybrid = [r for r in doc["results"] if r["drafter"] == "hybrid"]
    assert all(0.0 <= r["history_share"] <= 1.0 for r in hybrid)
    assert doc["history_lookup_s_per_row"] > 0
    assert acceptance.with_suffix(".png").stat().st_size > 0


def test_the_projection_costs_each_drafter_from_measured_steps(acceptance, tmp_path):
    out = tmp_path / "projection.json"
    drafters.main(["--project", str(acceptance), "--device", "cpu", "--shapes", "tiny", "--out", str(out),
                   "--batch-sizes", "1", "--context-len", "16", "--repeats", "1"])
    doc = json.loads(out.read_text())
    tiny = doc["shapes"]["tiny"]
    assert set(tiny["decode_s"]) == {"1", "2"}  # the long tail's starting batch is timed too
    assert {(p["name"], p["drafter"]) for p in tiny["projected"]} == {
        (n, d) for n in ("B1",) for d in ("self_draft", "history", "hybrid")}
    assert all(p["projected_speedup"] > 0 for p in tiny["projected"])


def test_an_unknown_shape_names_the_allowed_ones(capsys):
    with pytest.raises(SystemExit):
        drafters.parse_args(["--out", "x.json", "--shapes", "13b"])
    assert "--shapes: '13b' is not valid; allowed: smollm2-135m, 7b, tiny" in capsys.readouterr().err


def test_the_long_tail_schedule_speculates_only_where_the_drafter_paid():
    schedule = drafters.MeasuredSchedule(4, {1: 1.6, 4: 1.2, 16: 0.9})
    assert [schedule.choose_k(b) for b in (1, 2, 4, 8, 16, 64)] == [4, 4, 4, 4, 0, 0]
