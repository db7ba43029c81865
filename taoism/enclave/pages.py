"""Sealed pages: AES-256-GCM blocks of enclave tensors stored outside the enclave budget.

Each block is sealed under a key generated inside the enclave process (it never leaves it) and
stored in a :class:`PageStore`, which stands for untrusted host memory (outside the memory budget;
an attacker may read or rewrite it). The associated data of every block binds

    the object id (value or weight name), its version, the block's grid index, dtype and shape

so a tampered block, a block moved to another index or another tensor (swapped), or a block
from an older version of the same tensor (stale, replayed) fails authentication and raises
:class:`taoism.errors.IntegrityError`. :mod:`taoism.enclave.paged` cuts tensors into such blocks.

In *meta* mode (``PageSealer(meta=True)``, planning) nothing is encrypted, but every byte that
would be sealed or unsealed is counted the same way.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taoism.errors import IntegrityError

_TAG = 16
_NONCE = struct.Struct(">4sQ")
_NONCE_PREFIX = b"SEAL"


@dataclass(frozen=True)
class SealedPage:
    """One sealed block as stored in untrusted memory: nonce and ciphertext (+ GCM tag)."""

    nonce: bytes
    data: bytearray


class PageStore:
    """Untrusted memory holding sealed pages, keyed by (object id, block index).

    Nothing stored here is trusted: the enclave authenticates every page it reads back.
    """

    def __init__(self) -> None:
        self.pages: dict[tuple[str, tuple[int, ...]], SealedPage] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of ciphertext held."""
        return sum(len(p.data) for p in self.pages.values())

    def __len__(self) -> int:
        return len(self.pages)


@dataclass
class SealStats:
    """Sealing counters (bytes are plaintext bytes)."""

    sealed_bytes: int = 0
    unsealed_bytes: int = 0
    pages_sealed: int = 0
    pages_unsealed: int = 0
    seal_s: float = 0.0
    unseal_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The counters as a JSON object."""
        return dict(vars(self))


def _byte_view(t: torch.Tensor) -> Any:
    """A writable/readable flat uint8 buffer over a contiguous CPU tensor's memory."""
    return t.reshape(-1).view(torch.uint8).numpy()


class PageSealer:
    """Seals and unseals blocks under an enclave-only key (generated here, never exported).

    ``on_bytes(kind, n)`` is called for every page sealed (``"sealed"``) or unsealed
    (``"unsealed"``), for per-layer accounting. ``meta=True``: count only, no crypto.
    """

    def __init__(self, *, meta: bool = False, store: PageStore | None = None) -> None:
        self.meta = meta
        self._aead = None if meta else AESGCM(AESGCM.generate_key(bit_length=256))
        self._counter = 0
        self._version = 0
        self.store = store if store is not None else PageStore()
        self.stats = SealStats()
        self.on_bytes: Callable[[str, int], None] | None = None
        # called with +n / -n around a temporary contiguous copy of a strided block being sealed
        self.on_temp: Callable[[int], None] | None = None

    def next_version(self) -> int:
        """A fresh version number (monotonic for the life of the enclave)."""
        self._version += 1
        return self._version

    @staticmethod
    def associated_data(
        obj: str, version: int, block: tuple[int, ...], dtype: torch.dtype, shape: Sequence[int]
    ) -> bytes:
        """The AEAD associated data binding a page to its object, version, block, dtype and shape."""
        return (
            f"taoism-page/1|{obj}|v{version}|b{','.join(map(str, block))}|"
            f"{str(dtype).removeprefix('torch.')}|{'x'.join(map(str, shape))}"
        ).encode()

    def seal(self, obj: str, version: int, block: tuple[int, ...], t: torch.Tensor) -> None:
        """Encrypt ``t`` (one block) into the store under (obj, block)."""
        n = t.numel() * t.element_size()
        temp = 0
        if not t.is_contiguous():
            temp = n
            if self.on_temp is not None:
                self.on_temp(temp)
        try:
            self._seal(obj, version, block, t, n)
        finally:
            if temp and self.on_temp is not None:
                self.on_temp(-temp)

    def _seal(
        self, obj: str, version: int, block: tuple[int, ...], t: torch.Tensor, n: int
    ) -> None:
        if not self.meta:
            t0 = time.perf_counter()
            if not t.is_contiguous():
                t = t.contiguous()
            self._counter += 1
            nonce = _NONCE.pack(_NONCE_PREFIX, self._counter)  # never repeats under this key
            buf = bytearray(n + _TAG)
            aad = self.associated_data(obj, version, block, t.dtype, t.shape)
            assert self._aead is not None
            self._aead.encrypt_into(nonce, _byte_view(t) if n else b"", aad, buf)
            self.store.pages[(obj, block)] = SealedPage(nonce, buf)
            self.stats.seal_s += time.perf_counter() - t0
        self.stats.sealed_bytes += n
        self.stats.pages_sealed += 1
        if self.on_bytes is not None:
            self.on_bytes("sealed", n)

    def count(self, kind: str, n: int, pages: int) -> None:
        """Count bytes as sealed/unsealed without crypto (planning, meta mode)."""
        if kind == "sealed":
            self.stats.sealed_bytes += n
            self.stats.pages_sealed += pages
        else:
            self.stats.unsealed_bytes += n
            self.stats.pages_unsealed += pages
        if self.on_bytes is not None:
            self.on_bytes(kind, n)

    def unseal_into(
        self, obj: str, version: int, block: tuple[int, ...], out: torch.Tensor
    ) -> None:
        """Authenticate and decrypt block (obj, block) into the contiguous tensor ``out``."""
        n = out.numel() * out.element_size()
        if not self.meta:
            t0 = time.perf_counter()
            page = self.store.pages.get((obj, block))
            if page is None:
                raise IntegrityError(
                    f"sealed page {obj}{list(block)} is missing from untrusted memory"
                )
            if len(page.data) != n + _TAG:
                raise IntegrityError(
                    f"sealed page {obj}{list(block)} has the wrong length "
                    f"({len(page.data)} bytes, expected {n + _TAG})"
                )
            aad = self.associated_data(obj, version, block, out.dtype, out.shape)
            assert self._aead is not None
            try:
                if n:
                    self._aead.decrypt_into(page.nonce, page.data, aad, _byte_view(out))
                else:
                    self._aead.decrypt(page.nonce, bytes(page.data), aad)
            except InvalidTag:
                out.zero_()  # never leave unauthenticated plaintext behind
                raise IntegrityError(
                    f"sealed page {obj}{list(block)} (version {version}) failed authentication: it "
                    "was tampered with, swapped with another page, or is a stale copy"
                ) from None
            self.stats.unseal_s += time.perf_counter() - t0
        self.stats.unsealed_bytes += n
        self.stats.pages_unsealed += 1
        if self.on_bytes is not None:
            self.on_bytes("unsealed", n)

    def drop(self, obj: str, blocks: Iterable[tuple[int, ...]]) -> None:
        """Forget the sealed pages ``blocks`` of ``obj``."""
        if not self.meta:
            for b in blocks:
                self.store.pages.pop((obj, b), None)
