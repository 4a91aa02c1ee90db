"""B14: keep the weight-sync socket of concurrent verl runs on one host apart.

verl's colocated weight sync meets on a ZMQ socket at a fixed path,
`ipc:///tmp/rl-colocate-zmq-{ray job id}-replica-{r}-rank-{k}.sock`, built twice: by the sender
(`vllm_rollout.ServerAdapter.__init__`) and by the receiver in the vLLM worker
(`vLLMColocateWorkerExtension._get_zmq_handle`). The Ray job id is meant to keep jobs apart, but
every fresh local Ray cluster numbers its first job `01000000`, so two runs on one machine (two
CI jobs, or a developer's run beside a test) share a path, and the sender of one removes and
rebinds the other's socket. Found by reading verl's code after a second, unrelated run had
started on the same 2-core host during this project's end-to-end test (that test then failed
earlier, on Ray's start-up under the load; the socket clash itself was not observed).

The patch moves both ends under `tempfile.gettempdir()`, i.e. `$TMPDIR`, which our launcher makes
private to each run and every process of the run inherits. With TMPDIR unset both ends stay in
/tmp, exactly as before.
"""

from __future__ import annotations

import functools
import tempfile
from types import ModuleType

from respec_verl.upstream.verl_compat import COLOCATE_EXTENSION, SERVER_ADAPTER, set_zmq_handle_method, zmq_handle_method

SENDER_MODULE = SERVER_ADAPTER.module
RECEIVER_MODULE = COLOCATE_EXTENSION.module
SHARED_PREFIX = "ipc:///tmp/"


def private_handle(handle: str) -> str:
    """"ipc:///tmp/x.sock" -> "ipc://$TMPDIR/x.sock"; anything else unchanged."""
    tmp = tempfile.gettempdir().rstrip("/")
    if not isinstance(handle, str) or not handle.startswith(SHARED_PREFIX) or tmp == "/tmp":
        return handle
    return f"ipc://{tmp}/{handle[len(SHARED_PREFIX):]}"


def patch_sender(module: ModuleType) -> None:
    adapter = getattr(module, SERVER_ADAPTER.attr)
    init = adapter.__init__
    if getattr(init, "_respec_private_socket", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if hasattr(self, "zmq_handle"):
            self.zmq_handle = private_handle(self.zmq_handle)

    __init__._respec_private_socket = True
    adapter.__init__ = __init__


def patch_receiver(module: ModuleType) -> None:
    extension = getattr(module, COLOCATE_EXTENSION.attr)
    get_handle = zmq_handle_method(extension)
    if getattr(get_handle, "_respec_private_socket", False):
        return

    @functools.wraps(get_handle)
    def _get_zmq_handle(self) -> str:
        return private_handle(get_handle(self))

    _get_zmq_handle._respec_private_socket = True
    set_zmq_handle_method(extension, _get_zmq_handle)


def install() -> None:
    from respec_verl.verl_glue.import_hooks import when_imported

    when_imported(SENDER_MODULE, patch_sender)
    when_imported(RECEIVER_MODULE, patch_receiver)
