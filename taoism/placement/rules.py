"""Placement rules: which side each graph node runs on.

Matched by node name, then module path, then module type (``"type:ReLU"`` or a class key such as
``nn.GELU``), then regex, then the default.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taoism.capture import CapturedGraph
from taoism.errors import ConfigError, PlacementError
from taoism.placement.modes import EnclaveMode

DEFAULT_KEY = "_default"
REGEX_PREFIX = "re:"
TYPE_PREFIX = "type:"

PlacementSpec = Mapping[Any, "EnclaveMode | str"] | str | os.PathLike | None  # keys: str or type


def _type_names(cls: type) -> set[str]:
    """Every name a ``type:`` key may use for ``cls`` or a base class (short or dotted)."""
    return {n for c in cls.__mro__ for n in (c.__name__, f"{c.__module__}.{c.__qualname__}")}


def _type_key(key: str | type) -> str:
    return key if isinstance(key, str) else f"{key.__module__}.{key.__qualname__}"


@dataclass(frozen=True)
class PlacementRules:
    """Exact names (node names, then the longest module path), then module types (the innermost
    enclosing module whose class or a base class is named), then regexes in order, then the
    default."""

    exact: tuple[tuple[str, EnclaveMode], ...] = ()
    regex: tuple[tuple[str, EnclaveMode], ...] = ()
    default: EnclaveMode = EnclaveMode.GPU
    types: tuple[tuple[str, EnclaveMode], ...] = ()  # class names (short or dotted), spec order

    @classmethod
    def from_spec(cls, spec: PlacementSpec) -> PlacementRules:
        """Build rules from a mapping, a JSON plan file path, or None (everything on the device)."""
        if spec is None:
            return cls()
        if isinstance(spec, (str, os.PathLike)):
            return cls.from_file(spec)
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"placement must be a dict, a JSON file path or None, got {type(spec).__name__}"
            )
        exact, regex, types, default = [], [], [], EnclaveMode.GPU
        for key, mode in spec.items():
            if isinstance(key, type):
                types.append((_type_key(key), EnclaveMode.parse(mode)))
                continue
            if not isinstance(key, str):
                raise ConfigError(
                    f"placement key {key!r} must be a string (a name, 're:<regex>', "
                    "'type:<ClassName>', '_default') or a module class such as nn.ReLU"
                )
            m = EnclaveMode.parse(mode)
            if key.startswith(TYPE_PREFIX):
                if not key[len(TYPE_PREFIX) :].strip():
                    raise ConfigError(f"placement key {key!r} names no class; e.g. 'type:ReLU'")
                types.append((key[len(TYPE_PREFIX) :].strip(), m))
            elif key == DEFAULT_KEY:
                default = m
            elif key.startswith(REGEX_PREFIX):
                try:
                    re.compile(key[len(REGEX_PREFIX) :])
                except re.error as exc:
                    raise ConfigError(f"placement regex {key!r} does not compile: {exc}") from None
                regex.append((key[len(REGEX_PREFIX) :], m))
            else:
                exact.append((key, m))
        return cls(tuple(exact), tuple(regex), default, tuple(types))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PlacementRules:
        p = Path(path)
        try:
            data: Any = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"placement file {str(p)!r} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"placement file {str(p)!r} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "placement" in data:
            data = data["placement"]
        if not isinstance(data, dict):
            raise ConfigError(
                f"placement file {str(p)!r} must hold an object mapping names to "
                "GPU/ENCLAVE/AUTO (or a saved plan with a 'placement' key)"
            )
        return cls.from_spec(data)

    def to_json(self) -> dict[str, str]:
        out = {k: m.value for k, m in self.exact}
        out.update({TYPE_PREFIX + t: m.value for t, m in self.types})
        out.update({REGEX_PREFIX + r: m.value for r, m in self.regex})
        out[DEFAULT_KEY] = self.default.value
        return out

    def assign(self, captured: CapturedGraph) -> dict[str, EnclaveMode]:
        """Raw mode per compute node (AUTO not yet resolved); unknown names are an error."""
        infos = [i for i in captured.nodes.values() if i.op not in ("placeholder", "output")]
        classes = dict(captured.module_classes) or {
            n: type(m) for n, m in captured.gm.named_modules()
        }
        module_names = {name for name, _ in captured.gm.named_modules() if name} | {
            n for n in classes if n
        }
        node_names = {i.name for i in infos}
        for key, _ in self.exact:
            if key not in module_names and key not in node_names:
                close = sorted(n for n in module_names | node_names if key.split(".")[0] in n)[:5]
                raise PlacementError(
                    f"placement names {key!r}, which is neither a module nor a graph node of this "
                    f"model; similar names: {close or sorted(module_names)[:5]}. "
                    "Run `taoism plan` or print(sm.plan) to list the names"
                )
        names_of = {path: _type_names(c) for path, c in classes.items()}
        for t, _ in self.types:
            if not any(t in names for names in names_of.values()):
                present = sorted({c.__name__ for c in classes.values()})
                raise PlacementError(
                    f"placement key {TYPE_PREFIX + t!r} matches no module of this "
                    f"model; module types present: {present[:12]}"
                )
        compiled = [(re.compile(r), m, r) for r, m in self.regex]
        used = set()
        out: dict[str, EnclaveMode] = {}
        for info in infos:
            mode = self._match_exact(info)
            if mode is None:
                mode = self._match_type(info, names_of)
            if mode is None:
                for rx, m, r in compiled:
                    if any(
                        rx.fullmatch(s) for s in (info.name, info.module_path, info.target) if s
                    ):
                        mode = m
                        used.add(r)
                        break
            out[info.name] = mode if mode is not None else self.default
        unused = [
            r
            for r, _ in self.regex
            if r not in used
            and not any(
                re.fullmatch(r, i.name)
                or re.fullmatch(r, i.module_path)
                or re.fullmatch(r, i.target)
                for i in infos
            )
        ]
        if unused:
            raise PlacementError(
                f"placement regex {REGEX_PREFIX + unused[0]!r} matches no node or "
                "module of this model; fix or remove it (regexes must match the "
                "whole name, e.g. 're:.*relu.*')"
            )
        return out

    def _match_type(self, info: Any, names_of: Mapping[str, set[str]]) -> EnclaveMode | None:
        """The innermost module around the node whose class (or a base) a type key names."""
        if not self.types:
            return None
        parts = info.module_path.split(".") if info.module_path else []
        for depth in range(len(parts), -1, -1):
            names = names_of.get(".".join(parts[:depth]), set())
            for t, m in self.types:
                if t in names:
                    return m
        return None

    def _match_exact(self, info: Any) -> EnclaveMode | None:
        """A node's own name wins, then the longest module path that contains the node."""
        best, best_len = None, -1
        for key, m in self.exact:
            if key == info.name:
                return m
            path = info.module_path
            if path and (path == key or path.startswith(key + ".")) and len(key) > best_len:
                best, best_len = m, len(key)
        return best
