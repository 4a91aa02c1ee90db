"""Live progress of a verl run, read from verl's log as it is written (`respec-verl demo`, `bench/e2e.py`).

verl prints one line of metrics per step; before the first step, a few lines mark the phases of
its start-up. `LogProgress` follows the log file from a thread and shows a tqdm bar over the RL
steps with each step's figures on a terminal, one plain line per phase and per step otherwise (CI
logs, pipes).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

from respec_verl.demo.report import RLStep
from respec_verl.upstream import ray_compat, verl_compat


class LogProgress:
    """Live progress, fed by following verl's log file as it is written: a tqdm bar over the RL steps on
    a terminal, one plain line per phase and per step otherwise (logs, CI)."""

    PHASES = (  # (a line of verl's log, what the run is doing from then on until the first step)
        (re.compile(ray_compat.STARTED_PATTERN), "starting verl's workers"),
        (re.compile(r"respec: measuring (vLLM )?step costs|profiling step costs"), "profiling step costs for the controller"),
        (re.compile(re.escape(verl_compat.TEXTS["worker_groups"].text)), "loading the actor and the reference"),
        (re.compile(re.escape(verl_compat.TEXTS["engines_ready"].text)), "starting the vLLM server"),
        (re.compile(re.escape(verl_compat.TEXTS["ready_to_fit"].text)), "step 1 (pays the warm-up)"),
    )

    def __init__(self, log_path: Path, steps: int, desc: str, enabled: bool = True, poll_s: float = 1.0):
        self.log_path, self.steps, self.desc, self.enabled, self.poll_s = Path(log_path), steps, desc, enabled, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="respec-demo-progress", daemon=True)
        self._phase = -1
        self._step = 0

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def lines(self):
        """Complete lines appended to the log since the last call (a rewritten log starts over)."""
        position, partial = 0, ""
        while True:
            chunk = ""
            if self.log_path.exists():
                with open(self.log_path, encoding="utf-8", errors="replace") as log:
                    if log.seek(0, os.SEEK_END) < position:
                        position, partial = 0, ""
                    log.seek(position)
                    chunk = log.read()
                    position = log.tell()
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            yield lines

    def update(self, line: str) -> str | None:
        """Feed one log line; returns what changed ("phase: ..." or "step N/M: ...") or None."""
        from respec_verl.verl_glue.supervisor import parse_step_metrics

        for step, metrics in parse_step_metrics([line]).items():
            if step > self._step:
                self._step = step
                return f"step {step}/{self.steps}: {progress_figures(RLStep.from_metrics(step, metrics))}"
        if self._step == 0:
            for index, (pattern, phase) in enumerate(self.PHASES):
                if index > self._phase and pattern.search(line):
                    self._phase = index
                    return f"phase: {phase}"
        return None

    def _follow(self) -> None:
        from tqdm.auto import tqdm

        terminal = sys.stderr.isatty()
        bar = tqdm(total=self.steps, desc=f"{self.desc}: starting", unit="step", dynamic_ncols=True) if terminal else None
        try:
            for lines in self.lines():
                stopping = self._stop.is_set()
                for line in lines:
                    change = self.update(line)
                    if change is None:
                        continue
                    if bar is None:
                        print(f"{self.desc}: {change}", flush=True)
                    elif change.startswith("phase: "):
                        bar.set_description(f"{self.desc}: {change[len('phase: '):]}", refresh=False)
                    else:
                        bar.set_description(self.desc, refresh=False)
                        bar.set_postfix_str(change.split(": ", 1)[1], refresh=False)
                        bar.update(min(self._step, self.steps) - bar.n)
                if bar is not None:
                    bar.refresh()  # also ticks the elapsed time
                if stopping:
                    break
                self._stop.wait(self.poll_s)
        finally:
            if bar is not None:
                bar.close()


def progress_figures(record: RLStep) -> str:
    """The live figures of one step, for the progress bar."""
    parts = [f"reward {record.reward:.2f}" if record.reward is not None else "reward -"]
    if record.accept_length is not None:
        parts.append(f"accept len {record.accept_length:.2f}")
    if record.k_mean is not None:
        parts.append(f"k {record.k_mean:.1f}")
    if record.drafter_version is not None:
        parts.append(f"drafter v{record.drafter_version:.0f}")
    if record.rollout_s is not None:
        parts.append(f"rollout {record.rollout_s:.0f}s")
    if record.step_s is not None:
        parts.append(f"step {record.step_s:.0f}s")
    return ", ".join(parts)
