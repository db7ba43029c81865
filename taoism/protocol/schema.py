"""The program description schema and the reply metadata, as both sides of the boundary read them.

A program description is JSON sent with ``Kind.LOAD`` (weights follow as tensors, in the order of
``tensors``)::

    {"format": "taoism-enclave-program/1",
     "modules":   {key: {"type", "config", "tensors", "absent"?, "path"?}},
     "constants": [key, ...],
     "tensors":   ["<module key>.<tensor name>" | <constant key>, ...],
     "segments":  [{"id", "inputs", "send_in", "returns", "keep", "free",
                    "nodes": [{"name", "op", "args", "kwargs", "module" | "fn" | "method" | "tensor"}]}],
     "memory":    MemorySection | null}

Nothing here holds a tensor's data: only names, shapes, configs and numbers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taoism.errors import ProgramError

_TIMES = struct.Struct(
    "<Bdd"
)  # an unprofiled RESULT's blob: 0 (never JSON's "{"), compute_s, crypto_s

PROGRAM_FORMAT = "taoism-enclave-program/1"
DEFAULT_PAGE_BYTES = 1 << 20  # a sealed page when the budget does not ask for smaller ones
DEFAULT_BOUNDARY_BYTES = 64 << 10  # the channel's initial staging buffer
MIN_PAGE_BYTES = 256


def names(v: object, what: str) -> tuple[str, ...]:
    """``v`` as a tuple of names; ProgramError unless it is a list of strings."""
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ProgramError(
            f"program description: {what} must be a list of names, got {type(v).__name__}"
        )
    return tuple(v)


def parse_program(blob: bytes, n_tensors: int) -> dict[str, Any]:
    """Decode a LOAD blob and check its top level against ``n_tensors`` arriving tensors."""
    try:
        desc = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProgramError(f"program description is not JSON: {exc}") from None
    if not isinstance(desc, dict):
        raise ProgramError("program description must be a JSON object")
    tensor_names = desc.get("tensors", [])
    if not isinstance(tensor_names, list) or len(tensor_names) != n_tensors:
        got = len(tensor_names) if isinstance(tensor_names, list) else "?"
        raise ProgramError(f"program description names {got} tensors but {n_tensors} arrived")
    names(tensor_names, "tensors")
    for key in ("modules",):
        if not isinstance(desc.get(key, {}), dict):
            raise ProgramError(f"program description: {key!r} must be an object")
    if not isinstance(desc.get("segments", []), list):
        raise ProgramError("program description: 'segments' must be a list")
    if desc.get("memory") is not None and not isinstance(desc["memory"], dict):
        raise ProgramError("program description: 'memory' must be an object")
    return desc


@dataclass(frozen=True)
class MemorySection:
    """The ``memory`` section: the enclave's budget and the planner's load-time choices."""

    tee: str = "unlimited"
    budget_bytes: int | None = None
    page_bytes: int = DEFAULT_PAGE_BYTES
    resident_weight_fraction: float = 0.5
    sealed_modules: tuple[str, ...] | None = None  # None: the enclave's default policy chooses
    module_paths: Mapping[str, str] = field(default_factory=dict)
    boundary_bytes: int = DEFAULT_BOUNDARY_BYTES

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> MemorySection:
        """Validate a ``memory`` section (None: unlimited, accounting only)."""
        spec = dict(spec or {})
        budget = spec.get("budget_bytes")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0
        ):
            raise ProgramError(
                f"memory section: budget_bytes must be a positive int or null, got {budget!r}"
            )
        page = spec.get("page_bytes") or (
            min(DEFAULT_PAGE_BYTES, max(4096, budget // 32)) if budget else DEFAULT_PAGE_BYTES
        )
        if isinstance(page, bool) or not isinstance(page, int) or page < MIN_PAGE_BYTES:
            raise ProgramError(
                f"memory section: page_bytes must be an int >= {MIN_PAGE_BYTES}, got {page!r}"
            )
        frac = spec.get("resident_weight_fraction", 0.5)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
            raise ProgramError(
                f"memory section: resident_weight_fraction must be in [0, 1], got {frac!r}"
            )
        paths = spec.get("module_paths") or {}
        if not isinstance(paths, dict):
            raise ProgramError("memory section: module_paths must be an object")
        sealed = spec.get("sealed_modules")
        if sealed is not None:
            sealed = names(sealed, "memory section: sealed_modules")
        boundary = spec.get("boundary_bytes", DEFAULT_BOUNDARY_BYTES)
        if isinstance(boundary, bool) or not isinstance(boundary, int) or boundary < 0:
            raise ProgramError(
                f"memory section: boundary_bytes must be an int >= 0, got {boundary!r}"
            )
        return cls(
            tee=str(spec.get("tee", "unlimited")),
            budget_bytes=budget,
            page_bytes=page,
            resident_weight_fraction=float(frac),
            sealed_modules=sealed,
            module_paths={str(k): str(v) for k, v in paths.items()},
            boundary_bytes=boundary,
        )

    def to_json(self) -> dict[str, Any]:
        """The section as it goes into a program description."""
        out: dict[str, Any] = {
            "tee": self.tee,
            "budget_bytes": self.budget_bytes,
            "page_bytes": self.page_bytes,
            "resident_weight_fraction": self.resident_weight_fraction,
            "module_paths": dict(self.module_paths),
        }
        if self.sealed_modules is not None:
            out["sealed_modules"] = list(self.sealed_modules)
        return out


@dataclass(frozen=True)
class ReplyMeta:
    """The blob of a ``Kind.RESULT`` reply: the enclave's timings and, profiled, its memory."""

    compute_s: float  # time computing the segment inside the enclave
    crypto_s: float  # time the enclave spent decrypting the request (and staging the reply)
    node_times: tuple[float, ...] | None = None  # per node, in the segment's node order, profiled
    memory: Mapping[str, Any] | None = None  # the enclave's memory report of the run, profiled

    def encode(self) -> bytes:
        """The reply blob: 17 bytes (a zero byte, two little-endian doubles) unprofiled, else JSON."""
        if self.node_times is None and self.memory is None:
            return self.pack_times(self.compute_s, self.crypto_s)
        out: dict[str, Any] = {"compute_s": self.compute_s, "crypto_s": self.crypto_s}
        if self.node_times is not None:
            out["node_times"] = list(self.node_times)
        if self.memory is not None:
            out["memory"] = dict(self.memory)
        return json.dumps(out).encode()

    @staticmethod
    def pack_times(compute_s: float, crypto_s: float) -> bytes:
        """The unprofiled blob (what :meth:`encode` writes without node times and memory)."""
        return _TIMES.pack(0, compute_s, crypto_s)  # the per-crossing hot path

    @staticmethod
    def unpack_times(blob: bytes) -> tuple[float, float] | None:
        """(compute_s, crypto_s) of an unprofiled blob; None for any other (ask :meth:`decode`)."""
        if len(blob) != _TIMES.size or blob[:1] != b"\x00":
            return None
        _, compute_s, crypto_s = _TIMES.unpack(blob)
        return compute_s, crypto_s

    @classmethod
    def decode(cls, blob: bytes) -> ReplyMeta:
        """Parse a reply blob; ProgramError if it is not one."""
        if blob[:1] == b"\x00":
            if len(blob) != _TIMES.size:
                raise ProgramError(
                    f"enclave reply metadata is malformed: binary form of {len(blob)} bytes, "
                    f"expected {_TIMES.size}"
                )
            _, compute_s, crypto_s = _TIMES.unpack(blob)
            return cls(compute_s, crypto_s)
        try:
            d = json.loads(blob)
            times = d.get("node_times")
            return cls(
                float(d["compute_s"]),
                float(d["crypto_s"]),
                tuple(float(t) for t in times) if times is not None else None,
                d.get("memory"),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProgramError(
                f"enclave reply metadata is malformed ({type(exc).__name__}: {exc})"
            ) from None


__all__ = [
    "DEFAULT_BOUNDARY_BYTES",
    "DEFAULT_PAGE_BYTES",
    "MemorySection",
    "PROGRAM_FORMAT",
    "ReplyMeta",
    "names",
    "parse_program",
]
