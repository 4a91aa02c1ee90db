"""How the boundary modules name what they use of an upstream: an object by its import path, a line by its text.

Each entry can be checked against the installed upstream without running it
(`tests/test_upstream_contracts.py` resolves every one), so an upgrade that moves a name fails there,
naming the entry, instead of deep inside a run.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UpstreamName:
    """`module` imported, then `attr` (dotted, "" for the module itself) looked up on it."""

    module: str
    attr: str = ""

    def resolve(self):
        found = importlib.import_module(self.module)
        for part in filter(None, self.attr.split(".")):
            found = getattr(found, part)
        return found

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}" if self.attr else self.module


@dataclass(frozen=True)
class UpstreamText:
    """A text upstream emits (a log line, an error) that we match; `file` is where it is written.

    `file` is relative to the folder of `module`'s package; empty means `module`'s own file. Binary
    files count: Ray's raylet writes some of the lines we watch for.
    """

    module: str
    text: str
    file: str = ""

    def source(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(self.module)
        origin = Path(spec.origin)
        if not self.file:
            return origin
        return origin.parent / self.file

    def present(self) -> bool:
        return self.text.encode() in self.source().read_bytes()
