"""Shape-op chunked executors: concatenation and flatten of (possibly sealed) values."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes


class CatExecutor(RegionExecutor):
    """``torch.cat`` of resident or sealed parts, by output regions."""

    kind = "cat"

    def __init__(
        self, parts: Sequence[Operand], dim: int, out_shape: Sequence[int], out_dtype: torch.dtype
    ) -> None:
        self.parts = list(parts)
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dim = dim % len(self.out_shape)
        offs = [0]
        for p in self.parts:
            offs.append(offs[-1] + p.shape[self.dim])
        self.offs = offs
        self.dims = tuple(range(len(self.out_shape)))

    def operands(self) -> list[Operand]:
        return list(self.parts)

    def _pieces(self, region: Region) -> list[tuple[Operand, Region]]:
        sl = region[self.dim]
        out = []
        for p, a, b in zip(self.parts, self.offs, self.offs[1:]):
            lo, hi = max(sl.start, a), min(sl.stop, b)
            if lo < hi:
                r = list(region)
                r[self.dim] = slice(lo - a, hi - a)
                out.append((p, tuple(r)))
        return out

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        # worst case over chunk positions: every part read contributes at most the chunk size
        region = tuple(slice(0, s) for s in sizes)
        c = shape_bytes(sizes, self.out_itemsize)
        paged = [p for p in self.parts if p.paged]
        if paged:
            c += shape_bytes(sizes, self.parts[0].itemsize) + max(p.block for p in paged) * min(
                len(paged), max(1, len(self._pieces(region)))
            )
        return c

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        vals, charged = [], 0
        for p, r in self._pieces(region):
            t, n = p.read(r, ctx)
            vals.append(t)
            charged += n
        return self._y(ctx, region, lambda: torch.cat(vals, self.dim)), charged


class FlattenExecutor(RegionExecutor):
    """Flatten of a sealed value, by batch rows."""

    kind = "flatten"

    def __init__(
        self, x: Operand, start: int, end: int, out_shape: Sequence[int], out_dtype: torch.dtype
    ) -> None:
        self.x, self.start, self.end = x, start, end
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = (0,)

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        reg = [sizes[0]] + list(self.x.shape[1:])
        return self.x.read_cost(reg) + shape_bytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        reg = (region[0],) + tuple(slice(0, n) for n in self.x.shape[1:])
        x, charged = self.x.read(reg, ctx)
        return self._y(ctx, region, lambda: torch.flatten(x, self.start, self.end)), charged


__all__ = ["CatExecutor", "FlattenExecutor"]
