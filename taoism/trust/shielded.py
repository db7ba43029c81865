"""Enclave side: decrypt a package's shielded tensors with the released model key."""

from __future__ import annotations

import torch

from taoism.trust.reader import PackageReader
from taoism.trust.sealing import check_model_key, tensor_aad, unseal
from taoism.trust.tensors import tensor_from_bytes


def decrypt_shielded(reader: PackageReader, model_key: bytes) -> dict[str, torch.Tensor]:
    """All shielded tensors of ``reader`` in plaintext; KeyReleaseError for a wrong key, PackageError if tampered."""
    key = check_model_key(model_key, reader.package_id, reader.header.key_check)
    out: dict[str, torch.Tensor] = {}
    for sec in reader.shielded_sections():
        assert sec.dtype is not None and sec.shape is not None and sec.nonce is not None
        aad = tensor_aad(reader.package_id, sec.name, sec.dtype, sec.shape)
        plain = unseal(
            key, sec.nonce, aad, reader.section_bytes(sec), f"{reader.path}: shielded {sec.name!r}"
        )
        out[sec.name] = tensor_from_bytes(plain, sec.dtype, sec.shape)
    return out


__all__ = ["decrypt_shielded"]
