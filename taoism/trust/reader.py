"""Read and verify a model package: prefix, owner signature, header bounds, section hashes.

Order of checks: the fixed prefix and the header length against the file size, then the
Ed25519 owner signature over prefix and header (before the header is even parsed), then the
header's structure with hard bounds, then (``verify=True``) the SHA-256 of every section.
Each section is hashed again when it is read, so a file changed after opening is caught too.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from taoism.errors import PackageError, SignatureError
from taoism.trust.format import (
    KIND_DEVICE,
    KIND_PLAN,
    KIND_PROGRAM,
    KIND_SHIELDED,
    PREFIX,
    SIGN_LABEL,
    SIGNED_PREFIX,
    Header,
    Section,
    decode_header,
    parse_prefix,
)
from taoism.trust.keys import fingerprint, load_public_key
from taoism.trust.tensors import tensor_from_bytes

_CHUNK = 4 * 1024 * 1024


class PackageReader:
    """An opened, signature-checked package; read sections with their hashes verified."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        owner_public_key: Ed25519PublicKey | str | os.PathLike[str],
        *,
        verify: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        owner = (
            owner_public_key
            if isinstance(owner_public_key, Ed25519PublicKey)
            else load_public_key(owner_public_key)
        )
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise PackageError(f"cannot open package {self.path}: {exc.strerror or exc}") from None
        try:
            self.header, self.header_bytes = self._open(owner)
            if verify:
                self.verify_all()
        except BaseException:
            self.close()
            raise

    def _open(self, owner: Ed25519PublicKey) -> tuple[Header, bytes]:
        size = os.fstat(self._fd).st_size
        prefix = os.pread(self._fd, PREFIX.size, 0)
        header_len, signature = parse_prefix(prefix, size, self.path)
        raw = self._read_exact(PREFIX.size, header_len, "header")
        try:
            owner.verify(signature, SIGN_LABEL + prefix[:SIGNED_PREFIX] + raw)
        except InvalidSignature:
            raise SignatureError(
                f"{self.path}: owner signature does not verify under owner key "
                f"{fingerprint(owner)[:16]}...: the package was tampered with or re-signed by "
                "someone else, or this is not the owner's public key"
            ) from None
        self._data_start = PREFIX.size + header_len
        header = decode_header(raw, size - self._data_start, self.path)
        if header.owner != fingerprint(owner):
            raise SignatureError(
                f"{self.path}: header names owner {header.owner[:16]}... but was verified with "
                f"{fingerprint(owner)[:16]}..."
            )
        return header, raw

    # -- identity ----------------------------------------------------------------------------

    @property
    def package_id(self) -> bytes:
        """The random 16-byte id bound into every shielded tensor's associated data."""
        return self.header.package_id

    @property
    def header_hash(self) -> bytes:
        """SHA-256 of the signed header: names this exact package (bound into attestation reports)."""
        return hashlib.sha256(self.header_bytes).digest()

    # -- sections ----------------------------------------------------------------------------

    def verify_all(self) -> None:
        """Stream every section through SHA-256; PackageError on the first mismatch."""
        for sec in self.header.sections:
            h = hashlib.sha256()
            done = 0
            while done < sec.length:
                n = min(_CHUNK, sec.length - done)
                h.update(self._read_exact(self._data_start + sec.offset + done, n, sec.name))
                done += n
            self._check_digest(sec, h.digest())

    def section_bytes(self, sec: Section) -> bytes:
        """The raw bytes of one section, hash-checked."""
        data = self._read_exact(self._data_start + sec.offset, sec.length, sec.name)
        self._check_digest(sec, hashlib.sha256(data).digest())
        return data

    def plan_bytes(self) -> bytes:
        """The plan JSON exactly as the owner stored it."""
        return self.section_bytes(self.header.by_kind(KIND_PLAN)[0])

    def program_bytes(self) -> bytes:
        """The enclave program description JSON exactly as the owner stored it."""
        return self.section_bytes(self.header.by_kind(KIND_PROGRAM)[0])

    def plan(self) -> Any:
        """The plan, parsed."""
        return _parse_json(self.plan_bytes(), f"{self.path}: plan")

    def program(self) -> Any:
        """The enclave program description, parsed."""
        return _parse_json(self.program_bytes(), f"{self.path}: program")

    def device_tensors(self) -> dict[str, torch.Tensor]:
        """The plaintext device-segment weights."""
        return {
            s.name: tensor_from_bytes(self.section_bytes(s), s.dtype or "", s.shape or ())
            for s in self.header.by_kind(KIND_DEVICE)
        }

    def shielded_sections(self) -> tuple[Section, ...]:
        """Header entries of the sealed shielded tensors (name, dtype, shape, nonce)."""
        return self.header.by_kind(KIND_SHIELDED)

    # -- plumbing ----------------------------------------------------------------------------

    def _check_digest(self, sec: Section, digest: bytes) -> None:
        if digest != sec.sha256:
            raise PackageError(
                f"{self.path}: {sec.kind} section {sec.name!r} does not match its signed SHA-256: "
                "the package was modified after signing; get a fresh copy from the owner"
            )

    def _read_exact(self, offset: int, n: int, what: str) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise PackageError(
                f"{self.path}: {what} truncated ({len(data)} of {n} bytes at offset {offset})"
            )
        return data

    def close(self) -> None:
        """Close the file (idempotent)."""
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> PackageReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"{where} is not UTF-8 JSON ({exc})") from None


def open_package(
    path: str | os.PathLike[str],
    owner_public_key: Ed25519PublicKey | str | os.PathLike[str],
    *,
    verify: bool = True,
) -> PackageReader:
    """Open ``path`` and check it against the owner's public key (see :class:`PackageReader`)."""
    return PackageReader(path, owner_public_key, verify=verify)


__all__ = ["PackageReader", "open_package"]
