"""Binary frame format of the trust boundary (never pickle).

A frame is a fixed 48-byte header followed by a body::

    header  = magic b"TAO1" | version u16 | kind u16 | tag u32 | n_tensors u32
              | seq u64 | blob_len u64 | body_len u64 | request_id u64   (little endian)
    body    = descriptor * n_tensors | blob | (pad to 64) tensor_0 | (pad to 64) tensor_1 ...
    descriptor = dtype u8 | ndim u8 | 6 zero bytes | nbytes u64 | shape u64 * ndim

Tensor data starts at body offsets that are multiples of 64 and the body ends
right after the last tensor, so the layout is a pure function of the
descriptors and ``blob_len``: a decoder recomputes it and requires the result
to equal ``body_len`` exactly. Every dimension is bounded before anything is
allocated: a tensor's *extent* (the product of its dimensions with zeros counted
as one, times the item size) must not exceed ``MAX_EXTENT_BYTES`` (2**62), so a
zero-element tensor cannot carry dimensions whose size/stride product overflows.
The format is written down in ``docs/boundary.md``.

On the encrypted channel the header travels in clear (it is the AEAD
associated data) and the body is the ciphertext; this module knows nothing
about crypto. Decoding validates every count, length, dtype and shape *before*
anything is allocated, and decodes tensors zero-copy as views of a caller-owned
writable buffer: shaped numpy views handed to ``torch.from_numpy`` (half the
cost of ``torch.frombuffer`` + ``view`` for N-d tensors), ``torch.frombuffer``
for bfloat16, which numpy lacks. All multi-byte fields and tensor data are
little-endian.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from math import prod
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import numpy as np
import torch

from taoism.errors import FrameError

MAGIC = b"TAO1"
VERSION = 2
HEADER = struct.Struct("<4sHHIIQQQQ")
HEADER_SIZE = HEADER.size  # 48
#: Bound on a tensor's extent: prod(max(d, 1) for d in shape) * itemsize (strides fit in int64).
MAX_EXTENT_BYTES = 1 << 62
MAX_NDIM = 8
ALIGN = 64
#: Upper bound on tensors per frame, independent of the frame size limit.
MAX_TENSORS = 65_535
DESC_FIXED = struct.Struct("<BBHIQ")  # dtype, ndim, reserved u16, reserved u32, nbytes
DESC_FIXED_SIZE = DESC_FIXED.size  # 16
# One pre-compiled struct per ndim: fixed part followed by the shape.
_DESC_PACK = tuple(struct.Struct("<BBxxxxxxQ" + "Q" * n) for n in range(MAX_NDIM + 1))
_SHAPE = tuple(struct.Struct("<" + "Q" * n) for n in range(MAX_NDIM + 1))

#: Wire code of each supported dtype (stable: part of the format).
DTYPE_CODES: MappingProxyType[torch.dtype, int] = MappingProxyType(
    {
        torch.float32: 1,
        torch.float64: 2,
        torch.float16: 3,
        torch.bfloat16: 4,
        torch.int64: 5,
        torch.int32: 6,
        torch.int8: 7,
        torch.uint8: 8,
        torch.bool: 9,
    }
)
CODE_DTYPES: MappingProxyType[int, torch.dtype] = MappingProxyType(
    {c: d for d, c in DTYPE_CODES.items()}
)
# Code-indexed lookup tables (256 entries; 0 / None = unknown code).
_ITEMSIZE_BY_CODE = tuple(CODE_DTYPES[c].itemsize if c in CODE_DTYPES else 0 for c in range(256))
_DTYPE_BY_CODE = tuple(CODE_DTYPES.get(c) for c in range(256))
# Pre-bound callables of the hot paths (module constants, not state).
_desc_unpack = DESC_FIXED.unpack_from
_frombuffer = torch.frombuffer
_from_numpy = torch.from_numpy
_ndarray = np.ndarray
_NP_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_NP_BY_CODE = tuple(
    np.dtype(_NP_DTYPES[d]).newbyteorder("<") if d in _NP_DTYPES else None for d in _DTYPE_BY_CODE
)
_c_char = ctypes.c_char
_memmove = ctypes.memmove


class FrameHeader(NamedTuple):
    """The decoded, validated fixed header of a frame."""

    kind: int
    tag: int
    n_tensors: int
    seq: int
    blob_len: int
    body_len: int
    request_id: int = 0


class BodyPlan(NamedTuple):
    """Layout of an outgoing body.

    ``entries[i] = (tensor, dtype_code, shape, nbytes, offset)`` for contiguous
    CPU tensors (kept alive while their bytes are read); descriptors occupy
    ``[0, desc_len)``, the blob follows, tensor ``i`` starts at ``offset``.
    """

    desc_len: int
    entries: list[tuple[torch.Tensor, int, tuple[int, ...], int, int]]
    body_len: int


def align_up(n: int) -> int:
    """Round ``n`` up to the tensor alignment (64 bytes)."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def dtype_code(dtype: torch.dtype, where: str = "tensor") -> int:
    """Wire code of ``dtype``; FrameError if it cannot cross the boundary."""
    code = DTYPE_CODES.get(dtype)
    if code is None:
        supported = ", ".join(str(d).removeprefix("torch.") for d in DTYPE_CODES)
        raise FrameError(
            f"{where} has dtype {dtype}, which cannot cross the boundary; supported: {supported}. "
            "Cast it (e.g. .float()) before sending."
        )
    return code


def plan_body(tensors: Sequence[torch.Tensor], blob_len: int) -> BodyPlan:
    """Lay out a body for contiguous CPU tensors (see ``prepare_tensor``)."""
    infos = []
    desc_len = 0
    codes = DTYPE_CODES
    for i, t in enumerate(tensors):
        shape = t.shape
        ndim = len(shape)
        if ndim > MAX_NDIM:
            raise FrameError(
                f"tensor #{i} has {ndim} dimensions; the boundary supports at most "
                f"{MAX_NDIM}. Reshape it before sending."
            )
        code = codes.get(t.dtype)
        if code is None:
            dtype_code(t.dtype, f"tensor #{i}")  # raises with the list of supported dtypes
        if not t.nbytes:
            check_extent(shape, t.element_size(), f"tensor #{i}")
        infos.append((t, code, shape, t.nbytes))
        desc_len += DESC_FIXED_SIZE + 8 * ndim
    end = desc_len + blob_len
    entries: list[Any] = []
    for t, code, shape, nbytes in infos:
        off = (end + ALIGN - 1) & ~(ALIGN - 1)
        entries.append((t, code, shape, nbytes, off))
        end = off + nbytes
    return BodyPlan(desc_len, entries, end)


def prepare_tensor(t: Any, index: int) -> torch.Tensor:
    """Return ``t`` as a contiguous dense CPU tensor (copying only when needed)."""
    if not isinstance(t, torch.Tensor):
        raise FrameError(f"item #{index} to send is a {type(t).__name__}, expected a torch.Tensor")
    if t.layout is not torch.strided:
        raise FrameError(
            f"tensor #{index} has layout {t.layout}; only dense (strided) tensors "
            "cross the boundary. Call .to_dense() first."
        )
    if not t.is_cpu:
        if t.is_meta:
            raise FrameError(f"tensor #{index} is on the meta device and has no data to send")
        t = t.detach().to("cpu")
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A byte view of a contiguous CPU tensor's data (valid while ``t`` lives)."""
    n = t.nbytes
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B")


_ZEROS = bytes(ALIGN)
_CODE_DICT = dict(DTYPE_CODES)


def stage_body(
    tensors: Sequence[torch.Tensor],
    blob: bytes | bytearray | memoryview,
    out: Any,
    base: int,
    addr: int,
    limit: int,
) -> int:
    """Lay out and write a whole body at ``out[base:]`` (contiguous CPU tensors); returns ``body_len``.

    ``out`` is a writable byte buffer whose first byte lies at address ``addr``
    (tensor bytes are copied with one memmove each). Returns ``-body_len`` and
    writes nothing when the body is longer than ``limit``. One pass per step, no
    intermediate objects: this is the small-message hot path.
    """
    if len(tensors) == 1:  # the common case, without the general bookkeeping
        t = tensors[0]
        shape = t.shape
        ndim = len(shape)
        code = _CODE_DICT.get(t.dtype)
        nbytes = t.nbytes
        if code is None or ndim > MAX_NDIM or not nbytes:
            plan_body(tensors, 0)  # raises the precise error (or checks an empty tensor's extent)
        pos = DESC_FIXED_SIZE + 8 * ndim
        blob_end = pos + len(blob)
        off = (blob_end + ALIGN - 1) & ~(ALIGN - 1)
        end = off + nbytes
        if end > limit:
            return -end
        _DESC_PACK[ndim].pack_into(out, base, code, ndim, nbytes, *shape)
        if blob_end != pos:
            out[base + pos : base + blob_end] = blob
        if off != blob_end:
            out[base + blob_end : base + off] = _ZEROS[: off - blob_end]
        if nbytes:
            _memmove(addr + base + off, t.data_ptr(), nbytes)
        return end
    infos: list[tuple[Any, ...]] = []
    desc_len = 0
    codes = _CODE_DICT
    for t in tensors:
        shape = t.shape
        ndim = len(shape)
        code = codes.get(t.dtype)
        nbytes = t.nbytes
        if code is None or ndim > MAX_NDIM:
            plan_body(tensors, 0)  # raises the precise error
        if not nbytes:
            check_extent(shape, t.element_size(), f"tensor #{len(infos)}")
        infos.append((t, code, shape, ndim, nbytes))
        desc_len += DESC_FIXED_SIZE + 8 * ndim
    blob_len = len(blob)
    end = desc_len + blob_len
    for info in infos:
        end = ((end + ALIGN - 1) & ~(ALIGN - 1)) + info[4]
    if end > limit:
        return -end
    pos = base
    desc_pack = _DESC_PACK
    for _t, code, shape, ndim, nbytes in infos:
        desc_pack[ndim].pack_into(out, pos, code, ndim, nbytes, *shape)
        pos += DESC_FIXED_SIZE + 8 * ndim
    if blob_len:
        out[pos : pos + blob_len] = blob
        pos += blob_len
    for t, _code, _shape, _ndim, nbytes in infos:
        off = base + ((pos - base + ALIGN - 1) & ~(ALIGN - 1))
        if off != pos:
            out[pos:off] = _ZEROS[: off - pos]
        pos = off + nbytes
        if nbytes:
            _memmove(addr + off, t.data_ptr(), nbytes)
    return pos - base


def write_head(
    plan: BodyPlan, blob: bytes | bytearray | memoryview, out: bytearray, base: int = 0
) -> int:
    """Write descriptors and blob at ``out[base:]``; returns the body offset where they end."""
    pos = base
    for _t, code, shape, nbytes, _off in plan.entries:
        ndim = len(shape)
        _DESC_PACK[ndim].pack_into(out, pos, code, ndim, nbytes, *shape)
        pos += DESC_FIXED_SIZE + 8 * ndim
    if blob:
        end = pos + len(blob)
        out[pos:end] = blob
        pos = end
    return pos - base


def write_body(
    plan: BodyPlan, blob: bytes | bytearray | memoryview, out: bytearray, base: int = 0
) -> None:
    """Write the plaintext body described by ``plan`` into ``out[base:]`` (a bytearray).

    Padding bytes are zeroed so the body is a deterministic function of its inputs.
    """
    pos = base + write_head(plan, blob, out, base)
    char = ctypes.c_char
    for t, _code, _shape, n, off in plan.entries:
        off += base
        if off != pos:
            out[pos:off] = _ZEROS[: off - pos]
        pos = off + n
        if n:
            out[off:pos] = (char * n).from_address(t.data_ptr())


def pack_header(
    kind: int, tag: int, n_tensors: int, seq: int, blob_len: int, body_len: int, request_id: int = 0
) -> bytes:
    """Pack a frame header; FrameError if a field is out of range."""
    try:
        return HEADER.pack(
            MAGIC, VERSION, kind, tag, n_tensors, seq, blob_len, body_len, request_id
        )
    except struct.error:
        raise FrameError(_range_message(kind, tag, n_tensors, seq, request_id)) from None


def _range_message(kind: int, tag: int, n_tensors: int, seq: int, request_id: int = 0) -> str:
    for name, value, bits in (
        ("kind", kind, 16),
        ("tag", tag, 32),
        ("n_tensors", n_tensors, 32),
        ("seq", seq, 64),
        ("request_id", request_id, 64),
    ):
        if not isinstance(value, int) or not 0 <= value < (1 << bits):
            return f"frame header field {name}={value!r} is not an unsigned {bits}-bit integer"
    return "frame header field out of range"


def decode_header(data: bytes | bytearray | memoryview, max_body_bytes: int) -> FrameHeader:
    """Unpack and validate a header (magic, version, counts, lengths vs. ``max_body_bytes``)."""
    if len(data) < HEADER_SIZE:
        raise FrameError(
            f"truncated frame: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, version, kind, tag, n_tensors, seq, blob_len, body_len, request_id = HEADER.unpack_from(
        data, 0
    )
    if magic != MAGIC:
        raise FrameError(
            f"bad magic {magic!r} at header offset 0 (expected {MAGIC!r}): not a taoism "
            "boundary frame, or the peer speaks another protocol"
        )
    if version != VERSION:
        raise FrameError(
            f"unsupported frame version {version} at header offset 4 (this side speaks "
            f"{VERSION}); run the same taoism version on both sides"
        )
    if body_len > max_body_bytes:
        raise FrameError(
            f"header body_len={body_len} (offset 32) exceeds the maximum of {max_body_bytes} "
            "bytes; raise ChannelConfig.max_frame_bytes on both sides if this is legitimate"
        )
    if n_tensors > MAX_TENSORS:
        raise FrameError(
            f"header n_tensors={n_tensors} (offset 12) exceeds the limit of {MAX_TENSORS}"
        )
    if n_tensors * DESC_FIXED_SIZE + blob_len > body_len:
        raise FrameError(
            f"header lengths are inconsistent: {n_tensors} descriptors (>= "
            f"{n_tensors * DESC_FIXED_SIZE} bytes) + blob_len={blob_len} (offset 24) do not fit "
            f"in body_len={body_len}"
        )
    return FrameHeader(kind, tag, n_tensors, seq, blob_len, body_len, request_id)


def decode_body(header: FrameHeader, body: Any) -> tuple[list[torch.Tensor], bytes]:
    """Validate descriptors and decode the tensors of ``body`` zero-copy.

    ``body`` must be a writable buffer of exactly ``header.body_len`` bytes
    (a ``numpy`` uint8 array or a ``bytearray``); the returned tensors are views
    of it and keep it alive.
    """
    if len(body) != header.body_len:
        raise FrameError(
            f"body buffer holds {len(body)} bytes, header says body_len={header.body_len}"
        )
    return decode_body_parts(header.n_tensors, header.blob_len, header.body_len, body)


def decode_body_parts(
    n: int, blob_len: int, body_len: int, body: Any
) -> tuple[list[torch.Tensor], bytes]:
    """``decode_body`` on unpacked header fields (hot path; ``len(body) == body_len``)."""
    if (
        n == 1 and not blob_len and body_len >= DESC_FIXED_SIZE
    ):  # the common case: one non-empty tensor
        code, ndim, r16, r32, nbytes = _desc_unpack(body, 0)
        np_dtype = _NP_BY_CODE[code]
        end = DESC_FIXED_SIZE + 8 * ndim
        if (
            np_dtype is not None
            and ndim <= MAX_NDIM
            and not r16
            and not r32
            and end <= body_len
            and ((end + ALIGN - 1) & ~(ALIGN - 1)) + nbytes == body_len
        ):
            shape = _SHAPE[ndim].unpack_from(body, DESC_FIXED_SIZE)
            numel = prod(shape)
            if (
                numel and numel * _ITEMSIZE_BY_CODE[code] == nbytes
            ):  # else the general path says why
                return [_from_numpy(_ndarray(shape, np_dtype, body, body_len - nbytes))], b""
    specs = []
    pos = 0
    for i in range(n):
        if pos + DESC_FIXED_SIZE > body_len:
            raise FrameError(
                f"descriptor #{i} at body offset {pos} runs past the body end ({body_len})"
            )
        code, ndim, r16, r32, nbytes = _desc_unpack(body, pos)
        itemsize = _ITEMSIZE_BY_CODE[code]
        if not itemsize or ndim > MAX_NDIM or r16 or r32:
            _bad_descriptor(i, pos, code, ndim)
        end = pos + DESC_FIXED_SIZE + 8 * ndim
        if end > body_len:
            raise FrameError(
                f"descriptor #{i} shape at body offset {pos + DESC_FIXED_SIZE} runs past the body "
                f"end ({body_len})"
            )
        shape = _SHAPE[ndim].unpack_from(body, pos + DESC_FIXED_SIZE)
        numel = prod(shape)
        if numel * itemsize != nbytes:
            raise FrameError(
                f"descriptor #{i} at body offset {pos}: shape {shape} x {itemsize}-byte "
                f"{CODE_DTYPES[code]} = {numel * itemsize} bytes, but nbytes={nbytes}"
            )
        if not numel:  # nonzero tensors are bounded by nbytes <= body_len; empty ones are not
            check_extent(shape, itemsize, f"descriptor #{i} at body offset {pos}")
        specs.append((code, shape, numel, nbytes))
        pos = end
    blob_end = pos + blob_len
    end = blob_end
    for spec in specs:
        end = ((end + ALIGN - 1) & ~(ALIGN - 1)) + spec[3]
    if end != body_len:
        raise FrameError(
            f"body length mismatch: descriptors ({pos} bytes) + blob ({blob_len}) + aligned "
            f"tensor data need {end} bytes, header says body_len={body_len}"
        )
    # Everything is validated: build the views.
    blob = bytes(memoryview(body)[pos:blob_end]) if blob_len else b""
    tensors = []
    end = blob_end
    for code, shape, numel, nbytes in specs:
        off = (end + ALIGN - 1) & ~(ALIGN - 1)
        end = off + nbytes
        if not numel:
            t = torch.empty(shape, dtype=_DTYPE_BY_CODE[code])
        elif _NP_BY_CODE[code] is not None:  # a shaped numpy view: cheaper than frombuffer + view
            t = _from_numpy(_ndarray(shape, _NP_BY_CODE[code], body, off))
        else:  # bfloat16 has no numpy dtype
            t = _frombuffer(body, dtype=_DTYPE_BY_CODE[code], count=numel, offset=off)
            if len(shape) != 1:
                t = t.view(*shape) if shape else t.reshape(())
        tensors.append(t)
    return tensors, blob


def views_of(
    body: Any, specs: Sequence[tuple[int, tuple[int, ...], int, int]]
) -> list[torch.Tensor]:
    """Tensors of validated ``(code, shape, offset, non_empty)`` specs as zero-copy views of ``body``.

    The compiled decoder's counterpart of the end of ``decode_body_parts`` (the same views).
    """
    tensors = []
    for code, shape, off, non_empty in specs:
        np_dtype = _NP_BY_CODE[code]
        if not non_empty:
            t = torch.empty(shape, dtype=_DTYPE_BY_CODE[code])
        elif np_dtype is not None:
            t = _from_numpy(_ndarray(shape, np_dtype, body, off))
        else:  # bfloat16 has no numpy dtype
            dtype = cast(torch.dtype, _DTYPE_BY_CODE[code])  # known: the specs are validated
            t = _frombuffer(body, dtype=dtype, count=prod(shape), offset=off)
            if len(shape) != 1:
                t = t.view(*shape) if shape else t.reshape(())
        tensors.append(t)
    return tensors


def check_extent(shape: Sequence[int], itemsize: int, where: str) -> None:
    """FrameError unless ``prod(max(d, 1)) * itemsize <= MAX_EXTENT_BYTES`` (sizes and strides fit int64)."""
    extent = itemsize
    for d in shape:
        if d > 1:
            extent *= d
            if extent > MAX_EXTENT_BYTES:
                raise FrameError(
                    f"{where}: shape {tuple(shape)} has an extent (product of the dimensions, zeros "
                    f"counted as 1, x {itemsize}-byte items) above the {MAX_EXTENT_BYTES}-byte limit; "
                    "its size/stride product would overflow. Send a smaller shape."
                )


def _bad_descriptor(i: int, pos: int, code: int, ndim: int) -> None:
    where = f"descriptor #{i} at body offset {pos}"
    if code not in CODE_DTYPES:
        raise FrameError(f"{where}: unknown dtype code {code}; known codes {sorted(CODE_DTYPES)}")
    if ndim > MAX_NDIM:
        raise FrameError(f"{where}: ndim={ndim} exceeds the maximum of {MAX_NDIM}")
    raise FrameError(f"{where}: reserved bytes are not zero")


def encode_frame(
    kind: int,
    tag: int,
    seq: int,
    tensors: Sequence[torch.Tensor] = (),
    blob: bytes = b"",
    request_id: int = 0,
) -> bytearray:
    """Encode a complete plaintext frame (header + body); used by tests and plain transports."""
    prepared = [prepare_tensor(t, i) for i, t in enumerate(tensors)]
    plan = plan_body(prepared, len(blob))
    out = bytearray(HEADER_SIZE + plan.body_len)
    out[:HEADER_SIZE] = pack_header(
        kind, tag, len(prepared), seq, len(blob), plan.body_len, request_id
    )
    write_body(plan, blob, out, HEADER_SIZE)
    return out


def decode_frame(
    data: bytes | bytearray | memoryview, max_frame_bytes: int
) -> tuple[FrameHeader, list[torch.Tensor], bytes]:
    """Validate and decode a complete plaintext frame; tensors live in a fresh private buffer."""
    header = decode_header(data, max(0, max_frame_bytes - HEADER_SIZE))
    total = HEADER_SIZE + header.body_len
    if len(data) != total:
        raise FrameError(
            f"frame is {len(data)} bytes but its header announces {total} "
            f"({HEADER_SIZE} header + body_len={header.body_len}): truncated or padded"
        )
    body = np.empty(header.body_len, dtype=np.uint8)
    body[:] = np.frombuffer(data, dtype=np.uint8, count=header.body_len, offset=HEADER_SIZE)
    tensors, blob = decode_body(header, body)
    return header, tensors, blob


__all__ = [
    "ALIGN",
    "CODE_DTYPES",
    "DTYPE_CODES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_EXTENT_BYTES",
    "MAX_NDIM",
    "MAX_TENSORS",
    "VERSION",
    "BodyPlan",
    "FrameHeader",
    "align_up",
    "check_extent",
    "decode_body",
    "decode_body_parts",
    "decode_frame",
    "decode_header",
    "dtype_code",
    "encode_frame",
    "pack_header",
    "plan_body",
    "prepare_tensor",
    "stage_body",
    "tensor_bytes",
    "views_of",
    "write_body",
    "write_head",
]
