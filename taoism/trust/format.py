"""The package file format (version 1): layout, bounds and header validation.

::

    prefix   magic "TAOISMPK" | version u32 | reserved u32 (0) | header_len u64 | signature 64 B
    header   header_len bytes of UTF-8 JSON (see docs/package-format.md)
    data     the sections, back to back in header order (no padding, no trailing bytes)

All integers little-endian. The Ed25519 owner signature covers ``SIGN_LABEL | prefix[:24] |
header``; the header holds the SHA-256 of every section, so every byte of the file is covered
by the signature or by a signed hash. :func:`validate_header` checks the decoded header with
hard bounds before anything is allocated from it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from taoism.errors import PackageError

MAGIC = b"TAOISMPK"
VERSION = 1
PREFIX = struct.Struct("<8sIIQ64s")  # magic, version, reserved, header_len, signature
SIGNED_PREFIX = 24  # magic | version | reserved | header_len
SIGN_LABEL = b"taoism-package-signature-v1\x00"
FORMAT_NAME = "taoism-package"

MAX_HEADER = 16 * 1024 * 1024
MAX_SECTIONS = 100_000
MAX_NAME = 512
MAX_NDIM = 16
MAX_SECTION_BYTES = 1 << 40
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32

KIND_PLAN, KIND_PROGRAM, KIND_DEVICE, KIND_SHIELDED = "plan", "program", "device", "shielded"
KINDS = (KIND_PLAN, KIND_PROGRAM, KIND_DEVICE, KIND_SHIELDED)

#: Stored dtype names (little-endian raw bytes) and their torch dtypes; part of the format.
DTYPES: MappingProxyType[str, torch.dtype] = MappingProxyType(
    {
        "float64": torch.float64,
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int16": torch.int16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }
)
DTYPE_NAMES: MappingProxyType[torch.dtype, str] = MappingProxyType(
    {d: n for n, d in DTYPES.items()}
)

_HEX = re.compile(r"[0-9a-f]*")
_TOP_KEYS = {"format", "version", "package_id", "owner", "created", "key_check", "sections"}
_SECTION_KEYS = {"name", "kind", "offset", "length", "sha256"}
_TENSOR_KEYS = {"dtype", "shape"}


@dataclass(frozen=True)
class Section:
    """One validated section entry of a package header."""

    name: str
    kind: str
    offset: int
    length: int
    sha256: bytes
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    nonce: bytes | None = None

    @property
    def nbytes(self) -> int:
        """Plaintext size of a tensor section (ciphertext length minus the GCM tag for shielded ones)."""
        return self.length - TAG_SIZE if self.kind == KIND_SHIELDED else self.length


@dataclass(frozen=True)
class Header:
    """A validated package header."""

    package_id: bytes
    owner: str
    created: int
    key_check: bytes
    sections: tuple[Section, ...]

    def by_kind(self, kind: str) -> tuple[Section, ...]:
        """The sections of one kind, in file order."""
        return tuple(s for s in self.sections if s.kind == kind)


def itemsize(dtype: str) -> int:
    """Bytes per element of a stored dtype name."""
    return DTYPES[dtype].itemsize


def parse_prefix(raw: bytes, file_size: int, where: str) -> tuple[int, bytes]:
    """Check the fixed prefix; returns (header_len, signature)."""
    if len(raw) < PREFIX.size:
        raise PackageError(
            f"{where}: {len(raw)} bytes is shorter than the {PREFIX.size}-byte prefix: "
            "truncated or not a taoism package"
        )
    magic, version, reserved, header_len, signature = PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise PackageError(
            f"{where}: bad magic {magic!r}, not a taoism package (expected {MAGIC!r})"
        )
    if version != VERSION:
        raise PackageError(
            f"{where}: package format version {version}, this taoism reads version {VERSION}; "
            "re-package the model with this taoism"
        )
    if reserved != 0:
        raise PackageError(
            f"{where}: reserved prefix field is {reserved}, must be 0 (corrupted file)"
        )
    if header_len == 0 or header_len > MAX_HEADER:
        raise PackageError(
            f"{where}: header length {header_len} outside 1..{MAX_HEADER} (corrupted file)"
        )
    if PREFIX.size + header_len > file_size:
        raise PackageError(
            f"{where}: header of {header_len} bytes runs past the end of the "
            f"{file_size}-byte file (truncated)"
        )
    return header_len, signature


def decode_header(raw: bytes, data_size: int, where: str) -> Header:
    """Decode and validate the JSON header against the size of the data region."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, over-long integers
        raise PackageError(f"{where}: header is not UTF-8 JSON ({exc})") from None
    return validate_header(doc, data_size, where)


def validate_header(doc: Any, data_size: int, where: str) -> Header:
    """Check every field of a decoded header with hard bounds; PackageError naming the field."""
    _require(
        isinstance(doc, dict) and set(doc) == _TOP_KEYS,
        where,
        f"header must be an object with exactly the keys {sorted(_TOP_KEYS)}",
    )
    _require(
        doc["format"] == FORMAT_NAME and type(doc["version"]) is int and doc["version"] == VERSION,
        where,
        f"header format/version must be {FORMAT_NAME!r}/{VERSION}",
    )
    package_id = _hex(doc["package_id"], 16, where, "package_id")
    key_check = _hex(doc["key_check"], 32, where, "key_check")
    owner = doc["owner"]
    _require(
        isinstance(owner, str) and len(owner) == 64 and _HEX.fullmatch(owner),
        where,
        "owner must be the 64-hex fingerprint of the owner public key",
    )
    created = _int(doc["created"], 0, 1 << 62, where, "created")
    entries = doc["sections"]
    _require(
        isinstance(entries, list) and len(entries) <= MAX_SECTIONS,
        where,
        f"sections must be a list of at most {MAX_SECTIONS} entries",
    )
    sections: list[Section] = []
    names: set[tuple[str, str]] = set()
    pos = 0
    for i, entry in enumerate(entries):
        sec = _section(entry, f"{where}: section #{i}")
        key = (sec.kind, sec.name)
        _require(key not in names, where, f"section #{i} {sec.kind}/{sec.name!r} appears twice")
        names.add(key)
        _require(
            sec.offset == pos,
            where,
            f"section #{i} {sec.name!r} starts at {sec.offset}, expected {pos} "
            "(sections must be back to back: overlap or gap)",
        )
        pos += sec.length
        _require(
            pos <= data_size,
            where,
            f"section #{i} {sec.name!r} ends at {pos}, past the {data_size}-byte "
            "data region (truncated)",
        )
        sections.append(sec)
    _require(
        pos == data_size,
        where,
        f"sections cover {pos} bytes but the data region holds {data_size} "
        "(trailing bytes or truncated)",
    )
    for kind in (KIND_PLAN, KIND_PROGRAM):
        _require(
            sum(s.kind == kind for s in sections) == 1, where, f"needs exactly one {kind} section"
        )
    return Header(package_id, owner, created, key_check, tuple(sections))


def _section(entry: Any, where: str) -> Section:
    _require(isinstance(entry, dict), where, "must be an object")
    kind = entry.get("kind")
    _require(kind in KINDS, where, f"kind {kind!r} is not one of {KINDS}")
    allowed = set(_SECTION_KEYS)
    if kind in (KIND_DEVICE, KIND_SHIELDED):
        allowed |= _TENSOR_KEYS
    if kind == KIND_SHIELDED:
        allowed.add("nonce")
    _require(
        set(entry) == allowed, where, f"{kind} section needs exactly the keys {sorted(allowed)}"
    )
    name = entry["name"]
    _require(
        isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable(),
        where,
        f"name must be a printable string of 1..{MAX_NAME} characters",
    )
    offset = _int(entry["offset"], 0, MAX_SECTION_BYTES, where, "offset")
    length = _int(entry["length"], 0, MAX_SECTION_BYTES, where, "length")
    digest = _hex(entry["sha256"], 32, where, "sha256")
    if kind not in (KIND_DEVICE, KIND_SHIELDED):
        return Section(name, kind, offset, length, digest)
    dtype = entry["dtype"]
    _require(dtype in DTYPES, where, f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    shape = entry["shape"]
    _require(
        isinstance(shape, list) and len(shape) <= MAX_NDIM,
        where,
        f"shape must be a list of <= {MAX_NDIM} dims",
    )
    dims = tuple(_int(d, 0, MAX_SECTION_BYTES, where, "shape entry") for d in shape)
    numel = 1
    for d in dims:
        numel *= d
        _require(numel <= MAX_SECTION_BYTES, where, f"shape {list(dims)} is too large")
    expected = numel * itemsize(dtype) + (TAG_SIZE if kind == KIND_SHIELDED else 0)
    _require(
        length == expected,
        where,
        f"length {length} != {expected} bytes implied by {dtype}{list(dims)}"
        + (" + 16-byte GCM tag" if kind == KIND_SHIELDED else ""),
    )
    nonce = _hex(entry["nonce"], NONCE_SIZE, where, "nonce") if kind == KIND_SHIELDED else None
    return Section(name, kind, offset, length, digest, dtype, dims, nonce)


def _require(ok: Any, where: str, what: str) -> None:
    if not ok:
        raise PackageError(
            f"{where}: invalid header: {what}; the package is corrupted or was not written by "
            "taoism.trust.write_package"
        )


def _int(v: Any, lo: int, hi: int, where: str, field: str) -> int:
    _require(
        type(v) is int and lo <= v <= hi,
        where,
        f"{field} must be an integer in {lo}..{hi} (got {v!r})",
    )
    return v


def _hex(v: Any, size: int, where: str, field: str) -> bytes:
    _require(
        isinstance(v, str) and len(v) == 2 * size and _HEX.fullmatch(v),
        where,
        f"{field} must be {2 * size} lowercase hex digits",
    )
    return bytes.fromhex(v)


__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "Header",
    "KINDS",
    "MAGIC",
    "PREFIX",
    "Section",
    "VERSION",
    "decode_header",
    "parse_prefix",
    "validate_header",
]
