"""Enclave side of attestation: a fresh ephemeral X25519 key, a report, the platform's quote."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from taoism.errors import AttestationError
from taoism.trust.quotes import QuoteSource
from taoism.trust.report import NONCE_SIZE, AttestationReport, Envelope


@dataclass(frozen=True)
class Attestation:
    """One attestation made inside the enclave; the private key never leaves it."""

    private_key: X25519PrivateKey = field(repr=False)
    report: AttestationReport
    envelope: Envelope

    @property
    def report_bytes(self) -> bytes:
        """The canonical report (needed again to unwrap the released key)."""
        return self.envelope.report


def attest(
    source: QuoteSource,
    measurement: bytes,
    nonce: bytes,
    package: bytes,
    timestamp_ms: int | None = None,
) -> Attestation:
    """Make a report for the verifier's ``nonce`` and the package header hash, quoted by ``source``."""
    if len(measurement) != 32 or len(package) != 32:
        raise AttestationError("measurement and package hash must be 32 bytes each", "malformed")
    if len(nonce) != NONCE_SIZE:
        raise AttestationError(
            f"verifier nonce must be {NONCE_SIZE} bytes, got {len(nonce)}", "malformed"
        )
    key = X25519PrivateKey.generate()
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    report = AttestationReport(
        measurement, bytes(nonce), key.public_key().public_bytes_raw(), package, ts
    )
    raw = report.encode()
    return Attestation(key, report, Envelope(raw, source.kind, source.quote(raw)))


__all__ = ["Attestation", "attest"]
