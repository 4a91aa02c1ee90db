"""Run a multi-process job (verl + Ray + vLLM) so that it can never hang a caller.

A verl run is about twenty processes: the driver, Ray's daemons, Ray workers, the vLLM server and
its engine core. When something fails inside the vLLM worker, the others can wait on it for ever
(the feasibility run hung after B10 and B11). `supervise` therefore:

- starts the command in its own session (a new process group) and tags it with a unique
  `RESPEC_VERL_RUN_ID` in its environment, which every descendant inherits, Ray's daemons included
  (they start their own groups, so the process group alone does not reach them);
- streams stdout+stderr to a log file and watches each line for a fatal pattern;
- on timeout or a fatal line (after a short grace, so the driver can print its own traceback) it
  ends the process group, then every process still carrying the tag, SIGTERM then SIGKILL; it
  also sweeps tagged stragglers after a normal exit. Only processes of this run are touched;
  there is no global `ray stop`, which would end other Ray clusters on the machine too;
- samples memory (the run's summed RSS, and the host's used memory) every few seconds;
- raises `RunFailed` with the log's tail when the run timed out, hit a fatal line or exited
  non-zero (unless `check=False`).

Ctrl-C ends the run the same way. `exit_on_sigterm` makes SIGTERM (a job scheduler's or `kill`'s
stop) do so too: without it Python dies at once and the run's detached session lives on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from respec_verl.upstream import ray_compat, verl_compat, vllm_compat

RUN_ID_ENV = "RESPEC_VERL_RUN_ID"

# Lines after which a verl/vLLM run does not recover but may hang instead of exiting.
FATAL_PATTERNS: tuple[str, ...] = (
    *vllm_compat.FATAL_PATTERNS,
    r"BufferError: cannot close exported pointers exist",  # B10's shm receive (CPython's text)
    *ray_compat.FATAL_PATTERNS,
)


class RunFailed(RuntimeError):
    """The supervised command timed out, printed a fatal line or exited non-zero; carries the result."""

    def __init__(self, message: str, result: "RunResult"):
        super().__init__(message)
        self.result = result


@dataclass
class RunResult:
    returncode: int | None
    wall_s: float
    log_path: Path
    reason: str | None = None  # None, "timeout after N s" or "fatal line: ..."
    peak_run_rss_gib: float = 0.0  # summed RSS of the run's processes (shared pages counted per process)
    peak_host_used_gib: float = 0.0  # host memory in use (psutil `used`), minus that before the start
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None and self.returncode == 0


def supervise(
    command: Sequence[str],
    log_path: str | os.PathLike,
    env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    fatal_patterns: Sequence[str] = FATAL_PATTERNS,
    fatal_grace_s: float = 15.0,
    check: bool = True,
    echo: bool = False,
    cwd: str | os.PathLike | None = None,
    sample_every_s: float = 5.0,
    tail_lines: int = 80,
) -> RunResult:
    """Run `command`, streaming to `log_path`; see the module docstring for what happens on failure."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    env = dict(os.environ if env is None else env)
    env[RUN_ID_ENV] = run_id
    fatal = re.compile("|".join(f"(?:{p})" for p in fatal_patterns)) if fatal_patterns else None
    tail: deque[str] = deque(maxlen=tail_lines)
    fatal_line: list[str] = []
    memory = _MemoryPeak(run_id)

    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )

        def pump() -> None:
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                if echo:
                    print(line, end="", flush=True)
                if fatal is not None and not fatal_line and fatal.search(line):
                    fatal_line.append(line.strip())

        reader = threading.Thread(target=pump, name="supervise-log", daemon=True)
        reader.start()
        reason = None
        fatal_seen_at = None
        next_sample = 0.0
        try:
            while process.poll() is None:
                now = time.monotonic()
                if now >= next_sample:
                    memory.sample()
                    next_sample = now + sample_every_s
                if now - start > timeout_s:
                    reason = f"timeout after {timeout_s:.0f} s"
                    break
                if fatal_line:
                    fatal_seen_at = fatal_seen_at or now
                    if now - fatal_seen_at > fatal_grace_s:
                        reason = f"fatal line: {fatal_line[0]}"
                        break
                time.sleep(0.5)
        except BaseException:  # Ctrl-C or an error here: the run lives in its own session, so end it
            _end(process, run_id)
            raise
        _end(process, run_id)
        reader.join(timeout=10)
        if reason is None and fatal_line and process.returncode != 0:
            reason = f"fatal line: {fatal_line[0]}"
    result = RunResult(
        returncode=process.returncode,
        wall_s=time.monotonic() - start,
        log_path=log_path,
        reason=reason,
        peak_run_rss_gib=memory.run_peak / 2**30,
        peak_host_used_gib=memory.host_peak / 2**30,
        tail=list(tail),
    )
    if check and not result.ok:
        why = result.reason or f"exit code {result.returncode}"
        raise RunFailed(
            f"{Path(command[0]).name} {' '.join(command[1:3])} failed ({why}) after {result.wall_s:.0f} s; "
            f"log: {log_path}\n--- last {len(result.tail)} lines ---\n" + "\n".join(result.tail),
            result,
        )
    return result


def exit_on_sigterm() -> None:
    """Turn SIGTERM into `SystemExit(143)`, so that a supervised run is ended as on Ctrl-C (main thread only)."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _end(process: subprocess.Popen, run_id: str, term_wait_s: float = 10.0) -> None:
    """End the command's process group and every process tagged with `run_id` (TERM, then KILL)."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=term_wait_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=term_wait_s)
    survivors = tagged_processes(run_id)
    for pid in survivors:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + term_wait_s
    while survivors and time.monotonic() < deadline:
        time.sleep(0.5)
        survivors = [pid for pid in survivors if _alive(pid)]
    for pid in survivors:
        _signal(pid, signal.SIGKILL)


def tagged_processes(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries RESPEC_VERL_RUN_ID=run_id (not this one)."""
    marker = f"{RUN_ID_ENV}={run_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the session leader's pid is its group id (start_new_session)
    except ProcessLookupError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


class _MemoryPeak:
    """Peak summed RSS of the tagged processes and peak host memory in use above the baseline."""

    def __init__(self, run_id: str):
        import psutil

        self._psutil = psutil
        self._run_id = run_id
        self._baseline = psutil.virtual_memory().used
        self.run_peak = 0
        self.host_peak = 0

    def sample(self) -> None:
        rss = 0
        for pid in tagged_processes(self._run_id):
            try:
                rss += self._psutil.Process(pid).memory_info().rss
            except self._psutil.Error:
                continue
        self.run_peak = max(self.run_peak, rss)
        self.host_peak = max(self.host_peak, self._psutil.virtual_memory().used - self._baseline)


def parse_step_metrics(lines) -> dict[int, dict[str, float]]:
    """verl's console logger lines ("step:N - key:value - ...") as {step: {key: value}}."""
    metrics: dict[int, dict[str, float]] = {}
    pattern = re.compile(verl_compat.STEP_LINE_PATTERN)
    for line in lines:
        match = pattern.search(line)
        if not match:
            continue
        step = metrics.setdefault(int(match.group(1)), {})
        for item in match.group(2).split(" - "):
            key, sep, value = item.rpartition(":")
            if not sep:
                continue
            try:
                step[key.strip()] = float(value)
            except ValueError:
                continue
    return metrics
