"""Quote sources (enclave side) and quote verifiers (key-service side): the only part that differs
between the simulated backend and real SGX.

* :class:`SimQuoteSource` signs the report with a *simulated platform key*, an Ed25519 key that
  stands in for the CPU's quoting enclave. It is generated per machine or session
  (:func:`taoism.trust.keys.keygen` with ``name="platform"``) and its public key is given to the
  verifier out of band. It proves nothing against a host that can read that key file: it lets the
  whole protocol run, and be tested, where there is no SGX.
* :class:`SgxQuoteSource` asks Gramine's ``/dev/attestation`` pseudo-files for a real quote whose
  ``user_report_data`` is ``SHA-256(report) | 32 zero bytes``; it refuses where they are absent.
* A verifier returns the measurement the platform vouches for (the report's own on ``sim``,
  the quote's MRENCLAVE on SGX); the allow-list is checked against that.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from taoism.errors import AttestationError, BackendUnavailable
from taoism.trust.report import QUOTE_SGX_DCAP, QUOTE_SIM, AttestationReport

_SIM_LABEL = b"taoism-sim-quote-v1\x00"
# SGX ECDSA quote (v3/v4) layout: 48-byte header, then the 384-byte ISV enclave report body.
_SGX_HEADER, _SGX_BODY = 48, 384
_SGX_MRENCLAVE, _SGX_REPORT_DATA = _SGX_HEADER + 64, _SGX_HEADER + 320


def sgx_report_data(report: bytes) -> bytes:
    """The 64-byte SGX user report data that binds a taoism report."""
    return hashlib.sha256(report).digest() + bytes(32)


class QuoteSource(abc.ABC):
    """Produces the platform's signed statement (quote) over an encoded report."""

    kind: int

    @abc.abstractmethod
    def quote(self, report: bytes) -> bytes:
        """The quote over ``report``."""


class QuoteVerifier(abc.ABC):
    """Checks a quote and returns the measurement the platform vouches for."""

    kind: int

    @abc.abstractmethod
    def verify(self, report: bytes, quote: bytes) -> bytes:
        """The vouched-for 32-byte measurement; AttestationError(reason="signature") if the quote is bad."""


class SimQuoteSource(QuoteSource):
    """Simulated quoting enclave: Ed25519 signature under the simulated platform key."""

    kind = QUOTE_SIM

    def __init__(self, platform_key: Ed25519PrivateKey) -> None:
        self._key = platform_key

    def quote(self, report: bytes) -> bytes:
        """Ed25519 signature over label | report."""
        return self._key.sign(_SIM_LABEL + report)


class SimQuoteVerifier(QuoteVerifier):
    """Verifies :class:`SimQuoteSource` quotes with the platform public key given out of band."""

    kind = QUOTE_SIM

    def __init__(self, platform_public: Ed25519PublicKey) -> None:
        self._pub = platform_public

    def verify(self, report: bytes, quote: bytes) -> bytes:
        """Check the signature; the simulated platform vouches for the report's own measurement."""
        try:
            self._pub.verify(quote, _SIM_LABEL + report)
        except InvalidSignature:
            raise AttestationError(
                "attestation quote does not verify under the simulated platform key: the "
                "report was altered or signed by another platform",
                "signature",
            ) from None
        return AttestationReport.decode(report).measurement


class SgxQuoteSource(QuoteSource):
    """Real SGX quote through Gramine's ``/dev/attestation`` (DCAP)."""

    kind = QUOTE_SGX_DCAP

    def __init__(self, device_dir: str | Path = "/dev/attestation") -> None:
        self.dir = Path(device_dir)

    def available(self) -> bool:
        """True when running inside a Gramine SGX enclave with DCAP attestation configured."""
        try:
            return (self.dir / "attestation_type").read_text().strip() == "dcap"
        except OSError:
            return False

    def quote(self, report: bytes) -> bytes:
        """Write the report data, read back the quote; BackendUnavailable outside Gramine-SGX."""
        if not self.available():
            raise BackendUnavailable(
                f"no SGX DCAP attestation here: {self.dir}/attestation_type is absent or not "
                "'dcap'. Run the enclave under gramine-sgx with "
                'sgx.remote_attestation = "dcap", or use the sim backend'
            )
        try:
            (self.dir / "user_report_data").write_bytes(sgx_report_data(report))
            quote = (self.dir / "quote").read_bytes()
        except OSError as exc:
            raise AttestationError(
                f"Gramine refused to produce a quote via {self.dir}: {exc}", "platform"
            ) from None
        if len(quote) < _SGX_HEADER + _SGX_BODY:
            raise AttestationError(f"SGX quote of {len(quote)} bytes is too short", "platform")
        return quote


class SgxQuoteVerifier(QuoteVerifier):
    """Checks the SGX quote's report data binding and returns its MRENCLAVE.

    The quote's ECDSA signature chain must be checked by Intel's DCAP quote verification
    library; pass it as ``check_signature`` (raises on a bad quote). Without one, every quote is
    refused: nothing is accepted on an unverified signature.
    """

    kind = QUOTE_SGX_DCAP

    def __init__(self, check_signature: Callable[[bytes], None] | None = None) -> None:
        self._check = check_signature

    def verify(self, report: bytes, quote: bytes) -> bytes:
        """MRENCLAVE of a quote whose signature and report data check out."""
        if len(quote) < _SGX_HEADER + _SGX_BODY:
            raise AttestationError(f"SGX quote of {len(quote)} bytes is too short", "malformed")
        if self._check is None:
            raise AttestationError(
                "SGX quote received but this key service has no DCAP quote verifier "
                "configured; refusing an unverified quote",
                "platform",
            )
        self._check(quote)
        if quote[_SGX_REPORT_DATA : _SGX_REPORT_DATA + 64] != sgx_report_data(report):
            raise AttestationError(
                "SGX quote's report data does not bind this attestation report", "signature"
            )
        return quote[_SGX_MRENCLAVE : _SGX_MRENCLAVE + 32]


__all__ = [
    "QuoteSource",
    "QuoteVerifier",
    "SgxQuoteSource",
    "SgxQuoteVerifier",
    "SimQuoteSource",
    "SimQuoteVerifier",
    "sgx_report_data",
]
