"""Package mode, inside the enclave: attest, take the released model key, load the signed program.

The enclave is launched pinned to one owner public key (part of its measured configuration). It
opens the package file itself, checks the owner signature and every section hash, and answers
``ATTEST`` with a report over the verifier's nonce, the package header hash and a fresh
ephemeral X25519 key. ``PROVISION`` unwraps the model key with that ephemeral key, decrypts the
shielded tensors here, and returns the program description *from the signed package* with its
tensors, so nothing the host says about the program is ever run.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from taoism.errors import AttestationError, ProgramError
from taoism.trust.attest import Attestation, attest
from taoism.trust.keys import fingerprint, load_private_key, load_public_key
from taoism.trust.measurement import package_measurement
from taoism.trust.quotes import QuoteSource, SgxQuoteSource, SimQuoteSource
from taoism.trust.reader import PackageReader, open_package
from taoism.trust.shielded import decrypt_shielded
from taoism.trust.wrap import unwrap_model_key

PROGRAM_KEY = "enclave"  # the enclave's part of a package's program section


def quote_source(kind: str, platform_key: str | None) -> QuoteSource:
    """The platform's quote source: ``sim`` (simulated platform key file) or ``sgx`` (Gramine DCAP)."""
    if kind == "sgx":
        return SgxQuoteSource()
    if kind == "sim":
        if not platform_key:
            raise AttestationError(
                "the sim quote source needs --platform-key (the simulated platform's "
                "private key, made with `taoism keygen --name platform`)",
                "platform",
            )
        return SimQuoteSource(load_private_key(platform_key))
    raise AttestationError(f"unknown quote source {kind!r}; use 'sim' or 'sgx'", "platform")


class Provisioner:
    """One package-mode session: at most one attestation, then one provisioning."""

    def __init__(self, package: str, owner_public: str, source: QuoteSource) -> None:
        self.package, self.source = package, source
        self.owner = load_public_key(owner_public)
        self.measurement = package_measurement(fingerprint(self.owner))
        self._attestation: Attestation | None = None
        self._reader: PackageReader | None = None
        self.provisioned = False

    def attest(self, nonce: bytes) -> bytes:
        """Open and verify the package, then return the attestation envelope for ``nonce``."""
        if self.provisioned or self._attestation is not None:
            raise AttestationError(
                "this enclave already attested once; start a fresh enclave to attest again",
                "replay",
            )
        reader = open_package(
            self.package, self.owner
        )  # signature + every section hash, or PackageError
        self._reader = reader
        self._attestation = attest(self.source, self.measurement, nonce, reader.header_hash)
        return self._attestation.envelope.encode()

    def provision(self, wrapped: bytes) -> tuple[bytes, list[torch.Tensor]]:
        """Unwrap the model key, decrypt the shielded tensors; returns (signed program blob, its tensors)."""
        att, reader = self._attestation, self._reader
        if att is None or reader is None or self.provisioned:
            raise AttestationError(
                "PROVISION before ATTEST (or twice): the enclave releases nothing "
                "without a fresh attestation",
                "malformed",
            )
        self.provisioned = True
        self._attestation = None  # the ephemeral key is used once
        try:
            key = unwrap_model_key(att.private_key, wrapped, att.report_bytes)
            shielded = decrypt_shielded(reader, key)
            doc: Any = reader.program()
        finally:
            reader.close()
        if not isinstance(doc, dict) or not isinstance(doc.get(PROGRAM_KEY), dict):
            raise ProgramError(
                f"{self.package}: the signed program section has no {PROGRAM_KEY!r} description"
            )
        desc = doc[PROGRAM_KEY]
        names = desc.get("tensors", [])
        if (
            not isinstance(names, list)
            or set(names) != set(shielded)
            or len(names) != len(shielded)
        ):
            raise ProgramError(
                f"{self.package}: the program's tensors do not match the package's shielded "
                "tensors; re-package the model"
            )
        return json.dumps(desc).encode(), [shielded.pop(n) for n in names]


__all__ = ["PROGRAM_KEY", "Provisioner", "quote_source"]
