"""Find enclave backends by name: the built-ins, then the ``taoism.backends`` entry points."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib import metadata
from types import MappingProxyType

from taoism.backends.base import EnclaveBackend
from taoism.config import EnclaveConfig
from taoism.errors import BackendUnavailable, ConfigError

# name -> "module:Class"; imported lazily so a missing SDK never breaks `import taoism`.
BUILTIN_BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "sim": "taoism.backends.sim:SimBackend",
        "gramine": "taoism.backends.gramine:GramineBackend",
    }
)

ENTRY_POINT_GROUP = "taoism.backends"


def available_backends() -> list[str]:
    """Names of every backend this installation knows (not all may run on this platform)."""
    names = set(BUILTIN_BACKENDS)
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_backend(name: str, config: EnclaveConfig | None = None) -> type[EnclaveBackend]:
    """The backend class called ``name``; raises if unknown or if its platform is missing."""
    target = BUILTIN_BACKENDS.get(name)
    if target is None:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if name not in eps:
            raise ConfigError(
                f"unknown enclave backend {name!r}; available: {available_backends()}. "
                f"Third-party backends register under the entry point group "
                f"{ENTRY_POINT_GROUP!r}"
            )
        cls = eps[name].load()
    else:
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, EnclaveBackend)):
        raise ConfigError(f"backend {name!r} does not implement taoism.backends.EnclaveBackend")
    cls.check_platform(config or EnclaveConfig(backend=name))
    return cls


__all__ = ["BUILTIN_BACKENDS", "BackendUnavailable", "available_backends", "get_backend"]
