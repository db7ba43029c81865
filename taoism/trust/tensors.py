"""Tensors to and from the package's raw little-endian bytes (no pickle)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from taoism.errors import PackageError
from taoism.trust.format import DTYPE_NAMES, DTYPES


def tensor_bytes(t: Any, where: str) -> tuple[str, tuple[int, ...], memoryview]:
    """(dtype name, shape, raw bytes) of a CPU copy of ``t``; PackageError for unsupported types."""
    if not isinstance(t, torch.Tensor):
        raise PackageError(f"{where} is a {type(t).__name__}, not a torch.Tensor")
    if t.dtype not in DTYPE_NAMES:
        raise PackageError(f"{where} has dtype {t.dtype}; a package stores {sorted(DTYPES)}")
    if t.is_sparse or t.is_quantized or t.layout != torch.strided:
        raise PackageError(
            f"{where} is not a dense strided tensor; convert it with .to_dense() / .dequantize()"
        )
    c = t.detach().to("cpu").contiguous()
    if sys.byteorder != "little":  # pragma: no cover - all supported platforms are little-endian
        raise PackageError("packages are little-endian; this platform is not")
    raw = c.reshape(-1).view(torch.uint8).numpy()
    return DTYPE_NAMES[t.dtype], tuple(c.shape), raw.data.cast("B")


def tensor_from_bytes(
    data: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...]
) -> torch.Tensor:
    """A new tensor owning a copy of ``data`` (whose length the header validation already checked)."""
    buf = bytearray(data)
    if not buf:
        return torch.empty(shape, dtype=DTYPES[dtype])
    return torch.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)


__all__ = ["tensor_bytes", "tensor_from_bytes"]
