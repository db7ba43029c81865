"""Key-service side of attestation: nonces (fresh, one use) and report verification."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from taoism.errors import AttestationError, ConfigError, KeyReleaseError
from taoism.trust.quotes import QuoteVerifier
from taoism.trust.report import NONCE_SIZE, QUOTE_KINDS, AttestationReport, Envelope


@dataclass(frozen=True)
class VerifierConfig:
    """What the key service accepts."""

    allow: frozenset[bytes]
    package: bytes
    nonce_ttl_s: float = 60.0
    max_age_s: float = 60.0
    max_skew_s: float = 5.0
    max_outstanding: int = 1024

    def __post_init__(self) -> None:
        if not self.allow or any(len(m) != 32 for m in self.allow):
            raise ConfigError(
                "allow-list must hold at least one 32-byte measurement (64 hex digits)"
            )
        if len(self.package) != 32:
            raise ConfigError("package must be the 32-byte SHA-256 of the package header")
        if (
            min(self.nonce_ttl_s, self.max_age_s) <= 0
            or self.max_skew_s < 0
            or self.max_outstanding < 1
        ):
            raise ConfigError(
                "nonce_ttl_s and max_age_s must be > 0, max_skew_s >= 0, max_outstanding >= 1"
            )


class NonceBook:
    """Issues verifier nonces and lets each be used once, within ``ttl_s`` (thread-safe)."""

    def __init__(
        self, ttl_s: float, max_outstanding: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl, self._max, self._clock = ttl_s, max_outstanding, clock
        self._issued: dict[bytes, float] = {}
        self._used: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> bytes:
        """A fresh random nonce; KeyReleaseError when too many are outstanding."""
        with self._lock:
            self._prune(self._clock())
            if len(self._issued) >= self._max:
                raise KeyReleaseError(f"{self._max} nonces outstanding; retry in {self._ttl:g} s")
            nonce = secrets.token_bytes(NONCE_SIZE)
            self._issued[nonce] = self._clock()
            return nonce

    def consume(self, nonce: bytes) -> None:
        """Mark ``nonce`` used; AttestationError(reason replay / stale-nonce / unknown-nonce) otherwise."""
        with self._lock:
            now = self._clock()
            if nonce in self._used:
                raise AttestationError(
                    "report replayed: its nonce was already used for a key release; "
                    "the enclave must attest again with a fresh nonce",
                    "replay",
                )
            issued = self._issued.pop(nonce, None)
            if issued is None:
                raise AttestationError(
                    "report carries a nonce this key service never issued (or issued so long "
                    "ago it was forgotten); fetch a fresh nonce",
                    "unknown-nonce",
                )
            self._used[nonce] = now
            if now - issued > self._ttl:
                raise AttestationError(
                    f"report's nonce is stale ({now - issued:.1f} s old, limit {self._ttl:g} s); "
                    "fetch a fresh nonce and attest again",
                    "stale-nonce",
                )

    def _prune(self, now: float) -> None:
        horizon = now - 2 * self._ttl
        for book in (self._issued, self._used):
            for n in [n for n, t in book.items() if t < horizon]:
                del book[n]


class ReportVerifier:
    """Verifies relayed attestation envelopes: quote signature, allow-list, package, nonce, age."""

    def __init__(
        self,
        config: VerifierConfig,
        verifiers: dict[int, QuoteVerifier],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._verifiers = dict(verifiers)
        self._clock = wall_clock
        self.nonces = NonceBook(config.nonce_ttl_s, config.max_outstanding)

    def verify(self, envelope: bytes) -> AttestationReport:
        """The accepted report, else AttestationError naming the failed check (a quoted nonce is spent)."""
        env = Envelope.decode(envelope)
        verifier = self._verifiers.get(env.quote_kind)
        if verifier is None:
            raise AttestationError(
                f"this key service does not accept {QUOTE_KINDS[env.quote_kind]} quotes "
                f"(accepts {[QUOTE_KINDS[k] for k in self._verifiers]})",
                "platform",
            )
        measurement = verifier.verify(env.report, env.quote)
        report = AttestationReport.decode(env.report)
        self.nonces.consume(report.nonce)
        if measurement not in self.config.allow:
            raise AttestationError(
                f"enclave measurement {measurement.hex()} is not on the key service's allow-list; "
                "if this enclave build is trusted, add it with --allow",
                "measurement",
            )
        if report.package != self.config.package:
            raise AttestationError(
                f"report is for package {report.package.hex()[:16]}..., this key service serves "
                f"{self.config.package.hex()[:16]}...",
                "package",
            )
        age = self._clock() - report.timestamp_ms / 1000.0
        if age > self.config.max_age_s or age < -self.config.max_skew_s:
            raise AttestationError(
                f"report timestamp is {age:.1f} s old (accepted: -{self.config.max_skew_s:g}.."
                f"{self.config.max_age_s:g} s); check the clocks and attest again",
                "stale-report",
            )
        return report


__all__ = ["NonceBook", "ReportVerifier", "VerifierConfig"]
