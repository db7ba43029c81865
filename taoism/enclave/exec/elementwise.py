"""Element-wise chunked executors: unary ops, broadcasting binary ops, eval batch norm."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes


def broadcast_region(op_shape: Sequence[int], out_region: Region) -> Region:
    """The region of a broadcast operand that feeds ``out_region`` of the output."""
    nd, od = len(op_shape), len(out_region)
    reg = []
    for i in range(nd):
        sl = out_region[od - nd + i]
        reg.append(slice(0, 1) if op_shape[i] == 1 else sl)
    return tuple(reg)


class UnaryExecutor(RegionExecutor):
    """An element-wise function of one value (activations, ``.float()``...), by any region."""

    kind = "elementwise"

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        x: Operand,
        extra: tuple[object, ...],
        kwargs: Mapping[str, object],
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.fn, self.x, self.extra, self.kwargs = fn, x, extra, dict(kwargs)
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape)))

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        return self.x.read_cost(sizes) + shape_bytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        x, charged = self.x.read(region, ctx)
        return self._y(ctx, region, lambda: self.fn(x, *self.extra, **self.kwargs)), charged


class BinaryExecutor(RegionExecutor):
    """A broadcasting binary op over values and scalars (add/sub/mul/div), by output regions."""

    kind = "binary"

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        args: Sequence[Operand | int | float],
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.fn = fn
        self.args = list(args)  # Operands or python scalars
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape)))

    def operands(self) -> list[Operand]:
        return [a for a in self.args if isinstance(a, Operand)]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        region = tuple(slice(0, s) for s in sizes)
        c = shape_bytes(sizes, self.out_itemsize)
        for a in self.operands():
            rs = [r.stop - r.start for r in broadcast_region(a.shape, region)]
            c += a.read_cost(rs)
        return c

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        vals, charged = [], 0
        try:
            for a in self.args:
                if isinstance(a, Operand):
                    t, n = a.read(broadcast_region(a.shape, region), ctx)
                    charged += n
                    vals.append(t)
                else:
                    vals.append(a)
            y = self._y(ctx, region, lambda: self.fn(*vals))
        except BaseException:
            ctx.acct.free("activations", charged)
            raise
        if tuple(y.shape) != tuple(s.stop - s.start for s in region):
            y = y.expand(tuple(s.stop - s.start for s in region))
        return y, charged


class BatchNormExecutor(RegionExecutor):
    """Eval-mode batch norm (running statistics): any region; without running stats, channels."""

    kind = "batchnorm"

    def __init__(
        self,
        x: Operand,
        params: Mapping[str, Operand | None],
        eps: float,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.x, self.p, self.eps = x, dict(params), eps
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        stats = self.p.get("running_mean") is not None and self.p.get("running_var") is not None
        nd = len(self.out_shape)
        self.dims = ((0, 1) + tuple(range(2, nd))) if stats else (1,)
        self.stats = stats

    def operands(self) -> list[Operand]:
        return [self.x] + [p for p in self.p.values() if p is not None]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        c = self.x.read_cost(sizes) + shape_bytes(sizes, self.out_itemsize)
        for p in self.p.values():
            if p is not None and p.paged:
                c += p.read_cost((sizes[1],))
        if not self.stats:  # batch statistics: torch makes a normalised temporary
            c += shape_bytes(sizes, self.out_itemsize)
        return c

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        x, charged = self.x.read(region, ctx)
        ps = {}
        for k, p in self.p.items():
            if p is None:
                ps[k] = None
            else:
                t, n = p.read((region[1],), ctx)
                charged += n
                ps[k] = t
        y = self._y(
            ctx,
            region,
            lambda: F.batch_norm(
                x,
                ps.get("running_mean"),
                ps.get("running_var"),
                ps.get("weight"),
                ps.get("bias"),
                not self.stats,
                0.0,
                self.eps,
            ),
        )
        return y, charged


__all__ = ["BatchNormExecutor", "BinaryExecutor", "UnaryExecutor", "broadcast_region"]
