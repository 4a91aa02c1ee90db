"""B15: give the heap that a CPU run's processes free back to the OS every few seconds.

On a CPU host the model, its gradients, the optimizer, the logits and vLLM's weight buffers all
live in the C heap (glibc malloc), and glibc keeps most of what torch frees: tensors of up to
32 MiB come from the heap once a larger one has been freed (the dynamic mmap threshold), and a
freed chunk below the top of an arena is not returned by free(). Each process of a run then holds the
high-water mark of every phase it went through (the trainer's old-log-prob pass, its update,
the weight sync; vLLM's weight reload), which adds up across the ~15 processes of a verl run.
Trimming returns those pages between phases, which lowers both each worker's resident memory
between updates and the run's peak (docs/notebook/verl-e2e-and-demo.md, section 5 "Memory").

`MALLOC_MMAP_THRESHOLD_` fixes the retention at its source (the same peak in the demo), but every
large tensor then gets fresh pages to fault in. Instead, changing nothing in how memory is handed
out, a daemon thread calls `malloc_trim(0)` every `RESPEC_VERL_HEAP_TRIM_S` seconds (default 2;
0 turns it off), which releases the free pages of every arena and costs milliseconds. It is
started in every process that enables CPU support (`import verl`), again in a forked child, and
does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

ENV = "RESPEC_VERL_HEAP_TRIM_S"
DEFAULT_INTERVAL_S = 2.0

_thread: threading.Thread | None = None
_fork_hook_installed = False


def interval_s() -> float:
    """Seconds between trims from RESPEC_VERL_HEAP_TRIM_S (0: off); a bad value names the variable."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{ENV} = {raw!r} is not valid; allowed: a number of seconds >= 0 (0 turns trimming off)")
    return value


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)` (returns 1 when memory was released), or None without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _loop(trim: Callable[[int], int], every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        trim(0)


def install(stop: threading.Event | None = None) -> threading.Thread | None:
    """Start this process's trimming thread (once per process); returns it, or None when off."""
    global _thread, _fork_hook_installed
    every_s = interval_s()
    trim = malloc_trim()
    if every_s == 0 or trim is None:
        return None
    if _thread is not None and _thread.is_alive():  # after a fork, threading marks it stopped
        return _thread
    if not _fork_hook_installed:  # a forked child has no threads but the one that forked
        os.register_at_fork(after_in_child=_restart_in_child)
        _fork_hook_installed = True
    _thread = threading.Thread(
        target=_loop, args=(trim, every_s, stop or threading.Event()), name="respec-heap-trim", daemon=True
    )
    _thread.start()
    logger.debug("respec_verl: trimming the heap every %.1f s", every_s)
    return _thread


def _restart_in_child() -> None:
    try:
        install()  # the parent's thread object is there but not alive in the child
    except Exception:  # a fork hook must not raise into the child
        logger.exception("respec_verl: could not start the heap-trimming thread in a forked child")
