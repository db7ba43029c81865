"""Ed25519 key files: the model owner's signing key and the simulated platform (quote) key.

Private keys are PKCS#8 PEM files created with mode 0600 (refused when group/other can read
them, like ssh); public keys are SubjectPublicKeyInfo PEM. Nothing here holds keys globally.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from taoism.errors import KeyFileError

OWNER_PRIVATE = "owner.key"
OWNER_PUBLIC = "owner.pub"
MAX_KEY_FILE = 16 * 1024


def keygen(
    directory: str | os.PathLike[str], name: str = "owner", *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a fresh Ed25519 key pair ``<name>.key`` (0600) and ``<name>.pub`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists() and not overwrite:
            raise KeyFileError(
                f"{p} already exists; refusing to overwrite a key (delete it or pass overwrite=True)"
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(priv_path, pem, 0o600)
    _write(pub_path, public_pem(key.public_key()), 0o644)
    return priv_path, pub_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of an Ed25519 public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte public key (how packages and logs name a key)."""
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key PEM; KeyFileError if missing, too open, malformed or not Ed25519."""
    p = Path(path)
    data = _read(p, "private key")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {p} is accessible by group/others (mode {oct(mode & 0o777)}); "
            f"run `chmod 600 {p}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{p} is not an unencrypted PEM private key ({exc}); make one with keygen()"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{p} holds a {type(key).__name__}, not an Ed25519 private key; make one with keygen()"
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key PEM; KeyFileError if missing, malformed or not Ed25519."""
    p = Path(path)
    data = _read(p, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{p} is not a PEM public key ({exc}); use the .pub file written by keygen()"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def write_secret(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> Path:
    """Write secret bytes (a model key) to a new 0600 file."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise KeyFileError(f"{p} already exists; refusing to overwrite a secret (delete it first)")
    _write(p, data, 0o600)
    return p


def read_secret(path: str | os.PathLike[str], size: int) -> bytes:
    """Read a secret of exactly ``size`` bytes from a 0600 file written by :func:`write_secret`."""
    p = Path(path)
    data = _read(p, "secret")
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"secret file {p} is accessible by group/others; run `chmod 600 {p}`")
    if len(data) != size:
        raise KeyFileError(f"{p} holds {len(data)} bytes, expected a {size}-byte key (wrong file?)")
    return data


def _read(p: Path, what: str) -> bytes:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{what} {p} is larger than {MAX_KEY_FILE} bytes: not a key file")
    return data


def _write(p: Path, data: bytes, mode: int) -> None:
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)


__all__ = [
    "OWNER_PRIVATE",
    "OWNER_PUBLIC",
    "fingerprint",
    "keygen",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "read_secret",
    "write_secret",
]
