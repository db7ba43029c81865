"""Owner-sealed model packages, enclave attestation and attested model-key release.

Who sees what: the owner (``writer``, ``keys``, ``keyserver``) holds the plaintext model and the
model key; the untrusted host (``client``) relays ciphertext, reports and the wrapped key; the
enclave (``attest``, ``wrap.unwrap_model_key``, ``shielded.decrypt_shielded``) alone unwraps
the key and decrypts shielded tensors. See docs/package-format.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taoism._lazy import lazy_exports

# ``attest`` is also the name of a submodule: imported here, before anything else can import the
# submodule and bind the module object to the package's ``attest`` (the enclave needs it anyway).
from taoism.trust.attest import Attestation, attest

if TYPE_CHECKING:
    from taoism.trust.client import KeyServiceClient
    from taoism.trust.commands import main_inspect, main_keygen, main_measure
    from taoism.trust.keys import (
        keygen,
        load_private_key,
        load_public_key,
        read_secret,
        write_secret,
    )
    from taoism.trust.keyserver import KeyServer, KeyServerConfig, main_keyserver
    from taoism.trust.measurement import enclave_measurement
    from taoism.trust.quotes import (
        QuoteSource,
        QuoteVerifier,
        SgxQuoteSource,
        SgxQuoteVerifier,
        SimQuoteSource,
        SimQuoteVerifier,
    )
    from taoism.trust.reader import PackageReader, open_package
    from taoism.trust.report import AttestationReport, Envelope
    from taoism.trust.shielded import decrypt_shielded
    from taoism.trust.verify import NonceBook, ReportVerifier, VerifierConfig
    from taoism.trust.wrap import unwrap_model_key, wrap_model_key
    from taoism.trust.writer import write_package

# Imported on first use (PEP 562), so the enclave, which reads packages and unwraps keys, does
# not load the owner's writer, the key service or the host's client with them.
_LAZY = {
    "AttestationReport": "taoism.trust.report",
    "Envelope": "taoism.trust.report",
    "KeyServer": "taoism.trust.keyserver",
    "KeyServerConfig": "taoism.trust.keyserver",
    "KeyServiceClient": "taoism.trust.client",
    "NonceBook": "taoism.trust.verify",
    "PackageReader": "taoism.trust.reader",
    "QuoteSource": "taoism.trust.quotes",
    "QuoteVerifier": "taoism.trust.quotes",
    "ReportVerifier": "taoism.trust.verify",
    "SgxQuoteSource": "taoism.trust.quotes",
    "SgxQuoteVerifier": "taoism.trust.quotes",
    "SimQuoteSource": "taoism.trust.quotes",
    "SimQuoteVerifier": "taoism.trust.quotes",
    "VerifierConfig": "taoism.trust.verify",
    "decrypt_shielded": "taoism.trust.shielded",
    "enclave_measurement": "taoism.trust.measurement",
    "keygen": "taoism.trust.keys",
    "load_private_key": "taoism.trust.keys",
    "load_public_key": "taoism.trust.keys",
    "main_inspect": "taoism.trust.commands",
    "main_keygen": "taoism.trust.commands",
    "main_keyserver": "taoism.trust.keyserver",
    "main_measure": "taoism.trust.commands",
    "open_package": "taoism.trust.reader",
    "read_secret": "taoism.trust.keys",
    "unwrap_model_key": "taoism.trust.wrap",
    "wrap_model_key": "taoism.trust.wrap",
    "write_package": "taoism.trust.writer",
    "write_secret": "taoism.trust.keys",
}


__getattr__, __dir__ = lazy_exports("taoism.trust", globals(), _LAZY)


__all__ = [
    "Attestation",
    "AttestationReport",
    "Envelope",
    "KeyServer",
    "KeyServerConfig",
    "KeyServiceClient",
    "NonceBook",
    "PackageReader",
    "QuoteSource",
    "QuoteVerifier",
    "ReportVerifier",
    "SgxQuoteSource",
    "SgxQuoteVerifier",
    "SimQuoteSource",
    "SimQuoteVerifier",
    "VerifierConfig",
    "attest",
    "decrypt_shielded",
    "enclave_measurement",
    "keygen",
    "load_private_key",
    "load_public_key",
    "main_inspect",
    "main_keygen",
    "main_keyserver",
    "main_measure",
    "open_package",
    "read_secret",
    "unwrap_model_key",
    "wrap_model_key",
    "write_package",
    "write_secret",
]
