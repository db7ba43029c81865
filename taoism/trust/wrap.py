"""Wrapping the model key to the enclave's ephemeral X25519 key (key service -> enclave).

``wrapped = "TAOW" | version u8 | 3 zero bytes | service X25519 public 32 | nonce 12 | AES-GCM(key) 48``
with ``kek = HKDF-SHA256(X25519(service, enclave), info=label | service_pub | enclave_pub |
SHA-256(report))`` and the report's SHA-256 as associated data: the wrapped key opens only
inside the enclave that holds the ephemeral private key, and only for the report it was
released for.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from taoism.errors import KeyReleaseError
from taoism.trust.format import KEY_SIZE, TAG_SIZE

WRAPPED = struct.Struct("<4sB3s32s12s")
WRAPPED_SIZE = WRAPPED.size + KEY_SIZE + TAG_SIZE
_MAGIC = b"TAOW"
_VERSION = 1
_LABEL = b"taoism-model-key-wrap-v1\x00"


def _kek(shared: bytes, service_pub: bytes, enclave_pub: bytes, report_hash: bytes) -> bytes:
    info = _LABEL + service_pub + enclave_pub + report_hash
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(shared)


def wrap_model_key(model_key: bytes, enclave_public: bytes, report: bytes) -> bytes:
    """Wrap ``model_key`` for the holder of ``enclave_public``, bound to the encoded ``report``."""
    try:
        peer = X25519PublicKey.from_public_bytes(enclave_public)
    except ValueError as exc:
        raise KeyReleaseError(
            f"enclave public key in the report is not an X25519 key: {exc}"
        ) from None
    eph = X25519PrivateKey.generate()
    service_pub = eph.public_key().public_bytes_raw()
    report_hash = hashlib.sha256(report).digest()
    kek = _kek(eph.exchange(peer), service_pub, enclave_public, report_hash)
    nonce = os.urandom(12)
    ct = AESGCM(kek).encrypt(nonce, model_key, report_hash)
    return WRAPPED.pack(_MAGIC, _VERSION, bytes(3), service_pub, nonce) + ct


def unwrap_model_key(ephemeral_private: X25519PrivateKey, wrapped: bytes, report: bytes) -> bytes:
    """Enclave side: the model key from ``wrapped``; KeyReleaseError if it was not made for this enclave/report."""
    if len(wrapped) != WRAPPED_SIZE:
        raise KeyReleaseError(
            f"wrapped model key is {len(wrapped)} bytes, expected {WRAPPED_SIZE}: the host or "
            "key service sent something else"
        )
    magic, version, reserved, service_pub, nonce = WRAPPED.unpack_from(wrapped)
    if magic != _MAGIC or version != _VERSION or reserved != bytes(3):
        raise KeyReleaseError(f"not a version-{_VERSION} wrapped model key (magic {magic!r})")
    enclave_pub = ephemeral_private.public_key().public_bytes_raw()
    report_hash = hashlib.sha256(report).digest()
    try:
        shared = ephemeral_private.exchange(X25519PublicKey.from_public_bytes(service_pub))
        kek = _kek(shared, service_pub, enclave_pub, report_hash)
        return AESGCM(kek).decrypt(nonce, wrapped[WRAPPED.size :], report_hash)
    except (InvalidTag, ValueError):
        raise KeyReleaseError(
            "wrapped model key does not open: it was altered in transit, or released for "
            "another enclave key or report"
        ) from None


__all__ = ["WRAPPED_SIZE", "unwrap_model_key", "wrap_model_key"]
