"""Selection of the boundary's compiled hot path (``_fastpath``, built by the ordinary install).

The compiled path lays out, encrypts and decrypts a frame in one C call each (AES-256-GCM from
the system libcrypto for short bodies, from the ``cryptography`` package's ``AESGCM`` called
from C for long ones); the pure-Python path in ``channel`` does the same with ``struct``, ``ctypes`` and the
``cryptography`` package, byte for byte (``tests/test_fastpath.py``). ``TAOISM_PURE_BOUNDARY=1``
or ``ChannelConfig(compiled=False)`` forces the pure path; so does an install that could not
build the extension (no C compiler or OpenSSL headers).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import torch
from cryptography.exceptions import InvalidTag

from taoism.boundary.frame import CODE_DTYPES

#: Set to "1" to force the pure-Python path in every channel of the process.
ENV_PURE = "TAOISM_PURE_BOUNDARY"
# The torch.dtype of each wire code 0..9 (0: none), as the C sealer maps them.
_DTYPES = (None, *(CODE_DTYPES[c] for c in range(1, 10)))


def built() -> ModuleType | None:
    """The compiled module, or None where the install could not build it."""
    try:
        return importlib.import_module("taoism.boundary._fastpath")
    except ImportError:
        return None


def forced_pure() -> bool:
    """Whether ``TAOISM_PURE_BOUNDARY=1`` forces the pure-Python path."""
    return os.environ.get(ENV_PURE) == "1"


def select(compiled: bool) -> ModuleType | None:
    """The compiled module for a new channel, or None for the pure-Python path."""
    if not compiled or forced_pure():
        return None
    return built()


def new_sealer(
    mod: ModuleType, key: bytes, prefix: bytes, max_body: int = 1 << 62, aead: Any = None
) -> Any:
    """A compiled sealer: one direction's AES-256-GCM context, keyed now (``close()`` wipes it).

    Bodies of at most ``max_body`` bytes are encrypted with the extension's libcrypto; longer ones
    with ``aead`` (the session's ``AESGCM`` of this direction, the pure path's own object), or,
    without it, declined (``seal`` returns -1).
    """
    return mod.Sealer(key, prefix, torch.Tensor, _DTYPES, max_body, aead)


def new_opener(
    mod: ModuleType, key: bytes, prefix: bytes, max_body: int = 1 << 62, aead: Any = None
) -> Any:
    """A compiled opener: one direction's AES-256-GCM context, keyed now (``close()`` wipes it).

    Bodies longer than ``max_body`` are decrypted with ``aead`` where it is given.
    """
    return mod.Opener(key, prefix, max_body, aead, InvalidTag)


__all__ = ["ENV_PURE", "built", "forced_pure", "new_opener", "new_sealer", "select"]
