"""Owner side: write a signed model package (plan, program, device weights, sealed shielded weights)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taoism.errors import PackageError
from taoism.trust.format import (
    FORMAT_NAME,
    KIND_DEVICE,
    KIND_PLAN,
    KIND_PROGRAM,
    KIND_SHIELDED,
    MAGIC,
    MAX_HEADER,
    MAX_NAME,
    MAX_SECTIONS,
    NONCE_SIZE,
    PREFIX,
    SIGN_LABEL,
    SIGNED_PREFIX,
    VERSION,
)
from taoism.trust.keys import fingerprint, load_private_key
from taoism.trust.sealing import key_check, seal, tensor_aad
from taoism.trust.tensors import tensor_bytes

JsonLike = str | bytes | Mapping[str, Any]


def canonical_json(obj: Any) -> bytes:
    """Sorted-key, compact, NaN-free UTF-8 JSON (the one encoding of JSON documents in a package)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PackageError(f"cannot encode {type(obj).__name__} as JSON: {exc}") from None


def write_package(
    path: str | os.PathLike[str],
    plan_json: JsonLike,
    device_tensors: Mapping[str, Any],
    program_json: JsonLike,
    shielded_tensors: Mapping[str, Any],
    owner_private_key: Ed25519PrivateKey | str | os.PathLike[str],
) -> bytes:
    """Write a signed package to ``path`` and return the fresh 32-byte model key (keep it for the key service)."""
    owner = (
        owner_private_key
        if isinstance(owner_private_key, Ed25519PrivateKey)
        else load_private_key(owner_private_key)
    )
    package_id = secrets.token_bytes(16)
    model_key = AESGCM.generate_key(bit_length=256)
    entries: list[dict[str, Any]] = []
    blobs: list[Any] = []
    offset = 0

    def add(entry: dict[str, Any], blob: Any) -> None:
        nonlocal offset
        entry.update(offset=offset, length=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        entries.append(entry)
        blobs.append(blob)
        offset += len(blob)

    add({"name": "plan", "kind": KIND_PLAN}, _json_bytes(plan_json, "plan_json"))
    add({"name": "program", "kind": KIND_PROGRAM}, _json_bytes(program_json, "program_json"))
    for name, t in _named(device_tensors, "device_tensors"):
        dtype, shape, raw = tensor_bytes(t, f"device tensor {name!r}")
        add({"name": name, "kind": KIND_DEVICE, "dtype": dtype, "shape": list(shape)}, raw)
    for name, t in _named(shielded_tensors, "shielded_tensors"):
        dtype, shape, raw = tensor_bytes(t, f"shielded tensor {name!r}")
        nonce = secrets.token_bytes(NONCE_SIZE)
        ct = seal(model_key, nonce, tensor_aad(package_id, name, dtype, shape), raw)
        add(
            {
                "name": name,
                "kind": KIND_SHIELDED,
                "dtype": dtype,
                "shape": list(shape),
                "nonce": nonce.hex(),
            },
            ct,
        )
    if len(entries) > MAX_SECTIONS:
        raise PackageError(f"{len(entries)} sections exceed the format's limit of {MAX_SECTIONS}")
    header = canonical_json(
        {
            "format": FORMAT_NAME,
            "version": VERSION,
            "package_id": package_id.hex(),
            "owner": fingerprint(owner.public_key()),
            "created": int(time.time()),
            "key_check": key_check(model_key, package_id).hex(),
            "sections": entries,
        }
    )
    if len(header) > MAX_HEADER:
        raise PackageError(
            f"package header of {len(header)} bytes exceeds {MAX_HEADER}; too many tensors"
        )
    signed = PREFIX.pack(MAGIC, VERSION, 0, len(header), bytes(64))[:SIGNED_PREFIX]
    signature = owner.sign(SIGN_LABEL + signed + header)
    _write_atomic(Path(path), [signed, signature, header, *blobs])
    return model_key


def _json_bytes(doc: JsonLike, what: str) -> bytes:
    if isinstance(doc, (str, bytes)):
        raw = doc.encode("utf-8") if isinstance(doc, str) else doc
        try:
            json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise PackageError(f"{what} is not valid JSON: {exc}") from None
        return raw
    if isinstance(doc, Mapping):
        return canonical_json(dict(doc))
    raise PackageError(f"{what} must be a JSON string or a mapping, not {type(doc).__name__}")


def _named(tensors: Mapping[str, Any], what: str) -> list[tuple[str, Any]]:
    if not isinstance(tensors, Mapping):
        raise PackageError(f"{what} must be a mapping name -> tensor, not {type(tensors).__name__}")
    items = list(tensors.items())
    for name, _ in items:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
            raise PackageError(
                f"{what}: tensor name {name!r} must be a printable string of 1..{MAX_NAME} chars"
            )
    return items


def _write_atomic(path: Path, parts: list[Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PackageError(f"cannot write package {path}: {exc.strerror or exc}") from None


__all__ = ["canonical_json", "write_package"]
