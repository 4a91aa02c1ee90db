"""What a `bench.controller` result can resolve: held-out best static k, round-to-round spread.

The controller's bar compares it with the best static k at each batch size. Picking the best of
four noisy static medians and dividing by it biases the ratio down (the winner's curse), and a
round's ratios spread by more than the bar's margin on this machine. This reads a result JSON
(no runs) and reports per batch size:

- `held_out`: the median over rounds of the controller's tokens/s over the static k that was best
  on the *other* rounds, in the held-out round (leave one round out), which is free of that bias;
- the per-round ratios it is made of, and their spread (`sd_log`: the standard deviation of their
  logarithms, roughly the relative spread);
- `rounds_for_2pct`: how many rounds would bring the standard error of the mean ratio to 2%
  (0.97 and 1.0 are then 1.5 standard errors apart).

    python -m bench.controller_resolution bench/results/controller.json --out bench/results/controller_resolution.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from respec_verl.storage.json_file import write_json_atomic


def held_out_ratios(runs: dict[str, dict], name: str = "controller") -> list[float]:
    """Per round r: name's tokens/s over the static k best on the other rounds (by median), in round r."""
    rounds = len(runs[name]["tokens_per_s_runs"])
    statics = [n for n in runs if n.startswith("k=")]
    if rounds < 2 or not statics:
        raise ValueError(f"need two rounds or more and static ks, got {rounds} round(s) and {statics}")
    tps = {n: runs[n]["tokens_per_s_runs"] for n in [name, *statics]}
    ratios = []
    for r in range(rounds):
        others = [i for i in range(rounds) if i != r]
        best = max(statics, key=lambda n: statistics.median(tps[n][i] for i in others))
        ratios.append(tps[name][r] / tps[best][r])
    return ratios


def resolution(ratios: list[float], target_se: float = 0.02) -> dict[str, float]:
    """Median, spread of the logs, and the rounds that would give a standard error of `target_se`."""
    logs = [math.log(r) for r in ratios]
    sd = statistics.stdev(logs) if len(logs) > 1 else math.nan
    return {"held_out": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "sd_log": sd,
            "rounds_for_2pct": math.ceil((sd / target_se) ** 2) if not math.isnan(sd) else math.nan}


def analyse(result: dict) -> list[dict]:
    rows = []
    for row in result["by_batch_size"]:
        ratios = held_out_ratios(row["runs"])
        rows.append({"batch_size": row["batch_size"], "rounds": len(ratios), "per_round": ratios,
                     "naive": row["controller_over_best_static"], **resolution(ratios)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a bench.controller JSON")
    parser.add_argument("--out", default=None, help="write the analysis as JSON here")
    args = parser.parse_args()
    rows = analyse(json.loads(Path(args.result).read_text()))
    columns = ("B", 3), ("rounds", 6), ("naive", 6), ("held-out", 8), ("min", 5), ("max", 5), ("sd(log)", 7)
    print(" ".join(f"{name:>{width}}" for name, width in columns) + " rounds for 2%")
    for r in rows:
        print(f"{r['batch_size']:3d} {r['rounds']:6d} {r['naive']:6.2f} {r['held_out']:8.2f} {r['min']:5.2f} "
              f"{r['max']:5.2f} {r['sd_log']:7.3f} {r['rounds_for_2pct']:13}")
    if args.out:
        write_json_atomic(Path(args.out), {"source": args.result, "by_batch_size": rows})


if __name__ == "__main__":
    main()
