"""Post-import hooks: run a function on a module when it is imported, or at once if it already is.

The CPU patches target verl and vLLM submodules that many processes never load (the vLLM worker
loads the rollout modules, the trainer workers do not), and importing them eagerly from the plugin
would pull vLLM into every Ray process. `when_imported` defers each patch until its module loads.

It works with a finder at the front of `sys.meta_path`: for a watched name it asks the other
finders for the real spec and wraps that spec's loader, so the hooks run right after the module's
code has executed, inside the import, before the importer gets the module back. Hooks must be
idempotent: a module imported again (removed from `sys.modules`, or reloaded) runs them again.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType

logger = logging.getLogger(__name__)

Hook = Callable[[ModuleType], None]

_hooks: dict[str, list[Hook]] = {}
_lock = threading.RLock()
_searching = threading.local()  # names whose real spec this thread is looking up (no recursion)


def when_imported(name: str, hook: Hook) -> None:
    """Call `hook(module)` once `name` is imported; at once if it is already imported.

    A module that is half-initialised right now (this call comes from inside its import) cannot be
    patched yet; its hook runs on its next import instead, and a warning says so.
    """
    with _lock:
        _install_finder()
        _hooks.setdefault(name, []).append(hook)
        module = sys.modules.get(name)
    if module is None:
        return
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        logger.warning("%s is being imported right now; %s will run when it is next imported", name, hook)
        return
    hook(module)


def registered(name: str) -> list[Hook]:
    """The hooks waiting on, or already run for, module `name`."""
    with _lock:
        return list(_hooks.get(name, ()))


def _run_hooks(module: ModuleType) -> None:
    with _lock:
        hooks = list(_hooks.get(module.__name__, ()))
    for hook in hooks:
        hook(module)


class _HookedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the hooks of the module it has just executed."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run_hooks(module)

    def __getattr__(self, attr):  # get_code, get_resource_reader, is_package, ...
        return getattr(self._loader, attr)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; for watched names it wraps the loader of the spec the others find."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _hooks:
            return None
        searching = _searching.__dict__.setdefault("names", set())
        if fullname in searching:
            return None
        searching.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:  # the finders after us, in the order Python would ask them
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            searching.discard(fullname)
        if spec is None or spec.loader is None or isinstance(spec.loader, _HookedLoader):
            return spec
        spec.loader = _HookedLoader(spec.loader)
        return spec


_finder = _PostImportFinder()


def _install_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
