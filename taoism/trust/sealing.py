"""AES-256-GCM sealing of shielded tensors under the model key.

Every shielded tensor has its own random 96-bit nonce; the associated data binds the package
id, the tensor's name, dtype and shape, so a ciphertext moved to another name, package, dtype
or shape fails authentication. ``key_check`` (an HMAC of the package id under the model key)
lets the key service and the enclave tell a wrong key from a tampered tensor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taoism.errors import KeyReleaseError, PackageError
from taoism.trust.format import KEY_SIZE

_AAD_LABEL = b"taoism-shielded-tensor-v1\x00"
_CHECK_LABEL = b"taoism-model-key-check-v1\x00"


def tensor_aad(package_id: bytes, name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Associated data of one shielded tensor: label | canonical JSON of id, name, dtype, shape."""
    body = json.dumps(
        {"package_id": package_id.hex(), "name": name, "dtype": dtype, "shape": list(shape)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return _AAD_LABEL + body.encode("ascii")


def key_check(model_key: bytes, package_id: bytes) -> bytes:
    """Commitment to the model key for one package (HMAC-SHA256; reveals nothing about the key)."""
    return hmac.new(model_key, _CHECK_LABEL + package_id, hashlib.sha256).digest()


def check_model_key(model_key: Any, package_id: bytes, expected: bytes) -> bytes:
    """Return ``model_key`` if it is the key this package was sealed under, else KeyReleaseError."""
    if not isinstance(model_key, (bytes, bytearray)) or len(model_key) != KEY_SIZE:
        raise KeyReleaseError(
            f"model key must be {KEY_SIZE} bytes (got {type(model_key).__name__})"
        )
    key = bytes(model_key)
    if not hmac.compare_digest(key_check(key, package_id), expected):
        raise KeyReleaseError(
            f"model key does not belong to package {package_id.hex()} (key check mismatch): "
            "give the key service the key file written together with this package"
        )
    return key


def seal(model_key: bytes, nonce: bytes, aad: bytes, plaintext: Any) -> bytes:
    """Ciphertext | 16-byte tag of ``plaintext``."""
    return AESGCM(model_key).encrypt(nonce, bytes(plaintext), aad)


def unseal(model_key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes, where: str) -> bytes:
    """Plaintext of one shielded tensor; PackageError if it fails authentication."""
    try:
        return AESGCM(model_key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise PackageError(
            f"{where} failed AES-GCM authentication: its ciphertext, name, dtype or shape was "
            "changed, or it was moved from another package"
        ) from None


__all__ = ["check_model_key", "key_check", "seal", "tensor_aad", "unseal"]
