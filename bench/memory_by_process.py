"""Where a command's host memory goes: run it, sample every process's RSS, report the peak.

    python -m bench.memory_by_process --out bench/results/memory_demo.json -- respec-verl demo --no-progress

Every `--every` seconds it records the host memory in use above what was in use before the
command started (psutil's `used`: what the demo's own "peak memory" reports, but from before the
command instead of from the start of `main_ppo`) and the RSS of each process bigger than 100 MiB,
named by its command line (Ray workers by their `ray::` title). RSS counts pages shared between
processes (libraries) in each, so the per-process figures add up to more than the host figure;
the host figure is the one a machine's memory has to hold. Reading RSS is cheap (statm); reading
PSS or USS (smaps) every few seconds slowed the demo down by itself. The JSON holds the peak
sample (host figure and per-process RSS), each process's own peak and the series of the host figure;
`--process-series` adds each process's RSS series, to find the one that grows.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from pathlib import Path

from bench.common import save_result, script_parser

MIN_RSS = 100 * 2**20


def process_name(cmdline: list[str]) -> str:
    """A short, stable name: the Ray title ("ray::WorkerDict"), vLLM's ("VLLM::Worker"), else the script."""
    text = " ".join(cmdline)
    match = re.match(r"(ray|VLLM)::([A-Za-z0-9_]+)", text)
    if match:
        return f"{match.group(1)}::{match.group(2)}"
    for part in cmdline[1:]:
        if part == "-m" or part.startswith("-"):
            continue
        return Path(part).name
    return Path(cmdline[0]).name if cmdline else "?"


def sample(psutil) -> list[dict]:
    rows = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            rss = proc.memory_info().rss
        except (psutil.Error, OSError):
            continue
        if rss >= MIN_RSS:
            rows.append({"pid": proc.pid, "name": process_name(proc.info["cmdline"] or []), "rss_gib": rss / 2**30})
    return sorted(rows, key=lambda r: -r["rss_gib"])


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--process-series", action="store_true", help="also keep each process's RSS series")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    import psutil

    baseline = psutil.virtual_memory().used
    start = time.monotonic()
    child = subprocess.Popen(command)
    series, peak, per_process, process_series = [], None, {}, {}
    while True:
        done = child.poll() is not None
        used = (psutil.virtual_memory().used - baseline) / 2**30
        procs = sample(psutil)
        series.append([round(time.monotonic() - start, 1), round(used, 3)])
        if peak is None or used > peak["host_used_gib"]:
            peak = {"t_s": series[-1][0], "host_used_gib": used, "processes": procs}
        for row in procs:
            key = f"{row['name']} (pid {row['pid']})"
            per_process[key] = max(per_process.get(key, 0.0), row["rss_gib"])
            if args.process_series:
                process_series.setdefault(key, []).append([series[-1][0], round(row["rss_gib"], 3)])
        if done:
            break
        time.sleep(args.every)
    result = {
        "command": command,
        "returncode": child.returncode,
        "wall_s": round(time.monotonic() - start, 1),
        "peak": peak,
        "peak_rss_gib_by_process": dict(sorted(per_process.items(), key=lambda kv: -kv[1])),
        "host_used_gib_series": series,
    }
    if args.process_series:
        result["rss_gib_series_by_process"] = process_series
    save_result(args.out, result)
    print(f"peak host memory in use above the start: {peak['host_used_gib']:.2f} GiB at {peak['t_s']:.0f} s")
    for row in peak["processes"][:12]:
        print(f"  {row['rss_gib']:5.2f} GiB RSS  {row['name']}")
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
