"""Attestation reports and the envelope the host relays to the key service.

Report (144 bytes, the canonical encoding that is quoted and hashed)::

    magic "TAOR" | version u16 | reserved u16 | measurement 32 | verifier nonce 32
    | enclave ephemeral X25519 public key 32 | package header SHA-256 32 | timestamp ms u64

Envelope: ``magic "TAOE" | version u16 | quote kind u8 | reserved u8 | quote_len u32 | report
| quote``. The enclave makes both; the host only relays them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from taoism.errors import AttestationError

REPORT = struct.Struct("<4sHH32s32s32s32sQ")
REPORT_MAGIC = b"TAOR"
ENVELOPE = struct.Struct("<4sHBBI")
ENVELOPE_MAGIC = b"TAOE"
VERSION = 1
NONCE_SIZE = 32
MAX_QUOTE = 64 * 1024
QUOTE_SIM, QUOTE_SGX_DCAP = 1, 2
QUOTE_KINDS = {QUOTE_SIM: "sim", QUOTE_SGX_DCAP: "sgx-dcap"}


@dataclass(frozen=True)
class AttestationReport:
    """What the enclave asserts about itself for one key request."""

    measurement: bytes
    nonce: bytes
    enclave_public: bytes
    package: bytes
    timestamp_ms: int

    def encode(self) -> bytes:
        """The canonical 144-byte encoding."""
        return REPORT.pack(
            REPORT_MAGIC,
            VERSION,
            0,
            self.measurement,
            self.nonce,
            self.enclave_public,
            self.package,
            self.timestamp_ms,
        )

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding (the AAD of the wrapped key, the SGX report data)."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, raw: bytes) -> AttestationReport:
        """Parse a canonical encoding; AttestationError if malformed."""
        if len(raw) != REPORT.size:
            raise AttestationError(
                f"attestation report is {len(raw)} bytes, expected {REPORT.size}", "malformed"
            )
        magic, version, reserved, m, n, pub, pkg, ts = REPORT.unpack(raw)
        if magic != REPORT_MAGIC or version != VERSION or reserved:
            raise AttestationError(
                f"not a version-{VERSION} taoism attestation report (magic {magic!r}, "
                f"version {version})",
                "malformed",
            )
        return cls(m, n, pub, pkg, ts)


@dataclass(frozen=True)
class Envelope:
    """A report with the platform's quote over it."""

    report: bytes
    quote_kind: int
    quote: bytes

    def encode(self) -> bytes:
        """Bytes for the host to relay."""
        return (
            ENVELOPE.pack(ENVELOPE_MAGIC, VERSION, self.quote_kind, 0, len(self.quote))
            + self.report
            + self.quote
        )

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Parse relayed bytes with bounds checked first; AttestationError if malformed."""
        if len(raw) < ENVELOPE.size + REPORT.size:
            raise AttestationError(
                f"attestation envelope of {len(raw)} bytes is truncated", "malformed"
            )
        magic, version, kind, reserved, qlen = ENVELOPE.unpack_from(raw)
        if magic != ENVELOPE_MAGIC or version != VERSION or reserved or kind not in QUOTE_KINDS:
            raise AttestationError(
                f"not a version-{VERSION} taoism attestation envelope (magic {magic!r}, "
                f"quote kind {kind})",
                "malformed",
            )
        if qlen > MAX_QUOTE or len(raw) != ENVELOPE.size + REPORT.size + qlen:
            raise AttestationError(
                f"attestation envelope length {len(raw)} does not match its quote length "
                f"{qlen} (max {MAX_QUOTE})",
                "malformed",
            )
        start = ENVELOPE.size + REPORT.size
        return cls(bytes(raw[ENVELOPE.size : start]), kind, bytes(raw[start:]))


__all__ = [
    "AttestationReport",
    "Envelope",
    "NONCE_SIZE",
    "QUOTE_KINDS",
    "QUOTE_SGX_DCAP",
    "QUOTE_SIM",
]
