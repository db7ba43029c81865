"""Embedding lookups (``nn.Embedding``, ``F.embedding``) by regions of the index tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes


class EmbeddingExecutor(RegionExecutor):
    """Rows of a (resident or sealed) table gathered for each index region; the last dim whole."""

    kind = "embedding"

    def __init__(
        self, idx: Operand, table: Operand, out_shape: Sequence[int], out_dtype: torch.dtype
    ) -> None:
        self.idx, self.table = idx, table
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape) - 1))

    def operands(self) -> list[Operand]:
        return [self.idx, self.table]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        return (
            self.idx.read_cost(sizes[:-1])
            + self.table.read_cost(self.table.shape)
            + shape_bytes(sizes, self.out_itemsize)
        )

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        idx, ci = self.idx.read(region[:-1], ctx)
        try:
            table, ct = self.table.read(self.table.full(), ctx)
        except BaseException:
            ctx.acct.free("activations", ci)
            raise
        return self._y(ctx, region, lambda: F.embedding(idx, table)), ci + ct


__all__ = ["EmbeddingExecutor"]
