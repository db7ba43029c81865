"""Batched matrix products (``matmul``, ``bmm``, ``@``) by output regions: batch dims and rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes
from taoism.enclave.exec.elementwise import broadcast_region


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The output shape of ``a @ b`` for operands of at least two dims, or None if they do not match."""
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    try:
        batch = tuple(torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
    except RuntimeError:
        return None
    return batch + (a[-2], b[-1])


def operand_region(shape: Sequence[int], out_batch: Region, rows: slice, cols: slice) -> Region:
    """The region of a (broadcast) matrix operand that feeds an output region."""
    return broadcast_region(shape[:-2], out_batch) + (rows, cols)


class MatmulExecutor(RegionExecutor):
    """``a @ b`` (batch dims broadcast) by batch dims, rows of ``a`` and columns of ``b``."""

    kind = "matmul"

    def __init__(
        self, a: Operand, b: Operand, out_shape: Sequence[int], out_dtype: torch.dtype
    ) -> None:
        self.a, self.b = a, b
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape)))
        self.K = a.shape[-1]

    def operands(self) -> list[Operand]:
        return [self.a, self.b]

    def _regions(self, region: Region) -> tuple[Region, Region]:
        batch, rows, cols = region[:-2], region[-2], region[-1]
        return (
            operand_region(self.a.shape, batch, rows, slice(0, self.K)),
            operand_region(self.b.shape, batch, slice(0, self.K), cols),
        )

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        ra, rb = self._regions(tuple(slice(0, s) for s in sizes))
        sa, sb = [r.stop - r.start for r in ra], [r.stop - r.start for r in rb]
        # torch expands a broadcast operand to the chunk's batch before the product
        expand = (
            math.prod(sizes[:-2])
            * self.K
            * (sizes[-1] * self.b.itemsize + sizes[-2] * self.a.itemsize)
            if (sa[:-2] != list(sizes[:-2]) or sb[:-2] != list(sizes[:-2]))
            else 0
        )
        return (
            self.a.read_cost(sa)
            + self.b.read_cost(sb)
            + expand
            + shape_bytes(sizes, self.out_itemsize)
        )

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        ra, rb = self._regions(region)
        a, ca = self.a.read(ra, ctx)
        try:
            b, cb = self.b.read(rb, ctx)
        except BaseException:
            ctx.acct.free("activations", ca)
            raise
        y = self._y(ctx, region, lambda: torch.matmul(a, b))
        if tuple(y.shape) != tuple(
            s.stop - s.start for s in region
        ):  # batch broadcast to the chunk
            y = y.expand(tuple(s.stop - s.start for s in region))
        return y, ca + cb


__all__ = ["MatmulExecutor", "matmul_shape", "operand_region"]
