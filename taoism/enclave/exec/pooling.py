"""Pooling chunked executors (max/avg with the input halo, adaptive by planes) and their shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import (
    ExecContext,
    IntOrSeq,
    Operand,
    OutputSize,
    Region,
    RegionExecutor,
    as_tuple,
    shape_bytes,
)


class PoolExecutor(RegionExecutor):
    """Max/avg pooling 1d/2d: by batch, channel and output rows (with the input halo)."""

    kind = "pool"

    def __init__(
        self,
        x: Operand,
        nd: int,
        is_max: bool,
        kernel: IntOrSeq,
        stride: IntOrSeq | None,
        padding: IntOrSeq,
        dilation: IntOrSeq,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.x, self.nd, self.is_max = x, nd, is_max
        self.k = as_tuple(kernel, nd)
        self.s = as_tuple(stride if stride not in (None, ()) else kernel, nd)
        self.p = as_tuple(padding, nd)
        self.d = as_tuple(dilation, nd)
        self.ceil_mode, self.cip, self.div = ceil_mode, count_include_pad, divisor_override
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        lead = len(self.out_shape) - nd  # (N, C) or (C,) before the spatial dims
        self.lead = lead
        self.row_dim = lead
        rows_ok = x.dtype.is_floating_point and (
            is_max or ((self.p[0] == 0 or count_include_pad) and not ceil_mode)
        )
        self.rows_ok = rows_ok
        self.dims = tuple(range(lead)) + ((self.row_dim,) if rows_ok else ())

    def operands(self) -> list[Operand]:
        return [self.x]

    def _rows_in(self, rh: int) -> int:
        return (rh - 1) * self.s[0] + self.d[0] * (self.k[0] - 1) + 1

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        xs = list(self.x.shape)
        lead = self.lead
        out_b = shape_bytes(sizes, self.out_itemsize)
        rh = sizes[self.row_dim]
        if rh == self.out_shape[self.row_dim]:
            reg = list(sizes[:lead]) + xs[lead:]
            sliced = any(a != b for a, b in zip(sizes[1:lead], xs[1:lead]))
            return self.x.read_cost(reg, copy=sliced) + out_b
        reg = list(sizes[:lead]) + [self._rows_in(rh)] + xs[lead + 1 :]
        extra = (
            self.x.read_cost(
                list(sizes[:lead]) + [min(self._rows_in(rh), xs[lead])] + xs[lead + 1 :]
            )
            if self.x.paged
            else 0
        )
        return shape_bytes(reg, self.x.itemsize) + extra + out_b

    def _call(self, x: torch.Tensor, row_pad: bool) -> torch.Tensor:
        pad = ((0,) + tuple(self.p[1:])) if row_pad else self.p
        if self.nd == 2:
            if self.is_max:
                return F.max_pool2d(x, self.k, self.s, pad, self.d, self.ceil_mode)
            return F.avg_pool2d(x, self.k, self.s, pad, self.ceil_mode, self.cip, self.div)
        if self.is_max:
            return F.max_pool1d(x, self.k, self.s, pad, self.d, self.ceil_mode)
        return F.avg_pool1d(x, self.k, self.s, pad, self.ceil_mode, self.cip)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        lead, xs = self.lead, self.x.shape
        r = region[self.row_dim]
        if r.start == 0 and r.stop == self.out_shape[self.row_dim]:
            reg = tuple(region[:lead]) + tuple(slice(0, n) for n in xs[lead:])
            sliced = any(sl.stop - sl.start != n for sl, n in zip(region[1:lead], xs[1:lead]))
            x, charged = self.x.read(reg, ctx, copy=sliced)
            return self._y(ctx, region, lambda: self._call(x, False)), charged
        a = r.start * self.s[0] - self.p[0]
        b = (r.stop - 1) * self.s[0] - self.p[0] + self.d[0] * (self.k[0] - 1) + 1
        a2, b2 = max(a, 0), min(b, xs[lead])
        reg = tuple(region[:lead]) + (slice(a2, b2),) + tuple(slice(0, n) for n in xs[lead + 1 :])
        part, charged = self.x.read(reg, ctx)
        shape = list(part.shape)
        shape[lead] = b - a
        n = shape_bytes(shape, self.x.itemsize)
        ctx.acct.alloc("activations", n)
        fill = float("-inf") if self.is_max else 0.0
        buf = torch.full(shape, fill, dtype=part.dtype, device=part.device)
        buf.narrow(lead, a2 - a, b2 - a2).copy_(part)
        ctx.acct.free("activations", charged)
        del part
        return self._y(ctx, region, lambda: self._call(buf, True)), n


class AdaptivePoolExecutor(RegionExecutor):
    """Adaptive avg/max pooling, by (batch, channel) planes."""

    kind = "adaptive_pool"

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        x: Operand,
        output_size: OutputSize,
        nd: int,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.fn, self.x, self.output_size = fn, x, output_size
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.lead = len(self.out_shape) - nd
        self.dims = tuple(range(self.lead))

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        reg = list(sizes[: self.lead]) + list(self.x.shape[self.lead :])
        sliced = any(a != b for a, b in zip(sizes[1 : self.lead], self.x.shape[1 : self.lead]))
        return self.x.read_cost(reg, copy=sliced) + shape_bytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        reg = tuple(region[: self.lead]) + tuple(slice(0, n) for n in self.x.shape[self.lead :])
        sliced = any(
            sl.stop - sl.start != n
            for sl, n in zip(region[1 : self.lead], self.x.shape[1 : self.lead])
        )
        x, charged = self.x.read(reg, ctx, copy=sliced)
        return self._y(ctx, region, lambda: self.fn(x, self.output_size)), charged


def pool_shape(
    xs: Sequence[int],
    nd: int,
    kernel: IntOrSeq,
    stride: IntOrSeq | None,
    padding: IntOrSeq,
    dilation: IntOrSeq,
    ceil_mode: bool,
) -> tuple[int, ...] | None:
    """Output shape of a max/avg pool, or None if it would be empty."""
    if len(xs) < nd + 1:
        return None
    k = as_tuple(kernel, nd)
    s = as_tuple(stride if stride not in (None, (), []) else kernel, nd)
    p, d = as_tuple(padding, nd), as_tuple(dilation, nd)
    sp = []
    for i in range(nd):
        n = xs[len(xs) - nd + i]
        num = n + 2 * p[i] - d[i] * (k[i] - 1) - 1 + ((s[i] - 1) if ceil_mode else 0)
        o = num // s[i] + 1
        if ceil_mode and (o - 1) * s[i] >= n + p[i]:
            o -= 1
        if o < 1:
            return None
        sp.append(o)
    return tuple(xs[: len(xs) - nd]) + tuple(sp)


def adaptive_shape(xs: Sequence[int], nd: int, output_size: OutputSize) -> tuple[int, ...] | None:
    """Output shape of an adaptive pool, or None if the input has too few dims."""
    if len(xs) < nd + 1:
        return None
    osz = (
        tuple(output_size)
        if isinstance(output_size, (tuple, list))
        else (cast("int | None", output_size),) * nd
    )
    lead = tuple(xs[: len(xs) - nd])
    return lead + tuple(xs[len(xs) - nd + i] if o is None else int(o) for i, o in enumerate(osz))


__all__ = ["AdaptivePoolExecutor", "PoolExecutor", "adaptive_shape", "pool_shape"]
