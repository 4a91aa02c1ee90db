"""Step costs per batch size and k: what the controller divides its predicted tokens by.

Whether speculation pays depends on where a step leaves the memory-bound regime, which depends
on the model, dtype, device and context length. So the costs are measured once on the machine
(through the engine that runs the steps: `engine_profile`, `vllm_glue.step_profile`), saved as
JSON keyed by what they were measured on, and interpolated in batch size at run time.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from respec_verl.speculation.drafting import DraftSource
from respec_verl.storage.json_file import write_json_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ProfileKey:
    """What a profile was measured on: step times do not transfer across models, dtypes or devices.

    `drafter` names the drafter too, since the draft times are its own.
    """

    model: str
    dtype: str
    device: str
    drafter: str = ""

    @classmethod
    def of(cls, target: torch.nn.Module, drafter: DraftSource | None = None, model_name: str | None = None) -> ProfileKey:
        """The key of `target` (and `drafter`) as they are loaded now."""
        param = next(target.parameters())
        name = model_name or getattr(target.config, "name_or_path", "") or type(target).__name__
        if param.device.type == "cuda":
            device = f"cuda:{torch.cuda.get_device_name(param.device)}"
        else:  # CPU step times scale with the thread count
            device = f"{param.device.type}:{torch.get_num_threads()}threads"
        draft_name = "" if drafter is None else drafter.describe()
        return cls(str(name), str(param.dtype).removeprefix("torch."), device, draft_name)


@dataclass
class StepCostProfile:
    """Seconds per engine step, keyed by (context_len, batch_size[, k]).

    `decode_s`: one plain decoding step of the target. `draft_s`: the drafter proposing k tokens
    (its k forward passes, the first one feeding the token the target emitted last step).
    `verify_s`: the target's forward over the k + 1 tokens [last, d_1..d_k] (these two from the
    offline `forward_profile`). `engine_s`: whole speculative engine steps at k > 0 measured
    through the engine loop (`engine_profile`, `vllm_glue.step_profile`), which also pay sampling,
    KV rollback and bookkeeping; where present they replace draft + verify.
    """

    key: ProfileKey
    decode_s: dict[tuple[int, int], float] = field(default_factory=dict)
    draft_s: dict[tuple[int, int, int], float] = field(default_factory=dict)
    verify_s: dict[tuple[int, int, int], float] = field(default_factory=dict)
    engine_s: dict[tuple[int, int, int], float] = field(default_factory=dict)

    @property
    def context_lens(self) -> list[int]:
        return sorted({c for c, _ in self.decode_s} | {c for c, _, _ in (*self.verify_s, *self.engine_s)})

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({b for _, b in self.decode_s} | {b for _, b, _ in (*self.verify_s, *self.engine_s)})

    @property
    def ks(self) -> list[int]:
        return sorted({k for _, _, k in self.verify_s} | {k for _, _, k in self.draft_s} | {k for _, _, k in self.engine_s})

    @property
    def has_spec_times(self) -> bool:
        """Whether speculative steps can be predicted (draft and verify, or whole engine steps)."""
        return bool(self.engine_s) or bool(self.draft_s and self.verify_s)

    def missing(self) -> list[str]:
        """Grid points without a measurement (empty for a complete table)."""
        gaps = []
        tables = (("engine", self.engine_s),) if self.engine_s else (("draft", self.draft_s), ("verify", self.verify_s))
        for c in self.context_lens:
            for b in self.batch_sizes:
                if (c, b) not in self.decode_s:
                    gaps.append(f"decode context_len={c} batch_size={b}")
                for k in self.ks:
                    for name, table in tables:
                        if (c, b, k) not in table:
                            gaps.append(f"{name} context_len={c} batch_size={b} k={k}")
        return gaps

    def decode_time(self, batch_size: int, context_len: int | None = None) -> float:
        ctx = self.bucket(context_len)
        points = {b: t for (c, b), t in self.decode_s.items() if c == ctx}
        if not points:
            raise ValueError(f"profile {self.key} has no plain decoding times for context_len={ctx}")
        return interpolate(points, batch_size)

    def draft_time(self, batch_size: int, k: int, context_len: int | None = None) -> float:
        return _interp_grid(self.draft_s, self.bucket(context_len), batch_size, k, f"draft ({self.key})")

    def verify_time(self, batch_size: int, k: int, context_len: int | None = None) -> float:
        return _interp_grid(self.verify_s, self.bucket(context_len), batch_size, k, f"verify ({self.key})")

    def step_time(self, batch_size: int, k: int, context_len: int | None = None) -> float:
        """Predicted seconds of one engine step drafting k tokens (k = 0: plain decoding)."""
        if k == 0:
            return self.decode_time(batch_size, context_len)
        ctx = self.bucket(context_len)
        if any(c == ctx for c, _, _ in self.engine_s):
            return _interp_grid(self.engine_s, ctx, batch_size, k, f"engine ({self.key})")
        return self.draft_time(batch_size, k, context_len) + self.verify_time(batch_size, k, context_len)

    def bucket(self, context_len: int | None) -> int:
        """The measured context length nearest to `context_len` (None: the shortest one measured)."""
        lens = self.context_lens
        if not lens:
            raise ValueError(f"profile {self.key} is empty")
        if context_len is None:
            return lens[0]
        return min(lens, key=lambda c: (abs(c - context_len), -c))

    def to_dict(self) -> dict:
        """Plain rows, readable in the JSON file and exact under a JSON round trip."""
        spec_keys = sorted(set(self.draft_s) | set(self.verify_s))
        doc = {
            "key": asdict(self.key),
            "decode": [
                {"context_len": c, "batch_size": b, "decode_s": t} for (c, b), t in sorted(self.decode_s.items())
            ],
            "spec": [
                {
                    "context_len": c,
                    "batch_size": b,
                    "k": k,
                    "draft_s": self.draft_s.get((c, b, k)),
                    "verify_s": self.verify_s.get((c, b, k)),
                }
                for c, b, k in spec_keys
            ],
        }
        if self.engine_s:
            doc["engine"] = [
                {"context_len": c, "batch_size": b, "k": k, "step_s": t} for (c, b, k), t in sorted(self.engine_s.items())
            ]
        return doc

    @classmethod
    def from_dict(cls, data: dict) -> StepCostProfile:
        profile = cls(ProfileKey(**data["key"]))
        for row in data["decode"]:
            profile.decode_s[(int(row["context_len"]), int(row["batch_size"]))] = float(row["decode_s"])
        for row in data["spec"]:
            point = (int(row["context_len"]), int(row["batch_size"]), int(row["k"]))
            if row.get("draft_s") is not None:
                profile.draft_s[point] = float(row["draft_s"])
            if row.get("verify_s") is not None:
                profile.verify_s[point] = float(row["verify_s"])
        for row in data.get("engine", []):
            profile.engine_s[(int(row["context_len"]), int(row["batch_size"]), int(row["k"]))] = float(row["step_s"])
        return profile

    def save(self, path: str | os.PathLike) -> None:
        """Add or replace this key's profile in the JSON file, keeping the others; atomic."""
        path = Path(path)
        others = [p for p in _read_profiles(path) if p.get("key") != asdict(self.key)] if path.exists() else []
        write_json_atomic(path, {"format_version": FORMAT_VERSION, "profiles": others + [self.to_dict()]})

    @classmethod
    def load(cls, path: str | os.PathLike, key: ProfileKey) -> StepCostProfile:
        """The profile measured for `key`; KeyError (listing what the file has) when there is none."""
        profiles = _read_profiles(Path(path))
        for data in profiles:
            if data.get("key") == asdict(key):
                return cls.from_dict(data)
        have = [str(ProfileKey(**p["key"])) for p in profiles]
        raise KeyError(f"no step-cost profile for {key} in {path}; it holds {have}. Run `respec-verl profile` first")


def _read_profiles(path: Path) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: profile format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
    return list(doc["profiles"])


def interpolate(points: dict[int, float], x: float) -> float:
    """Piecewise linear through measured (x, t) points.

    Below the first point: flat (a smaller batch is already memory-bound, and extrapolating down
    could predict times near zero). Above the last: the last segment's slope, at least 0 (the
    compute-bound regime grows linearly in tokens; noise must not predict a faster larger batch).
    """
    xs = sorted(points)
    ys = [points[p] for p in xs]
    if x <= xs[0] or len(xs) == 1:
        return ys[0]
    if x >= xs[-1]:
        slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        return ys[-1] + slope * (x - xs[-1])
    i = bisect_right(xs, x) - 1
    w = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + w * (ys[i + 1] - ys[i])


def _interp_grid(table: dict[tuple[int, int, int], float], ctx: int, batch_size: int, k: int, what: str) -> float:
    """Interpolate in batch size for every measured k, then in k."""
    by_k: dict[int, dict[int, float]] = {}
    for (c, b, kk), t in table.items():
        if c == ctx:
            by_k.setdefault(kk, {})[b] = t
    if not by_k:
        raise ValueError(f"profile has no {what} times for context_len={ctx}")
    return interpolate({kk: interpolate(points, batch_size) for kk, points in by_k.items()}, k)


def check_grid(batch_sizes: Sequence[int], ks: Sequence[int]) -> None:
    """A profile's grid: batch sizes and draft lengths, each a non-empty list of integers >= 1."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"profile batch_sizes must be a non-empty list of integers >= 1, got {list(batch_sizes)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"profile ks must be a non-empty list of integers >= 1, got {list(ks)}")
