"""Plain functions behind the trust CLI commands (the CLI package wires them; no argv parsing here)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from taoism.trust.keys import keygen
from taoism.trust.measurement import enclave_measurement
from taoism.trust.reader import open_package


def main_keygen(
    out_dir: str, name: str = "owner", overwrite: bool = False, out: TextIO | None = None
) -> int:
    """``taoism keygen --out DIR [--name owner|platform] [--overwrite]``: write an Ed25519 key pair."""
    priv, pub = keygen(out_dir, name, overwrite=overwrite)
    print(
        f"private key {priv} (mode 0600, keep it secret)\npublic key  {pub}", file=out or sys.stdout
    )
    return 0


def main_measure(config: Mapping[str, Any] | None = None, out: TextIO | None = None) -> int:
    """``taoism measure [--config JSON]``: print the enclave measurement to put on a key service's allow-list."""
    print(enclave_measurement(config or {}).hex(), file=out or sys.stdout)
    return 0


def main_inspect(package: str, owner_public: str, out: TextIO | None = None) -> int:
    """``taoism inspect --package P --owner-public K``: verify a package and print its table of contents."""
    with open_package(package, owner_public) as pkg:
        h = pkg.header
        doc = {
            "package_id": h.package_id.hex(),
            "header_sha256": pkg.header_hash.hex(),
            "owner": h.owner,
            "created": h.created,
            "sections": [
                {
                    "kind": s.kind,
                    "name": s.name,
                    "bytes": s.length,
                    "dtype": s.dtype,
                    "shape": list(s.shape) if s.shape is not None else None,
                }
                for s in h.sections
            ],
        }
    print(json.dumps(doc, indent=1), file=out or sys.stdout)
    return 0


__all__ = ["main_inspect", "main_keygen", "main_measure"]
