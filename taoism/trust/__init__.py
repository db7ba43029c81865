"""Owner-sealed model packages, enclave attestation and attested model-key release.

Who sees what: the owner (``writer``, ``keys``, ``keyserver``) holds the plaintext model and the
model key; the untrusted host (``client``) relays ciphertext, reports and the wrapped key; the
enclave (``attest``, ``wrap.unwrap_model_key``, ``shielded.decrypt_shielded``) alone unwraps
the key and decrypts shielded tensors. See docs/package-format.md.
"""

from taoism.trust.attest import Attestation, attest
from taoism.trust.client import KeyServiceClient
from taoism.trust.commands import main_inspect, main_keygen, main_measure
from taoism.trust.keys import keygen, load_private_key, load_public_key, read_secret, write_secret
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
