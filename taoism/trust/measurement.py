"""The enclave measurement: SHA-256 over the code the enclave runs and its configuration.

Stands in for SGX's MRENCLAVE on the simulated backend: the ``*.py`` files of the packages that
run inside the enclave (``taoism.enclave``, ``taoism.protocol`` when present, ``taoism.boundary``
and ``taoism.trust``), in sorted path order, each as ``len(path) | path | SHA-256(content)``,
then the canonical JSON of the enclave configuration. The owner computes it from the release
they trust and gives it to the key service's allow-list.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taoism.errors import ConfigError

MEASURED_PACKAGES = ("enclave", "protocol", "boundary", "trust")
_LABEL = b"taoism-enclave-measurement-v1\x00"


def measured_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(stable relative name, path) of every measured source file, in measurement order."""
    # default: the taoism package this module belongs to
    base = Path(__file__).resolve().parent.parent if root is None else Path(root)
    files: list[tuple[str, Path]] = []
    for pkg in MEASURED_PACKAGES:
        folder = base / pkg
        if folder.is_dir():
            files += [
                (p.relative_to(base).as_posix(), p)
                for p in folder.rglob("*.py")
                if "__pycache__" not in p.parts
            ]
    return sorted(files)


def enclave_measurement(config: Mapping[str, Any], root: Path | None = None) -> bytes:
    """32-byte measurement of the enclave code under ``root`` (default: this taoism) and ``config``."""
    try:
        cfg = json.dumps(
            dict(config), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"enclave configuration for the measurement must be plain JSON data: {exc}"
        ) from None
    h = hashlib.sha256(_LABEL)
    for name, path in measured_files(root):
        raw = name.encode()
        h.update(struct.pack("<I", len(raw)) + raw + hashlib.sha256(path.read_bytes()).digest())
    h.update(struct.pack("<Q", len(cfg)) + cfg)
    return h.digest()


def package_enclave_config(owner_fingerprint: str) -> dict[str, str]:
    """The measured configuration of an enclave that runs only packages signed by this owner."""
    return {"mode": "package", "owner": owner_fingerprint}


def package_measurement(owner_fingerprint: str, root: Path | None = None) -> bytes:
    """The measurement a package-mode enclave pinned to ``owner_fingerprint`` reports (for ``--allow``)."""
    return enclave_measurement(package_enclave_config(owner_fingerprint), root)


__all__ = [
    "MEASURED_PACKAGES",
    "enclave_measurement",
    "measured_files",
    "package_enclave_config",
    "package_measurement",
]
