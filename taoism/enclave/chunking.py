"""Chunked execution inside the enclave's memory budget.

A layer whose working set (inputs, weights, output, scratch) does not fit what the budget leaves
free is run in chunks sized from its own shape and that free space:

* convolution (Conv1d/Conv2d, ``F.conv2d``): by batch rows, output channels (group aware) and
  output rows, reading each row chunk with the input halo its kernel, stride, dilation and
  padding need;
* linear (``nn.Linear``, ``F.linear``): by batch rows and output features;
* batch norm, element-wise ops, pooling (max/avg with halo rows, adaptive by planes), flatten:
  by element/row ranges; add/sub/mul/div and cat by slices.

Chunk sizes come from a search over the layer's own dimensions (nothing has to divide
anything; the last chunk is simply shorter). Values that do not fit stay *sealed*
(:mod:`taoism.enclave.sealing`) and are streamed in block by block; values and, as a last
resort, weights are sealed (evicted) farthest-next-use first when a layer needs room.

The same code runs on meta tensors (``meta=True``) to plan memory without computing anything:
the host uses it for the up-front refusal and the ``taoism plan`` memory table.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from taoism.enclave.memory import (Accountant, MemoryReport, NodeMemory, ResidentValues,
                                   runtime_rss, tensor_bytes)
from taoism.enclave.sealing import PagedTensor, Sealer, block_cuts, even_cuts
from taoism.errors import FrameError, MemoryBudgetError

Region = tuple[slice, ...]
CHUNK_PENALTY_BYTES = 256 << 10  # a chunk's fixed overhead (~50 us) expressed as bytes of crypto
DEFAULT_PAGE_BYTES = 1 << 20
DEFAULT_BOUNDARY_BYTES = 64 << 10  # the channel's initial staging buffer


@functools.lru_cache(maxsize=4096)
def _cands(n: int) -> list[int]:
    """Candidate chunk sizes for a dimension of size ``n``, largest first (no divisibility)."""
    if n <= 1:
        return [max(n, 1)]
    s = {math.ceil(n / k) for k in range(1, min(n, 16) + 1)}
    j = 1
    while (n >> j) > 0:
        s.add(math.ceil(n / (1 << j)))
        j += 1
    s.add(1)
    return sorted(s, reverse=True)


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """Largest v in [lo, hi] with ok(v), for ok monotone (true below a threshold)."""
    if hi < lo or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _nbytes(shape: Sequence[int], itemsize: int) -> int:
    return math.prod(shape) * itemsize


def _tup(v: Any, n: int) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


# ----------------------------------------------------------------------------------------------
# Execution context, operands and sinks
# ----------------------------------------------------------------------------------------------

@dataclass
class ExecContext:
    """What an executor needs: the accountant, the sealer, and meta/real mode."""

    acct: Accountant
    sealer: Sealer
    meta: bool = False
    page_bytes: int = DEFAULT_PAGE_BYTES
    reserve: int = 0  # headroom kept free for sealing temporaries (a strided block's copy)

    def __post_init__(self) -> None:
        if self.acct.budget is not None and not self.reserve:
            self.reserve = self.page_bytes
        if self.sealer.on_temp is None:
            acct = self.acct
            self.sealer.on_temp = lambda n: acct.alloc("crypto", n) if n > 0 else acct.free("crypto", -n)

    @property
    def device(self) -> str:
        return "meta" if self.meta else "cpu"


class Operand:
    """A tensor input of a chunked layer: resident (a Tensor) or sealed (a PagedTensor)."""

    __slots__ = ("value", "paged", "shape", "dtype", "itemsize", "block")

    def __init__(self, value: torch.Tensor | PagedTensor) -> None:
        self.value = value
        self.paged = isinstance(value, PagedTensor)
        self.shape = tuple(value.shape)
        self.dtype = value.dtype
        self.itemsize = value.itemsize if self.paged else value.element_size()
        self.block = value.max_block_bytes if self.paged else 0

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.itemsize)

    def read_cost(self, region_shape: Sequence[int], *, copy: bool = False) -> int:
        """Bytes held while a region read is alive (0 for a view of a resident tensor)."""
        n = _nbytes(region_shape, self.itemsize)
        if self.paged:
            return n + self.block
        return n if copy else 0

    def read(self, region: Region, ctx: ExecContext, *, copy: bool = False) -> tuple[torch.Tensor, int]:
        """The region (a view, or a new tensor charged to ``activations``); returns (t, charged)."""
        if not self.paged:
            t = self.value[region]
            if not copy:
                return t, 0
            n = tensor_bytes(t)
            ctx.acct.alloc("activations", n)
            return t.contiguous() if not t.is_contiguous() else t.clone(), n
        shape = tuple(s.stop - s.start for s in region)
        n = _nbytes(shape, self.itemsize)
        ctx.acct.alloc("activations", n)
        try:
            t = self.value.read(region, charge=lambda b: ctx.acct.alloc("crypto", b),
                                release=lambda b: ctx.acct.free("crypto", b))
        except BaseException:
            ctx.acct.free("activations", n)
            raise
        return t, n

    def full(self) -> Region:
        return tuple(slice(0, s) for s in self.shape)


class Sink:
    """Where a chunked layer's output goes: a resident tensor or a sealed PagedTensor."""

    def __init__(self, ctx: ExecContext, name: str, shape: Sequence[int], dtype: torch.dtype,
                 cuts: Sequence[Sequence[int]], sealed: bool) -> None:
        self.ctx = ctx
        self.shape = tuple(shape)
        self.sealed = sealed
        self.single = all(len(c) == 2 for c in cuts)
        self.charged = 0
        self.out: torch.Tensor | None = None
        self.paged: PagedTensor | None = None
        if sealed:
            self.paged = PagedTensor(f"a:{name}", shape, dtype, refine_cuts(shape, dtype.itemsize, cuts,
                                                                             ctx.page_bytes), ctx.sealer)
        elif not self.single:
            self.charged = _nbytes(shape, dtype.itemsize)
            ctx.acct.alloc("activations", self.charged)
            self.out = torch.empty(self.shape, dtype=dtype, device=ctx.device)

    def put(self, region: Region, t: torch.Tensor) -> None:
        if self.paged is not None:
            self.paged.put_region(region, t)
        elif self.single:
            self.out = t
        else:
            assert self.out is not None
            self.out[region].copy_(t)

    def result(self) -> tuple[torch.Tensor | PagedTensor, int]:
        """The output value, and the bytes the sink charged that the caller must release."""
        return (self.paged if self.paged is not None else self.out), self.charged


def refine_cuts(shape: Sequence[int], itemsize: int, cuts: Sequence[Sequence[int]],
                target: int) -> tuple[tuple[int, ...], ...]:
    """Cut a chunk grid finer (batch, then rows) so sealed blocks hold about ``target`` bytes.

    Readers unseal whole blocks; small blocks along the batch and row dims keep what a reader
    with a different chunking decrypts close to what it needs.
    """
    cuts = [tuple(c) for c in cuts]
    nd = len(shape)
    if nd == 0:
        return tuple(cuts)

    def widest(c: Sequence[int]) -> int:
        return max((b - a for a, b in zip(c, c[1:])), default=0)

    inner = itemsize * math.prod(widest(c) for c in cuts[1:])
    if widest(cuts[0]) > 1 and widest(cuts[0]) * inner > target:  # one sample per block
        cuts[0] = tuple(range(0, shape[0])) + (shape[0],)
    if nd >= 3:
        row = itemsize * math.prod(widest(c) for i, c in enumerate(cuts) if i not in (0, 2)) * (
            1 if widest(cuts[0]) <= 1 else widest(cuts[0]))
        r = max(1, target // max(row, 1))
        if widest(cuts[2]) > r:
            new = []
            for a, b in zip(cuts[2], cuts[2][1:]):
                new.extend(range(a, b, r))
            cuts[2] = tuple(new) + (shape[2],)
    return tuple(cuts)


@dataclass
class ChunkPlan:
    """How a layer runs: its output grid (cuts per output dim) and the bytes one chunk holds."""

    grid: tuple[tuple[int, ...], ...]
    cost: int
    out_sealed: bool
    traffic: int = 0  # bytes the layer unseals (re-reads included) and seals, estimated
    order: str = ""  # conv/linear loop order: "oc" (output channels outer) or "xy" (batch/rows outer)

    @property
    def chunks(self) -> int:
        return math.prod(len(c) - 1 for c in self.grid)

    def describe(self) -> str:
        """Chunk size per output dim, e.g. ``4/16,64,7/56,56`` (chunk/size where cut)."""
        return ",".join(f"{c[1] - c[0]}/{c[-1]}" if len(c) > 2 else f"{c[-1]}" for c in self.grid)


def _regions(grid: Sequence[Sequence[int]]):
    import itertools
    for idx in itertools.product(*(range(len(c) - 1) for c in grid)):
        yield tuple(slice(c[i], c[i + 1]) for c, i in zip(grid, idx))


class Executor:
    """Base of the chunked executors: ``plan(avail, out_sealed)`` then ``run(plan, sink)``."""

    kind = "?"
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype

    @property
    def out_itemsize(self) -> int:
        return self.out_dtype.itemsize

    @property
    def out_bytes(self) -> int:
        return _nbytes(self.out_shape, self.out_itemsize)

    def plan(self, avail: float, out_sealed: bool) -> ChunkPlan | None:
        raise NotImplementedError

    def min_cost(self) -> int:
        """Bytes the smallest chunk needs (output sealed)."""
        p = self.plan(float("inf"), True, smallest=True)  # type: ignore[call-arg]
        return p.cost if p is not None else 0

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        raise NotImplementedError

    def operands(self) -> list[Operand]:
        return []


# ----------------------------------------------------------------------------------------------
# Region executors (element-wise, binary, BN, pooling, cat, flatten)
# ----------------------------------------------------------------------------------------------

class RegionExecutor(Executor):
    """Output computed region by region; subclasses give ``chunk_cost`` and ``compute``."""

    dims: tuple[int, ...] = ()  # output dims that may be cut, outermost first

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        raise NotImplementedError

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def _y(self, ctx: ExecContext, region: Region, thunk: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The chunk's output; when planning (meta), its shape only, without calling the op."""
        if ctx.meta:
            return torch.empty(tuple(sl.stop - sl.start for sl in region), dtype=self.out_dtype,
                               device="meta")
        return thunk()

    def _total(self, sizes: Sequence[int], out_sealed: bool) -> int:
        multi = list(sizes) != list(self.out_shape)
        return self.chunk_cost(sizes) + (self.out_bytes if (multi and not out_sealed) else 0)

    def plan(self, avail: float, out_sealed: bool, smallest: bool = False) -> ChunkPlan | None:
        shape = list(self.out_shape)
        sizes = list(shape)
        if smallest:
            for d in self.dims:
                sizes[d] = 1 if shape[d] else 0
            return self._mk(sizes, out_sealed)
        if self._total(sizes, out_sealed) <= avail:
            return self._mk(sizes, out_sealed)
        for d in self.dims:
            if shape[d] <= 1:
                continue

            def ok(v: int, d: int = d) -> bool:
                trial = list(sizes)
                trial[d] = v
                return self._total(trial, out_sealed) <= avail

            v = _largest(1, shape[d], ok)
            if v is not None:
                sizes[d] = v
                return self._mk(sizes, out_sealed)
            sizes[d] = 1
        return None

    def _mk(self, sizes: Sequence[int], out_sealed: bool) -> ChunkPlan:
        grid = tuple(even_cuts(n, s) if n else (0, 0) for n, s in zip(self.out_shape, sizes))
        traffic = sum(o.nbytes for o in self.operands() if o.paged) + (self.out_bytes if out_sealed else 0)
        return ChunkPlan(grid, self._total(sizes, out_sealed), out_sealed, traffic)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        for region in _regions(plan.grid):
            y, charged = self.compute(region, ctx)
            n = tensor_bytes(y)
            acct.alloc("activations", n)
            try:
                sink.put(region, y)
            finally:
                acct.free("activations", n)
                acct.free("activations", charged)
            del y


def _bcast_region(op_shape: Sequence[int], out_region: Region) -> Region:
    """The region of a broadcast operand that feeds ``out_region`` of the output."""
    nd, od = len(op_shape), len(out_region)
    reg = []
    for i in range(nd):
        sl = out_region[od - nd + i]
        reg.append(slice(0, 1) if op_shape[i] == 1 else sl)
    return tuple(reg)


class UnaryExecutor(RegionExecutor):
    kind = "elementwise"

    def __init__(self, fn: Callable[..., Any], x: Operand, extra: tuple[Any, ...],
                 kwargs: Mapping[str, Any], out_shape: Sequence[int], out_dtype: torch.dtype) -> None:
        self.fn, self.x, self.extra, self.kwargs = fn, x, extra, dict(kwargs)
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape)))

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        return self.x.read_cost(sizes) + _nbytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        x, charged = self.x.read(region, ctx)
        return self._y(ctx, region, lambda: self.fn(x, *self.extra, **self.kwargs)), charged


class BinaryExecutor(RegionExecutor):
    kind = "binary"

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any], out_shape: Sequence[int],
                 out_dtype: torch.dtype) -> None:
        self.fn = fn
        self.args = list(args)  # Operands or python scalars
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = tuple(range(len(self.out_shape)))

    def operands(self) -> list[Operand]:
        return [a for a in self.args if isinstance(a, Operand)]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        region = tuple(slice(0, s) for s in sizes)
        c = _nbytes(sizes, self.out_itemsize)
        for a in self.operands():
            rs = [r.stop - r.start for r in _bcast_region(a.shape, region)]
            c += a.read_cost(rs)
        return c

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        vals, charged = [], 0
        try:
            for a in self.args:
                if isinstance(a, Operand):
                    t, n = a.read(_bcast_region(a.shape, region), ctx)
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

    def __init__(self, x: Operand, params: Mapping[str, Operand | None], eps: float,
                 out_shape: Sequence[int], out_dtype: torch.dtype) -> None:
        self.x, self.p, self.eps = x, dict(params), eps
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        stats = self.p.get("running_mean") is not None and self.p.get("running_var") is not None
        nd = len(self.out_shape)
        self.dims = ((0, 1) + tuple(range(2, nd))) if stats else (1,)
        self.stats = stats

    def operands(self) -> list[Operand]:
        return [self.x] + [p for p in self.p.values() if p is not None]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        c = self.x.read_cost(sizes) + _nbytes(sizes, self.out_itemsize)
        for p in self.p.values():
            if p is not None and p.paged:
                c += p.read_cost((sizes[1],))
        if not self.stats:  # batch statistics: torch makes a normalised temporary
            c += _nbytes(sizes, self.out_itemsize)
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
        y = self._y(ctx, region, lambda: F.batch_norm(
            x, ps.get("running_mean"), ps.get("running_var"), ps.get("weight"), ps.get("bias"),
            not self.stats, 0.0, self.eps))
        return y, charged


class PoolExecutor(RegionExecutor):
    """Max/avg pooling 1d/2d: by batch, channel and output rows (with the input halo)."""

    kind = "pool"

    def __init__(self, x: Operand, nd: int, is_max: bool, kernel: Any, stride: Any, padding: Any,
                 dilation: Any, ceil_mode: bool, count_include_pad: bool,
                 divisor_override: int | None, out_shape: Sequence[int], out_dtype: torch.dtype) -> None:
        self.x, self.nd, self.is_max = x, nd, is_max
        self.k = _tup(kernel, nd)
        self.s = _tup(stride if stride not in (None, ()) else kernel, nd)
        self.p = _tup(padding, nd)
        self.d = _tup(dilation, nd)
        self.ceil_mode, self.cip, self.div = ceil_mode, count_include_pad, divisor_override
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        lead = len(self.out_shape) - nd  # (N, C) or (C,) before the spatial dims
        self.lead = lead
        self.row_dim = lead
        rows_ok = x.dtype.is_floating_point and (
            is_max or ((self.p[0] == 0 or count_include_pad) and not ceil_mode))
        self.rows_ok = rows_ok
        self.dims = tuple(range(lead)) + ((self.row_dim,) if rows_ok else ())

    def operands(self) -> list[Operand]:
        return [self.x]

    def _rows_in(self, rh: int) -> int:
        return (rh - 1) * self.s[0] + self.d[0] * (self.k[0] - 1) + 1

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        xs = list(self.x.shape)
        lead = self.lead
        out_b = _nbytes(sizes, self.out_itemsize)
        rh = sizes[self.row_dim]
        if rh == self.out_shape[self.row_dim]:
            reg = list(sizes[:lead]) + xs[lead:]
            sliced = any(a != b for a, b in zip(sizes[1:lead], xs[1:lead]))
            return self.x.read_cost(reg, copy=sliced) + out_b
        reg = list(sizes[:lead]) + [self._rows_in(rh)] + xs[lead + 1:]
        extra = self.x.read_cost(list(sizes[:lead]) + [min(self._rows_in(rh), xs[lead])] + xs[lead + 1:]) \
            if self.x.paged else 0
        return _nbytes(reg, self.x.itemsize) + extra + out_b

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
        reg = tuple(region[:lead]) + (slice(a2, b2),) + tuple(slice(0, n) for n in xs[lead + 1:])
        part, charged = self.x.read(reg, ctx)
        shape = list(part.shape)
        shape[lead] = b - a
        n = _nbytes(shape, self.x.itemsize)
        ctx.acct.alloc("activations", n)
        fill = float("-inf") if self.is_max else 0.0
        buf = torch.full(shape, fill, dtype=part.dtype, device=part.device)
        buf.narrow(lead, a2 - a, b2 - a2).copy_(part)
        ctx.acct.free("activations", charged)
        del part
        return self._y(ctx, region, lambda: self._call(buf, True)), n


class AdaptivePoolExecutor(RegionExecutor):
    kind = "adaptive_pool"

    def __init__(self, fn: Callable[..., Any], x: Operand, output_size: Any, nd: int,
                 out_shape: Sequence[int], out_dtype: torch.dtype) -> None:
        self.fn, self.x, self.output_size = fn, x, output_size
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.lead = len(self.out_shape) - nd
        self.dims = tuple(range(self.lead))

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        reg = list(sizes[:self.lead]) + list(self.x.shape[self.lead:])
        sliced = any(a != b for a, b in zip(sizes[1:self.lead], self.x.shape[1:self.lead]))
        return self.x.read_cost(reg, copy=sliced) + _nbytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        reg = tuple(region[:self.lead]) + tuple(slice(0, n) for n in self.x.shape[self.lead:])
        sliced = any(sl.stop - sl.start != n for sl, n in zip(region[1:self.lead], self.x.shape[1:self.lead]))
        x, charged = self.x.read(reg, ctx, copy=sliced)
        return self._y(ctx, region, lambda: self.fn(x, self.output_size)), charged


class CatExecutor(RegionExecutor):
    kind = "cat"

    def __init__(self, parts: Sequence[Operand], dim: int, out_shape: Sequence[int],
                 out_dtype: torch.dtype) -> None:
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
        c = _nbytes(sizes, self.out_itemsize)
        paged = [p for p in self.parts if p.paged]
        if paged:
            c += _nbytes(sizes, self.parts[0].itemsize) + max(p.block for p in paged) * min(
                len(paged), max(1, len(self._pieces(region))))
        return c

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        vals, charged = [], 0
        for p, r in self._pieces(region):
            t, n = p.read(r, ctx)
            vals.append(t)
            charged += n
        return self._y(ctx, region, lambda: torch.cat(vals, self.dim)), charged


class FlattenExecutor(RegionExecutor):
    kind = "flatten"

    def __init__(self, x: Operand, start: int, end: int, out_shape: Sequence[int],
                 out_dtype: torch.dtype) -> None:
        self.x, self.start, self.end = x, start, end
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.dims = (0,)

    def operands(self) -> list[Operand]:
        return [self.x]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        reg = [sizes[0]] + list(self.x.shape[1:])
        return self.x.read_cost(reg) + _nbytes(sizes, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        reg = (region[0],) + tuple(slice(0, n) for n in self.x.shape[1:])
        x, charged = self.x.read(reg, ctx)
        return self._y(ctx, region, lambda: torch.flatten(x, self.start, self.end)), charged


# ----------------------------------------------------------------------------------------------
# Convolution and linear
# ----------------------------------------------------------------------------------------------

class ConvExecutor(Executor):
    """Conv1d/Conv2d by batch rows x output channels x output rows (input halo included).

    Two loop orders: ``oc`` (output-channel chunks outer: each weight chunk is unsealed once,
    the input is re-read per chunk) and ``xy`` (batch/row chunks outer: each input chunk is read
    once, the weights are re-read per chunk); the planner picks the one that moves fewer bytes.
    """

    kind = "conv"

    def __init__(self, x: Operand, w: Operand, b: Operand | None, stride: Any, padding: Any,
                 dilation: Any, groups: int, padding_mode: str, out_shape: Sequence[int],
                 out_dtype: torch.dtype) -> None:
        self.x, self.w, self.b = x, w, b
        nd = len(x.shape) - 2
        if nd not in (1, 2):
            raise ValueError("ConvExecutor handles 1d and 2d convolutions")
        self.nd = nd
        self.s, self.d = _tup(stride, nd), _tup(dilation, nd)
        self.padding = padding if isinstance(padding, str) else _tup(padding, nd)
        self.groups, self.padding_mode = groups, padding_mode
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.N, self.Cin, self.H = x.shape[0], x.shape[1], x.shape[2]
        self.W = x.shape[3] if nd == 2 else 1
        self.Cout = w.shape[0]
        self.k = tuple(w.shape[2:])
        self.kprod = math.prod(self.k)
        self.Hout = self.out_shape[2]
        self.Wout = self.out_shape[3] if nd == 2 else 1
        self.ipg, self.opg = self.Cin // groups, self.Cout // groups
        self.str_pad = isinstance(self.padding, str)
        self.pre_pad = padding_mode != "zeros" and not self.str_pad and any(self.padding)
        self.rows_ok = not self.str_pad and not self.pre_pad and self.Hout > 1
        self.pointwise = (self.kprod == 1 and all(v == 1 for v in self.s)
                          and not self.str_pad and not any(self.padding))
        self.osz = out_dtype.itemsize
        self.w_bytes = w.nbytes + (b.nbytes if b is not None else 0)
        self.w_paged = w.paged or (b is not None and b.paged)

    def operands(self) -> list[Operand]:
        return [o for o in (self.x, self.w, self.b) if o is not None]

    # -- geometry --------------------------------------------------------------------------
    def _oc_cands(self) -> list[int]:
        if self.groups == 1:
            return _cands(self.Cout)
        whole = [m * self.opg for m in _cands(self.groups)]
        sub = [c for c in _cands(self.opg) if c < self.opg]
        return whole + sub

    def _oc_cuts(self, oc: int) -> tuple[int, ...]:
        if self.groups == 1:
            return even_cuts(self.Cout, oc)
        if oc >= self.opg:
            m = oc // self.opg
            return tuple(g * self.opg for g in even_cuts(self.groups, m))
        cuts: list[int] = []
        for g in range(self.groups):
            cuts.extend(g * self.opg + c for c in even_cuts(self.opg, oc)[:-1])
        return tuple(cuts) + (self.Cout,)

    def _cin_used(self, oc: int) -> int:
        if self.groups == 1:
            return self.Cin
        return (oc // self.opg) * self.ipg if oc >= self.opg else self.ipg

    def _rows_in(self, rh: int) -> int:
        return (rh - 1) * self.s[0] + self.d[0] * (self.k[0] - 1) + 1

    def _in_bytes(self, nb: int, cin: int, rh: int) -> int:
        """Enclave bytes one input chunk holds (the materialised chunk and its read)."""
        x, isz = self.x, self.x.itemsize
        if rh == self.Hout:
            c = x.read_cost((nb, cin, self.H, self.W)[:2 + self.nd], copy=cin != self.Cin)
            if self.pre_pad:
                hin = self.H + 2 * self.padding[0]
                win = self.W + (2 * self.padding[1] if self.nd == 2 else 0)
                c += nb * cin * hin * win * isz
            return c
        rows = self._rows_in(rh)
        c = nb * cin * rows * self.W * isz
        if x.paged:
            c += x.read_cost((nb, cin, min(rows, self.H), self.W)[:2 + self.nd])
        return c

    def _cost(self, nb: int, oc: int, rh: int, out_sealed: bool, order: str = "oc") -> int:
        cin = self._cin_used(oc) if order == "oc" else self.Cin
        w, b = self.w, self.b
        w_b = w.read_cost((oc,) + tuple(w.shape[1:])) if w.paged else 0
        if b is not None and b.paged:
            w_b += b.read_cost((oc,))
        out_b = nb * oc * rh * self.Wout * self.osz
        scratch = 0 if self.pointwise else nb * self._cin_used(oc) * self.kprod * rh * self.Wout * self.x.itemsize
        multi = (nb, oc, rh) != (self.N, self.Cout, self.Hout)
        return (self._in_bytes(nb, cin, rh) + w_b + out_b + scratch
                + (self.out_bytes if multi and not out_sealed else 0))

    def _traffic(self, nb: int, oc: int, rh: int, order: str, out_sealed: bool) -> int:
        n_oc = len(self._oc_cuts(oc)) - 1
        n_xy = math.ceil(self.N / nb) * math.ceil(self.Hout / rh)
        t = self.out_bytes if out_sealed else 0
        if self.x.paged:
            rows = self.H if rh == self.Hout else min(self.H, self._rows_in(rh)) * math.ceil(self.Hout / rh)
            one = self.N * self.Cin * rows * self.W * self.x.itemsize
            t += one * (n_oc if (order == "oc" and self.groups == 1) else 1)
        if self.w_paged:
            t += self.w_bytes * (1 if order == "oc" else n_xy)
        return t

    def scratch_bytes(self, nb: int, oc: int, rh: int) -> int:
        return 0 if self.pointwise else nb * self._cin_used(oc) * self.kprod * rh * self.Wout * self.x.itemsize

    def plan(self, avail: float, out_sealed: bool, smallest: bool = False) -> ChunkPlan | None:
        N, Cout, Hout = self.N, self.Cout, self.Hout
        if smallest:
            oc = min(self._oc_cands())
            return self._mk(1, oc, 1 if self.rows_ok else Hout, out_sealed, "oc")
        if self._cost(N, Cout, Hout, out_sealed) <= avail:
            return self._mk(N, Cout, Hout, out_sealed, "oc")
        best: tuple[tuple[int, int], int, int, int, str] | None = None
        for oc in self._oc_cands():
            for order in ("oc", "xy"):
                if order == "xy" and oc == Cout:
                    continue  # one output-channel chunk: the orders coincide
                for nb in _cands(N):
                    if self.rows_ok:
                        rh = _largest(1, Hout, lambda r: self._cost(nb, oc, r, out_sealed, order) <= avail)
                    else:
                        rh = Hout if self._cost(nb, oc, Hout, out_sealed, order) <= avail else None
                    if rh is None:
                        continue
                    chunks = math.ceil(N / nb) * (len(self._oc_cuts(oc)) - 1) * math.ceil(Hout / rh)
                    score = (self._traffic(nb, oc, rh, order, out_sealed) + chunks * CHUNK_PENALTY_BYTES,
                             -nb * oc * rh)
                    if best is None or score < best[0]:
                        best = (score, nb, oc, rh, order)
                    break  # the largest feasible batch chunk for this (oc, order) is the best one
        if best is None:
            return None
        _, nb, oc, rh, order = best
        return self._mk(nb, oc, rh, out_sealed, order)

    def _mk(self, nb: int, oc: int, rh: int, out_sealed: bool, order: str) -> ChunkPlan:
        grid = [even_cuts(self.N, nb), self._oc_cuts(oc), even_cuts(self.Hout, rh)]
        if self.nd == 2:
            grid.append((0, self.Wout))
        return ChunkPlan(tuple(grid), self._cost(nb, oc, rh, out_sealed, order), out_sealed,
                         self._traffic(nb, oc, rh, order, out_sealed), order)

    # -- execution -------------------------------------------------------------------------
    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int,
              row_explicit: bool) -> torch.Tensor:
        fn = F.conv2d if self.nd == 2 else F.conv1d
        if self.str_pad:
            return fn(x, w, b, self.s, self.padding, self.d, groups)
        if self.pre_pad:
            rev = []
            for p in reversed(self.padding):
                rev += [p, p]
            x = F.pad(x, rev, mode=self.padding_mode)
            return fn(x, w, b, self.s, 0, self.d, groups)
        pad = ((0,) + tuple(self.padding[1:])) if row_explicit else self.padding
        return fn(x, w, b, self.s, pad, self.d, groups)

    def _groups_of(self, o0: int, o1: int) -> tuple[int, int, int]:
        """(first input channel, end input channel, groups) of output channels [o0, o1)."""
        if self.groups == 1:
            return 0, self.Cin, 1
        if o0 % self.opg == 0 and o1 % self.opg == 0:
            return (o0 // self.opg) * self.ipg, (o1 // self.opg) * self.ipg, (o1 - o0) // self.opg
        grp = o0 // self.opg
        return grp * self.ipg, (grp + 1) * self.ipg, 1

    def _weights(self, o0: int, o1: int, ctx: ExecContext) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Weight and bias rows [o0, o1): views, or unsealed (charged to ``weights``)."""
        acct = ctx.acct
        wreg = (slice(o0, o1),) + tuple(slice(0, n) for n in self.w.shape[1:])
        wt, wn = self.w.read(wreg, ctx) if self.w.paged else (self.w.value[wreg], 0)
        bt, bn = None, 0
        if self.b is not None:
            bt, bn = self.b.read((slice(o0, o1),), ctx) if self.b.paged else (self.b.value[o0:o1], 0)
        if wn + bn:  # unsealed weights are counted as weights, not activations
            acct.free("activations", wn + bn)
            acct.alloc("weights", wn + bn)
        return wt, bt, wn + bn

    def _input(self, n0: int, n1: int, c0: int, c1: int, r0: int, r1: int, full_rows: bool,
               ctx: ExecContext) -> tuple[torch.Tensor, int]:
        if full_rows:
            reg = (slice(n0, n1), slice(c0, c1)) + tuple(slice(0, n) for n in self.x.shape[2:])
            return self.x.read(reg, ctx, copy=(c1 - c0) != self.Cin)
        return self._rows(n0, n1, c0, c1, r0, r1, ctx)

    def _step(self, xc: torch.Tensor, wt: torch.Tensor, bt: torch.Tensor | None, g: int,
              explicit: bool, n0: int, n1: int, o0: int, o1: int, r0: int, r1: int,
              sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        sb = self.scratch_bytes(n1 - n0, o1 - o0, r1 - r0)
        acct.alloc("scratch", sb)
        try:
            if ctx.meta:
                shape = (n1 - n0, o1 - o0, r1 - r0) + ((self.Wout,) if self.nd == 2 else ())
                y = torch.empty(shape, dtype=self.out_dtype, device="meta")
            else:
                y = self._conv(xc, wt, bt, g, explicit)
        finally:
            acct.free("scratch", sb)
        yn = tensor_bytes(y)
        acct.alloc("activations", yn)
        try:
            region = (slice(n0, n1), slice(o0, o1), slice(r0, r1))
            if self.nd == 2:
                region += (slice(0, self.Wout),)
            sink.put(region, y)
        finally:
            del y
            acct.free("activations", yn)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        ncuts, occuts, rcuts = plan.grid[0], plan.grid[1], plan.grid[2]
        full_rows = len(rcuts) == 2
        ocs = list(zip(occuts, occuts[1:]))
        xys = [(n0, n1, r0, r1) for n0, n1 in zip(ncuts, ncuts[1:]) for r0, r1 in zip(rcuts, rcuts[1:])]
        if plan.order != "xy":
            for o0, o1 in ocs:
                c0, c1, g = self._groups_of(o0, o1)
                wt, bt, wn = self._weights(o0, o1, ctx)
                try:
                    for n0, n1, r0, r1 in xys:
                        xc, charged = self._input(n0, n1, c0, c1, r0, r1, full_rows, ctx)
                        try:
                            self._step(xc, wt, bt, g, not full_rows, n0, n1, o0, o1, r0, r1, sink, ctx)
                        finally:
                            del xc
                            acct.free("activations", charged)
                finally:
                    del wt, bt
                    acct.free("weights", wn)
            return
        for n0, n1, r0, r1 in xys:
            xc, charged = self._input(n0, n1, 0, self.Cin, r0, r1, full_rows, ctx)
            try:
                for o0, o1 in ocs:
                    c0, c1, g = self._groups_of(o0, o1)
                    wt, bt, wn = self._weights(o0, o1, ctx)
                    try:
                        xg = xc if (c0, c1) == (0, self.Cin) else xc[:, c0:c1]
                        self._step(xg, wt, bt, g, not full_rows, n0, n1, o0, o1, r0, r1, sink, ctx)
                        del xg
                    finally:
                        del wt, bt
                        acct.free("weights", wn)
            finally:
                del xc
                acct.free("activations", charged)

    def _rows(self, n0: int, n1: int, c0: int, c1: int, r0: int, r1: int,
              ctx: ExecContext) -> tuple[torch.Tensor, int]:
        """Input rows for output rows [r0, r1), zero-padded explicitly at the borders."""
        a = r0 * self.s[0] - self.padding[0]
        b = (r1 - 1) * self.s[0] - self.padding[0] + self.d[0] * (self.k[0] - 1) + 1
        a2, b2 = max(a, 0), min(b, self.H)
        rest = tuple(slice(0, n) for n in self.x.shape[3:])
        shape = (n1 - n0, c1 - c0, b - a) + tuple(self.x.shape[3:])
        n = _nbytes(shape, self.x.itemsize)
        ctx.acct.alloc("activations", n)
        buf = torch.zeros(shape, dtype=self.x.dtype, device=ctx.device) if (a2 > a or b2 < b) else \
            torch.empty(shape, dtype=self.x.dtype, device=ctx.device)
        if b2 > a2:
            part, pn = self.x.read((slice(n0, n1), slice(c0, c1), slice(a2, b2)) + rest, ctx)
            buf.narrow(2, a2 - a, b2 - a2).copy_(part)
            del part
            ctx.acct.free("activations", pn)
        return buf, n


class LinearExecutor(Executor):
    """Linear by batch rows (dim 0) x output features; loop order as for convolutions."""

    kind = "linear"

    def __init__(self, x: Operand, w: Operand, b: Operand | None, out_shape: Sequence[int],
                 out_dtype: torch.dtype) -> None:
        self.x, self.w, self.b = x, w, b
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        self.N = x.shape[0]
        self.rest = math.prod(x.shape[1:-1])
        self.K = x.shape[-1]
        self.O = w.shape[0]
        self.w_bytes = w.nbytes + (b.nbytes if b is not None else 0)
        self.w_paged = w.paged or (b is not None and b.paged)

    def operands(self) -> list[Operand]:
        return [o for o in (self.x, self.w, self.b) if o is not None]

    def _cost(self, nb: int, of: int, out_sealed: bool) -> int:
        x, w, b = self.x, self.w, self.b
        c = x.read_cost((nb, self.rest, self.K))
        if w.paged:
            c += w.read_cost((of, self.K))
        if b is not None and b.paged:
            c += b.read_cost((of,))
        c += nb * self.rest * of * self.out_itemsize
        multi = (nb, of) != (self.N, self.O)
        return c + (self.out_bytes if multi and not out_sealed else 0)

    def _traffic(self, nb: int, of: int, order: str, out_sealed: bool) -> int:
        t = self.out_bytes if out_sealed else 0
        if self.x.paged:
            t += self.x.nbytes * (math.ceil(self.O / of) if order == "oc" else 1)
        if self.w_paged:
            t += self.w_bytes * (1 if order == "oc" else math.ceil(self.N / nb))
        return t

    def plan(self, avail: float, out_sealed: bool, smallest: bool = False) -> ChunkPlan | None:
        if smallest:
            return self._mk(1, 1, out_sealed, "oc")
        if self._cost(self.N, self.O, out_sealed) <= avail:
            return self._mk(self.N, self.O, out_sealed, "oc")
        best = None
        for of in _cands(self.O):
            nb = _largest(1, self.N, lambda v: self._cost(v, of, out_sealed) <= avail)
            if nb is None:
                continue
            chunks = math.ceil(self.N / nb) * math.ceil(self.O / of)
            for order in ("oc", "xy"):
                score = (self._traffic(nb, of, order, out_sealed) + chunks * CHUNK_PENALTY_BYTES, -nb * of)
                if best is None or score < best[0]:
                    best = (score, nb, of, order)
        if best is None:
            return None
        return self._mk(best[1], best[2], out_sealed, best[3])

    def _mk(self, nb: int, of: int, out_sealed: bool, order: str) -> ChunkPlan:
        mid = tuple((0, n) for n in self.out_shape[1:-1])
        grid = (even_cuts(self.N, nb),) + mid + (even_cuts(self.O, of),)
        return ChunkPlan(grid, self._cost(nb, of, out_sealed), out_sealed,
                         self._traffic(nb, of, order, out_sealed), order)

    def _weights(self, o0: int, o1: int, ctx: ExecContext) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        acct = ctx.acct
        wreg = (slice(o0, o1), slice(0, self.K))
        wt, wn = self.w.read(wreg, ctx) if self.w.paged else (self.w.value[wreg], 0)
        bt, bn = None, 0
        if self.b is not None:
            bt, bn = self.b.read((slice(o0, o1),), ctx) if self.b.paged else (self.b.value[o0:o1], 0)
        if wn + bn:
            acct.free("activations", wn + bn)
            acct.alloc("weights", wn + bn)
        return wt, bt, wn + bn

    def _step(self, xc: torch.Tensor, wt: torch.Tensor, bt: torch.Tensor | None, n0: int, n1: int,
              o0: int, o1: int, sink: Sink, ctx: ExecContext) -> None:
        if ctx.meta:
            y = torch.empty(tuple(xc.shape[:-1]) + (o1 - o0,), dtype=self.out_dtype, device="meta")
        else:
            y = F.linear(xc, wt, bt)
        yn = tensor_bytes(y)
        ctx.acct.alloc("activations", yn)
        try:
            mid = tuple(slice(0, n) for n in self.out_shape[1:-1])
            sink.put((slice(n0, n1),) + mid + (slice(o0, o1),), y)
        finally:
            del y
            ctx.acct.free("activations", yn)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        ncuts, ocuts = plan.grid[0], plan.grid[-1]
        xrest = tuple(slice(0, n) for n in self.x.shape[1:])
        ns = list(zip(ncuts, ncuts[1:]))
        os_ = list(zip(ocuts, ocuts[1:]))
        if plan.order != "xy":
            for o0, o1 in os_:
                wt, bt, wn = self._weights(o0, o1, ctx)
                try:
                    for n0, n1 in ns:
                        xc, charged = self.x.read((slice(n0, n1),) + xrest, ctx)
                        try:
                            self._step(xc, wt, bt, n0, n1, o0, o1, sink, ctx)
                        finally:
                            del xc
                            acct.free("activations", charged)
                finally:
                    del wt, bt
                    acct.free("weights", wn)
            return
        for n0, n1 in ns:
            xc, charged = self.x.read((slice(n0, n1),) + xrest, ctx)
            try:
                for o0, o1 in os_:
                    wt, bt, wn = self._weights(o0, o1, ctx)
                    try:
                        self._step(xc, wt, bt, n0, n1, o0, o1, sink, ctx)
                    finally:
                        del wt, bt
                        acct.free("weights", wn)
            finally:
                del xc
                acct.free("activations", charged)


def run_chunked(ex: Executor, ctx: ExecContext, name: str, out_sealed: bool | None = None,
                avail: float | None = None) -> tuple[torch.Tensor | PagedTensor, ChunkPlan]:
    """Plan ``ex`` against what the accountant leaves free (or ``avail``) and run it.

    ``out_sealed``: None tries a resident output first, then a sealed one. Returns the output
    (a resident tensor or a PagedTensor) and the plan; the sink's own charge is released (the
    caller registers the output if it keeps it). Raises MemoryBudgetError if even the smallest
    chunk does not fit.
    """
    free = ctx.acct.free_bytes() if avail is None else avail
    plan = None
    for sealed in ((False, True) if out_sealed is None else (out_sealed,)):
        plan = ex.plan(free, sealed)
        if plan is not None:
            break
    if plan is None:
        raise MemoryBudgetError(f"layer {name!r} ({ex.kind}) needs at least {ex.min_cost():,} bytes "
                                f"at its smallest chunk; {int(free):,} bytes are free")
    sink = Sink(ctx, name, ex.out_shape, ex.out_dtype, plan.grid, plan.out_sealed)
    try:
        ex.run(plan, sink, ctx)
    finally:
        out, charged = sink.result()
        ctx.acct.free("activations", charged)
    return out, plan


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

SEALABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


class WeightStore:
    """The enclave's module tensors and constants: resident, or sealed module by module."""

    def __init__(self, root: nn.Module, constants: Sequence[str], ctx: ExecContext,
                 values: ResidentValues) -> None:
        self.root, self.ctx, self.values = root, ctx, values
        self.modules: dict[str, nn.Module] = dict(root.named_children())
        self.sealed: dict[str, dict[str, PagedTensor]] = {}
        self.resident_bytes = 0
        self.sealed_bytes = 0
        self.epoch = 0
        self.constants = list(constants)
        self._bytes: dict[str, int] = {}
        self._sealable: list[str] | None = None
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.shapes: dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {
            key: {n: (tuple(t.shape), t.dtype) for n, t in _module_tensors(m).items()}
            for key, m in self.modules.items()}
        for key, m in self.modules.items():
            for t in _module_tensors(m).values():
                self.resident_bytes += tensor_bytes(t)
            values.own_weights(list(_module_tensors(m).values()))
        for c in self.constants:
            t = getattr(root, c)
            self.resident_bytes += tensor_bytes(t)
            values.own_weights(t)
        ctx.acct.alloc("weights", self.resident_bytes, strict=False)

    def module_bytes(self, key: str) -> int:
        """Bytes of ``key``'s tensors (resident or sealed)."""
        n = self._bytes.get(key)
        if n is None:
            n = self._bytes[key] = sum(math.prod(sh) * dt.itemsize for sh, dt in self.shapes[key].values())
        return n

    def sealable(self) -> list[str]:
        """Modules whose weights could still be sealed (a chunked form streams them)."""
        if self._sealable is None:
            self._sealable = [k for k, m in self.modules.items() if isinstance(m, SEALABLE_MODULES)
                              and k not in self.sealed and self.module_bytes(k) > 0]
        return self._sealable

    @property
    def all_resident(self) -> bool:
        return not self.sealed

    def seal_module(self, key: str) -> int:
        """Move ``key``'s tensors into sealed pages (permanently); returns the bytes freed."""
        m = self.modules[key]
        pages: dict[str, PagedTensor] = {}
        freed = 0
        for name, t in _module_tensors(m).items():
            if t.dim() == 0 or not t.dtype.is_floating_point:
                continue
            pages[name] = PagedTensor.seal_tensor(f"w:{key}.{name}", t.detach(), self.ctx.sealer,
                                                  self.ctx.page_bytes,
                                                  cuts=block_cuts(t.shape, t.element_size(),
                                                                  self.ctx.page_bytes,
                                                                  order=range(t.dim())))
            n = tensor_bytes(t)
            freed += n
            self.values.disown_weights(t)
            _drop_tensor(m, name)
        self.sealed[key] = pages
        self._sealable = None
        self._tensors.pop(key, None)
        self.resident_bytes -= freed
        self.sealed_bytes += freed
        self.ctx.acct.free("weights", freed)
        self.epoch += 1
        return freed

    def unsealed(self, key: str) -> "_Unsealed":
        """Context: ``key``'s sealed tensors unsealed into the module (charged as weights)."""
        return _Unsealed(self, key)

    def get(self, key: str, name: str) -> torch.Tensor | PagedTensor | None:
        pages = self.sealed.get(key)
        if pages is not None and name in pages:
            return pages[name]
        ts = self._tensors.get(key)
        if ts is None:
            ts = self._tensors[key] = _module_tensors(self.modules[key])
        return ts.get(name)

    def report(self) -> dict[str, Any]:
        return {"resident_bytes": self.resident_bytes, "sealed_bytes": self.sealed_bytes,
                "sealed_modules": sorted(self.sealed)}


class _Unsealed:
    def __init__(self, store: WeightStore, key: str) -> None:
        self.store, self.key, self.n = store, key, 0

    def __enter__(self) -> None:
        m = self.store.modules[self.key]
        acct = self.store.ctx.acct
        for name, pt in self.store.sealed[self.key].items():
            t = pt.read(None, charge=lambda b: acct.alloc("crypto", b),
                        release=lambda b: acct.free("crypto", b))
            acct.alloc("weights", tensor_bytes(t))
            self.n += tensor_bytes(t)
            if name in m._parameters:
                m._parameters[name] = nn.Parameter(t, requires_grad=False)
            else:
                m._buffers[name] = t

    def __exit__(self, *exc: object) -> None:
        m = self.store.modules[self.key]
        for name in self.store.sealed[self.key]:
            _drop_tensor(m, name)
        self.store.ctx.acct.free("weights", self.n)


def _module_tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in m.named_parameters(recurse=False) if v is not None}
    out.update({k: v for k, v in m.named_buffers(recurse=False) if v is not None})
    return out


def _drop_tensor(m: nn.Module, name: str) -> None:
    if name in m._parameters and m._parameters[name] is not None:
        m._parameters[name] = nn.Parameter(torch.empty(0, dtype=m._parameters[name].dtype,
                                                        device=m._parameters[name].device),
                                           requires_grad=False)
    elif name in m._buffers and m._buffers[name] is not None:
        m._buffers[name] = torch.empty(0, dtype=m._buffers[name].dtype, device=m._buffers[name].device)


def choose_sealed_weights(sizes: Mapping[str, int], sealable: Sequence[str], budget: int | None,
                          resident_fraction: float) -> list[str]:
    """Modules to seal at load: keep the smallest sealable modules resident up to the allowance."""
    if budget is None:
        return []
    total = sum(sizes.values())
    allowance = resident_fraction * budget
    if total <= allowance:
        return []
    fixed = total - sum(sizes[k] for k in sealable)
    room = allowance - fixed
    sealed = []
    for k in sorted(sealable, key=lambda k: (sizes[k], k)):
        if sizes[k] <= room:
            room -= sizes[k]
        else:
            sealed.append(k)
    return sealed


# ----------------------------------------------------------------------------------------------
# Classification of graph nodes
# ----------------------------------------------------------------------------------------------

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                  nn.Hardswish, nn.Hardsigmoid)
_ALIAS_MODULES = (nn.Identity,)
_UNARY_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardtanh, F.hardswish,
                    F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs,
                    torch.clamp, operator.neg}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "exp", "abs", "clamp", "float"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                     torch.sub, torch.mul, torch.div, operator.iadd, operator.imul}
_BINARY_METHODS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
_INPLACE = {operator.iadd: operator.add, operator.imul: operator.mul}


def _is_val(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, PagedTensor))


# ----------------------------------------------------------------------------------------------
# The budgeted segment runner
# ----------------------------------------------------------------------------------------------

class _NextUse:
    """Position of each value's next use after node ``i`` (computed on demand)."""

    __slots__ = ("uses", "i", "keep_ret", "end")

    def __init__(self, uses: Mapping[str, list[int]], i: int, keep_ret: set[str], end: int) -> None:
        self.uses, self.i, self.keep_ret, self.end = uses, i, keep_ret, end

    def get(self, k: str, default: int | None = None) -> int | None:
        import bisect
        v = self.uses.get(k)
        if v is None:
            return default
        j = bisect.bisect_right(v, self.i)
        if j < len(v):
            return v[j]
        return self.end + 1 if k in self.keep_ret else 1 << 30


@dataclass
class _Evictable:
    name: str
    nbytes: int
    cost: int
    weight: bool = False


class BudgetedRunner:
    """Runs enclave segments node by node within the budget (or meta: plans them)."""

    def __init__(self, ctx: ExecContext, values: ResidentValues, weights: WeightStore,
                 env: dict[str, Any]) -> None:
        self.ctx = ctx
        self.values = values
        self.weights = weights
        self.env = env
        self._paged_refs: dict[int, int] = {}
        self._meta_states: dict[str, dict[str, torch.Tensor]] = {}
        self._choices: dict[Any, Any] = {}
        self._prog_info: dict[int, Any] = {}
        self.arrival_overflow = 0

    # -- env bookkeeping -------------------------------------------------------------------
    def bind(self, name: str, value: Any, *, strict: bool = True) -> None:
        old = self.env.get(name, _MISSING)
        if old is not _MISSING:
            self.unbind(name)
        self.env[name] = value
        if isinstance(value, PagedTensor):
            self._paged_refs[id(value)] = self._paged_refs.get(id(value), 0) + 1
        else:
            if strict:
                self.values.add(name, value)
            else:
                acct = self.ctx.acct
                s = acct.strict
                acct.strict = False
                try:
                    self.values.add(name, value)
                finally:
                    acct.strict = s

    def unbind(self, name: str) -> None:
        v = self.env.pop(name, _MISSING)
        if v is _MISSING:
            return
        if isinstance(v, PagedTensor):
            k = id(v)
            self._paged_refs[k] -= 1
            if self._paged_refs[k] == 0:
                del self._paged_refs[k]
                v.free()
        else:
            self.values.drop(name)

    def clear(self) -> None:
        for name in list(self.env):
            self.unbind(name)

    # -- eviction --------------------------------------------------------------------------
    def _seal_value(self, name: str) -> None:
        v = self.env[name]
        group = [name] + sorted(self.values.sharers(name))
        for g in group:
            t = self.env[g]
            if isinstance(t, torch.Tensor):
                pt = PagedTensor.seal_tensor(f"a:{g}", t, self.ctx.sealer, self.ctx.page_bytes)
                self.values.drop(g)
                self.env[g] = pt
                self._paged_refs[id(pt)] = 1
        del v

    def _evictables(self, protect: set[str], next_use: Mapping[str, int], weights_in_use: set[str],
                    allow_weights: bool) -> list[_Evictable]:
        out = []
        seen: set[str] = set()
        for name in self.values.names():
            if name in protect or name in seen or not isinstance(self.env.get(name), torch.Tensor):
                continue
            group = {name} | self.values.sharers(name)
            if group & protect:
                continue
            seen |= group
            nb = sum(self.values.bytes_of(g) for g in group) or self.values.bytes_of(name)
            if nb <= 0:
                continue
            out.append((next_use.get(name, 1 << 30), _Evictable(name, nb, 2 * nb)))
        out.sort(key=lambda t: (-t[0], -t[1].nbytes, t[1].name))
        ev = [e for _, e in out]
        if allow_weights:
            ws = [k for k in self.weights.sealable() if k not in weights_in_use]
            ws.sort(key=lambda k: (-self.weights.module_bytes(k), k))
            ev += [_Evictable(k, self.weights.module_bytes(k), 4 * self.weights.module_bytes(k), True)
                   for k in ws]
        return ev

    def _evict(self, ev: Sequence[_Evictable], nm: NodeMemory) -> None:
        for e in ev:
            if e.weight:
                self.weights.seal_module(e.name)
                nm.evicted.append(f"weights:{e.name}")
            elif e.name in self.env and isinstance(self.env[e.name], torch.Tensor):
                self._seal_value(e.name)
                nm.evicted.append(e.name)

    def make_room(self, need: int, protect: set[str], next_use: Mapping[str, int],
                  weights_in_use: set[str], nm: NodeMemory, partial: bool = False) -> bool:
        """Evict (seal) values, then weights, until ``need`` bytes are free.

        Without ``partial``, nothing is evicted unless that reaches ``need``.
        """
        acct = self.ctx.acct
        need += self.ctx.reserve
        if acct.free_bytes() >= need:
            return True
        evs = self._evictables(protect, next_use, weights_in_use, True)
        chosen, freed = [], 0
        for e in evs:
            if acct.free_bytes() + freed >= need:
                break
            chosen.append(e)
            freed += e.nbytes
        if acct.free_bytes() + freed < need and not partial:
            return False
        self._evict(chosen, nm)
        return acct.free_bytes() >= need

    # -- one segment -----------------------------------------------------------------------
    def run_segment(self, prog: Any, inputs: Sequence[torch.Tensor], report_nodes: list[NodeMemory],
                    times: list[float] | None = None) -> list[torch.Tensor]:
        """Bind the segment's host inputs, run its nodes, and return its ``returns`` resident."""
        env, acct = self.env, self.ctx.acct
        info = self._prog_info.get(id(prog))
        if info is None:
            nodes = [n for n in prog.gm.graph.nodes if n.op not in ("placeholder", "output")]
            out_node = next(n for n in prog.gm.graph.nodes if n.op == "output")
            # uses: value name -> sorted node positions (the end counts as len(nodes))
            uses: dict[str, list[int]] = {}
            for i, n in enumerate(nodes):
                for a in n.all_input_nodes:
                    uses.setdefault(a.name, []).append(i)
            for a in out_node.all_input_nodes:
                uses.setdefault(a.name, []).append(len(nodes))
            keep_ret = set(prog.keep) | set(prog.returns)
            free_inputs = set(prog.free)
            dead: list[list[str]] = [[] for _ in nodes]  # values to drop after each node
            last = {k: v[-1] for k, v in uses.items()}
            for i, n in enumerate(nodes):
                for a in n.all_input_nodes:
                    if last.get(a.name) == i and a.name not in keep_ret and (
                            a.name in free_inputs or a.name not in prog.inputs):
                        dead[i].append(a.name)
                if n.name not in uses and n.name not in keep_ret:
                    dead[i].append(n.name)
            info = self._prog_info[id(prog)] = (prog, nodes, uses, keep_ret, dead)
        _, nodes, uses, keep_ret, dead = info
        for v, t in zip(prog.send_in, inputs):
            self.bind(v, t, strict=False)
        arrived = sum(tensor_bytes(t) for t in inputs)
        if isinstance(inputs, list):
            inputs.clear()  # the env holds them now, and drops each after its last use
        if acct.budget is not None and acct.total > acct.budget:
            over = acct.total - acct.budget
            self.arrival_overflow = max(self.arrival_overflow, over)
            nm = NodeMemory(f"<arrival seg {prog.index}>", kind="boundary", mode="evict")
            acct.begin_node(nm)
            strict, acct.strict = acct.strict, False
            try:
                self.make_room(0, set(), self._next_uses(uses, -1, keep_ret, len(nodes)), set(), nm,
                               partial=True)
            finally:
                acct.strict = strict
                acct.end_node()
            report_nodes.append(nm)
            if acct.total > acct.budget:
                raise MemoryBudgetError(
                    f"segment {prog.index}: the inputs received from the host "
                    f"({arrived:,} bytes) do not fit the enclave memory "
                    f"budget of {acct.budget:,} bytes next to what must stay resident "
                    f"({acct.current}), even after sealing everything that can be sealed")
        for i, node in enumerate(nodes):
            t0 = time.perf_counter()
            nm = NodeMemory(node.name)
            acct.begin_node(nm)
            try:
                self._run_node(node, i, uses, keep_ret, len(nodes), nm)
            finally:
                acct.end_node()
            for v in dead[i]:  # free what is dead after this node
                self.unbind(v)
            report_nodes.append(nm)
            if times is not None:
                times.append(time.perf_counter() - t0)
        # returns must be resident to cross the boundary
        nm = NodeMemory(f"<returns seg {prog.index}>", kind="boundary", mode="whole")
        acct.begin_node(nm)
        outs = []
        try:
            for v in prog.returns:
                val = env[v]
                if isinstance(val, PagedTensor):
                    need = val.nbytes + val.max_block_bytes
                    if not self.make_room(need, set(prog.returns), {}, set(), nm):
                        raise MemoryBudgetError(
                            f"segment {prog.index} returns {v!r} ({val.nbytes:,} bytes) to the host, "
                            f"but it does not fit the enclave budget of {acct.budget:,} bytes; the "
                            "boundary sends whole tensors. Place the node that produces it on the "
                            "device or raise the budget")
                    t = Operand(val).read(Operand(val).full(), self.ctx)[0]
                    acct.free("activations", tensor_bytes(t))
                    self.unbind(v)
                    self.bind(v, t)
                outs.append(env[v])
        finally:
            acct.end_node()
        report_nodes.append(nm)
        for v in prog.returns:
            if v not in prog.keep:
                self.unbind(v)  # handed to the boundary
        for v in prog.free:
            if v not in prog.keep:
                self.unbind(v)
        return outs

    @staticmethod
    def _next_uses(uses: Mapping[str, list[int]], i: int, keep_ret: set[str], end: int) -> "_NextUse":
        return _NextUse(uses, i, keep_ret, end)

    # -- one node --------------------------------------------------------------------------
    def _lookup(self, n: fx.Node) -> Any:
        return self.env[n.name]

    def _run_node(self, node: fx.Node, i: int, uses: Mapping[str, list[int]], keep_ret: set[str],
                  end: int, nm: NodeMemory) -> None:
        env = self.env
        args = fx.node.map_arg(node.args, self._lookup)
        kwargs = fx.node.map_arg(node.kwargs, self._lookup)
        if node.op == "get_attr":
            nm.kind, nm.mode = "constant", "alias"
            self.bind(node.name, getattr(self.weights.root, node.target))
            return
        mod = self.weights.modules.get(node.target) if node.op == "call_module" else None
        # aliases: identity, dropout in eval
        if (mod is not None and (isinstance(mod, _ALIAS_MODULES) or isinstance(mod, nn.Dropout))) or (
                node.op == "call_function" and node.target is F.dropout
                and (kwargs.get("training", args[2] if len(args) > 2 else True) is False)):
            nm.kind, nm.mode = "identity", "alias"
            v = args[0]
            env[node.name] = v
            if isinstance(v, PagedTensor):
                self._paged_refs[id(v)] += 1
            else:
                self.values.add(node.name, v)
            return
        next_use = self._next_uses(uses, i, keep_ret, end)
        protect = {a.name for a in node.all_input_nodes}
        w_in_use = {node.target} if mod is not None else set()
        ex = self._executor(node, mod, args, kwargs)
        if ex is None:
            self._run_generic(node, mod, args, kwargs, protect, next_use, w_in_use, nm)
            return
        nm.kind = ex.kind
        choice = self._choose(ex, protect, next_use, w_in_use)
        if choice is None:
            # last resort: seal this node's own resident inputs and weights, then retry
            for a in node.all_input_nodes:
                if isinstance(env.get(a.name), torch.Tensor) and not self.values.sharers(a.name) \
                        and self.values.bytes_of(a.name) > 0:
                    self._seal_value(a.name)
                    nm.evicted.append(a.name)
            if mod is not None and node.target in self.weights.sealable():
                self.weights.seal_module(node.target)
                nm.evicted.append(f"weights:{node.target}")
            args = fx.node.map_arg(node.args, self._lookup)
            kwargs = fx.node.map_arg(node.kwargs, self._lookup)
            ex = self._executor(node, mod, args, kwargs)
            assert ex is not None
            choice = self._choose(ex, set(), next_use, w_in_use)
            if choice is None:
                self._refuse(node.name, ex, nm)
        evict, out_sealed, plan = choice
        if evict:
            self._evict(evict, nm)
            plan = ex.plan(self.ctx.acct.free_bytes() - self.ctx.reserve, out_sealed)
            assert plan is not None
        sink = Sink(self.ctx, node.name, ex.out_shape, ex.out_dtype, plan.grid, plan.out_sealed)
        try:
            ex.run(plan, sink, self.ctx)
        finally:
            out, charged = sink.result()
            self.ctx.acct.free("activations", charged)
        nm.mode = "chunked" if plan.chunks > 1 else "whole"
        nm.chunks = plan.chunks
        nm.grid = plan.describe()
        nm.out_sealed = plan.out_sealed
        self.bind(node.name, out)

    def _choose(self, ex: Executor, protect: set[str], next_use: Mapping[str, int],
                w_in_use: set[str]) -> tuple[list[_Evictable], bool, ChunkPlan] | None:
        free0 = self.ctx.acct.free_bytes() - self.ctx.reserve
        first = ex.plan(free0, False)
        if first is not None and first.chunks == 1:
            return [], False, first  # fits whole: nothing to decide
        evs = self._evictables(protect, next_use, w_in_use, True)
        key = (id(ex.__class__), ex.out_shape, free0,
               tuple((o.shape, o.paged, o.block) for o in ex.operands()),
               tuple((e.name, e.nbytes) for e in evs))
        hit = self._choices.get(key)
        if hit is not None:
            return hit
        res = self._choose_uncached(ex, evs, free0)
        if len(self._choices) > 4096:
            self._choices.clear()
        self._choices[key] = res
        return res

    def _choose_uncached(self, ex: Executor, evs: list[_Evictable], free0: float
                         ) -> tuple[list[_Evictable], bool, ChunkPlan] | None:
        best: tuple[float, list[_Evictable], bool, ChunkPlan] | None = None
        out_b = ex.out_bytes
        prefix = [0]
        for e in evs:
            prefix.append(prefix[-1] + e.nbytes)
        ecosts = [0]
        for e in evs:
            ecosts.append(ecosts[-1] + e.cost)
        ks = sorted({k for k in (0, 1, 2, 4, 8, 16, len(evs)) if k <= len(evs)})
        for k in ks:
            ecost = ecosts[k]
            if best is not None and ecost >= best[0]:
                break
            for sealed in (False, True):
                p = ex.plan(free0 + prefix[k], sealed)
                if p is None:
                    continue
                # bytes moved: evictions (seal + later unseal), the layer's own traffic (its sealed
                # inputs and weights, re-reads included, and sealing its output), the later read
                # of a sealed output, and a per-chunk overhead
                c = ecost + p.traffic + (out_b if sealed else 0) + (p.chunks - 1) * CHUNK_PENALTY_BYTES
                if best is None or c < best[0]:
                    best = (c, evs[:k], sealed, p)
        if best is None:
            return None
        return best[1], best[2], best[3]

    def _refuse(self, name: str, ex: Executor, nm: NodeMemory) -> None:
        acct = self.ctx.acct
        need = ex.min_cost()
        base = acct.total
        raise MemoryBudgetError(
            f"layer {name!r} ({ex.kind}) cannot run within the enclave memory budget of "
            f"{acct.budget:,} bytes even at its smallest chunk: it needs {need:,} bytes for one "
            f"chunk on top of {base:,} bytes that must stay resident ({acct.current}), "
            f"{need + base:,} bytes in all. Raise the budget (EnclaveConfig.memory_budget / tee=) "
            "or place this layer on the device")

    def _paged_inputs(self, args: Any, kwargs: Any) -> list[PagedTensor]:
        out: list[PagedTensor] = []

        def visit(v: Any) -> Any:
            if isinstance(v, PagedTensor) and all(v is not o for o in out):
                out.append(v)
            return v
        fx.node.map_aggregate((args, kwargs), visit)
        return out

    def _run_generic(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any,
                     protect: set[str], next_use: Mapping[str, int], w_in_use: set[str],
                     nm: NodeMemory) -> None:
        """Run a node whole: unseal its sealed inputs, call it, register its output."""
        acct = self.ctx.acct
        nm.kind = _kind_name(node, mod)
        nm.mode = "generic"
        paged = self._paged_inputs(args, kwargs)
        out_b = _generic_out_estimate(node, mod, args, kwargs)
        sealed_w = self.weights.sealed.get(str(node.target)) if mod is not None else None
        w_need = sum(p.nbytes + p.max_block_bytes for p in sealed_w.values()) if sealed_w else 0
        need = sum(p.nbytes + p.max_block_bytes for p in paged) + out_b + w_need
        if not self.make_room(need, protect, next_use, w_in_use, nm):
            raise MemoryBudgetError(
                f"layer {node.name!r} ({nm.kind}) runs whole (no chunked form) and needs "
                f"{need:,} bytes for its inputs and output on top of {acct.total:,} bytes that must "
                f"stay resident, over the enclave memory budget of {acct.budget:,} bytes. Raise the "
                "budget or place this layer on the device")
        temps: list[str] = []
        if paged:
            repl: dict[int, torch.Tensor] = {}
            for j, p in enumerate(paged):
                t, n = Operand(p).read(Operand(p).full(), self.ctx)
                acct.free("activations", n)
                tname = f"~{node.name}.{j}"
                self.values.add(tname, t)
                temps.append(tname)
                repl[id(p)] = t
            args = fx.node.map_aggregate(args, lambda v: repl.get(id(v), v) if isinstance(v, PagedTensor) else v)
            kwargs = fx.node.map_aggregate(kwargs, lambda v: repl.get(id(v), v) if isinstance(v, PagedTensor) else v)
        if self.ctx.meta:
            out = self._meta_call(node, mod, args, kwargs)
        elif node.op == "call_module" and sealed_w:
            with self.weights.unsealed(str(node.target)):
                out = mod(*args, **kwargs)
        elif node.op == "call_module":
            out = mod(*args, **kwargs)
        elif node.op == "call_function":
            out = node.target(*args, **kwargs)
        else:
            self_obj, *rest = args
            out = getattr(self_obj, node.target)(*rest, **kwargs)
        self.bind(node.name, out)
        for t in temps:
            self.values.drop(t)

    def _meta_state(self, key: str, mod: nn.Module) -> dict[str, torch.Tensor]:
        st = self._meta_states.get(key)
        if st is None:
            shapes = self.weights.shapes.get(key)
            if shapes is None:
                shapes = {k: (tuple(v.shape), v.dtype)
                          for k, v in list(mod.named_parameters()) + list(mod.named_buffers())}
            st = {k: torch.empty(shape, dtype=dt, device="meta") for k, (shape, dt) in shapes.items()}
            self._meta_states[key] = st
        return st

    def _meta_call(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any) -> Any:
        """The node's output on meta tensors (shapes and dtypes only)."""
        def to_meta(v: Any) -> Any:
            if isinstance(v, PagedTensor):
                return torch.empty(v.shape, dtype=v.dtype, device="meta")
            if isinstance(v, torch.Tensor) and v.device.type != "meta":
                return torch.empty(v.shape, dtype=v.dtype, device="meta")
            return v
        margs = fx.node.map_aggregate(args, to_meta)
        mkwargs = fx.node.map_aggregate(kwargs, to_meta)
        if node.op == "call_module":
            assert mod is not None
            return torch.func.functional_call(mod, self._meta_state(str(node.target), mod), margs, mkwargs)
        if node.op == "call_function":
            return node.target(*margs, **mkwargs)
        self_obj, *rest = margs
        return getattr(self_obj, node.target)(*rest, **mkwargs)

    # -- executors for chunkable nodes -----------------------------------------------------
    # Output shapes are computed from the layer's own parameters (no meta tensors: importing
    # torch's meta kernels costs seconds, and the enclave must not pay that on a first run).
    def _executor(self, node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any) -> Executor | None:
        if node.op == "call_module":
            return self._module_executor(node, mod, args, kwargs)
        if node.op == "call_function":
            return self._function_executor(node, args, kwargs)
        if node.op == "call_method":
            return self._method_executor(node, args, kwargs)
        return None

    def _module_executor(self, node: fx.Node, mod: Any, args: Any, kwargs: Any) -> Executor | None:
        if kwargs or len(args) != 1 or not _is_val(args[0]):
            return None
        x = Operand(args[0])
        key = str(node.target)
        fp = x.dtype.is_floating_point
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            nd = 2 if isinstance(mod, nn.Conv2d) else 1
            w = Operand(self.weights.get(key, "weight"))
            if len(x.shape) != nd + 2 or not fp or w.dtype != x.dtype:
                return None
            bv = self.weights.get(key, "bias")
            shape = _conv_shape(x.shape, w.shape, mod.stride, mod.padding, mod.dilation)
            return ConvExecutor(x, w, Operand(bv) if bv is not None else None, mod.stride,
                                mod.padding, mod.dilation, mod.groups, mod.padding_mode,
                                shape, x.dtype)
        if isinstance(mod, nn.Linear):
            w = Operand(self.weights.get(key, "weight"))
            if len(x.shape) < 2 or not fp or w.dtype != x.dtype:
                return None
            bv = self.weights.get(key, "bias")
            return LinearExecutor(x, w, Operand(bv) if bv is not None else None,
                                  x.shape[:-1] + (w.shape[0],), x.dtype)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.training or len(x.shape) < 2 or not fp:
                return None
            params = {}
            for k in ("running_mean", "running_var", "weight", "bias"):
                v = self.weights.get(key, k)
                params[k] = Operand(v) if v is not None and (isinstance(v, PagedTensor) or v.numel()) else None
            if not mod.track_running_stats:
                params["running_mean"] = params["running_var"] = None
            if any(p is not None and p.dtype != x.dtype for p in params.values()):
                return None
            return BatchNormExecutor(x, params, mod.eps, x.shape, x.dtype)
        if isinstance(mod, _UNARY_MODULES):
            if not fp:
                return None
            return UnaryExecutor(mod, x, (), {}, x.shape, x.dtype)
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            if getattr(mod, "return_indices", False) or not fp:
                return None
            nd = 2 if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)) else 1
            is_max = isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d))
            dil = getattr(mod, "dilation", 1)
            shape = _pool_shape(x.shape, nd, mod.kernel_size, mod.stride, mod.padding, dil, mod.ceil_mode)
            if shape is None:
                return None
            return PoolExecutor(x, nd, is_max, mod.kernel_size, mod.stride, mod.padding, dil,
                                mod.ceil_mode, getattr(mod, "count_include_pad", True),
                                getattr(mod, "divisor_override", None), shape, x.dtype)
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if getattr(mod, "return_indices", False) or not fp:
                return None
            nd = 1 if isinstance(mod, nn.AdaptiveAvgPool1d) else 2
            fn = {nn.AdaptiveAvgPool1d: F.adaptive_avg_pool1d, nn.AdaptiveAvgPool2d: F.adaptive_avg_pool2d,
                  nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d}[type(mod)]
            shape = _adaptive_shape(x.shape, nd, mod.output_size)
            if shape is None:
                return None
            return AdaptivePoolExecutor(fn, x, mod.output_size, nd, shape, x.dtype)
        if isinstance(mod, nn.Flatten):
            return self._flatten(x, mod.start_dim, mod.end_dim)
        return None

    def _flatten(self, x: Operand, start: int, end: int) -> Executor | None:
        nd = len(x.shape)
        if nd < 2 or not x.paged:
            return None  # a view of a resident tensor: run it whole (free)
        s, e = start % nd, end % nd
        if s == 0 or e < s:
            return None
        shape = x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:]
        return FlattenExecutor(x, start, end, shape, x.dtype)

    def _function_executor(self, node: fx.Node, args: Any, kwargs: Any) -> Executor | None:
        fn = node.target
        if fn in _UNARY_FUNCTIONS:
            if not args or not _is_val(args[0]) or kwargs.get("inplace") or any(
                    _is_val(a) for a in list(args[1:]) + list(kwargs.values())):
                return None
            x = Operand(args[0])
            if not x.dtype.is_floating_point:
                return None
            return UnaryExecutor(fn, x, tuple(args[1:]), kwargs, x.shape, x.dtype)
        if fn in _BINARY_FUNCTIONS:
            if kwargs or len(args) != 2:
                return None
            if fn in _INPLACE and len(node.args[0].users) > 1 if isinstance(node.args[0], fx.Node) else False:
                return None  # in-place on a value others still read: keep torch's semantics
            return self._binary(_INPLACE.get(fn, fn), args, fn in (operator.truediv, torch.div))
        if fn is torch.cat:
            seq = args[0] if args else kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if not isinstance(seq, (list, tuple)) or not seq or not all(_is_val(t) for t in seq):
                return None
            if set(kwargs) - {"tensors", "dim"} or len({t.dtype for t in seq}) != 1 or not isinstance(dim, int):
                return None
            shapes = [tuple(t.shape) for t in seq]
            nd = len(shapes[0])
            if nd == 0 or any(len(sh) != nd for sh in shapes):
                return None
            d = dim % nd
            if any(sh[:d] + sh[d + 1:] != shapes[0][:d] + shapes[0][d + 1:] for sh in shapes):
                return None
            shape = shapes[0][:d] + (sum(sh[d] for sh in shapes),) + shapes[0][d + 1:]
            return CatExecutor([Operand(t) for t in seq], d, shape, seq[0].dtype)
        if fn is torch.flatten:
            if not args or not _is_val(args[0]):
                return None
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self._flatten(Operand(args[0]), start, end)
        if fn in (F.conv2d, F.linear):
            return self._functional_wb(fn, args, kwargs)
        if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if not args or not _is_val(args[0]) or kwargs.get("return_indices") or set(kwargs) - {
                    "output_size", "return_indices"}:
                return None
            osz = args[1] if len(args) > 1 else kwargs.get("output_size")
            x = Operand(args[0])
            shape = _adaptive_shape(x.shape, 2, osz)
            if shape is None or not x.dtype.is_floating_point:
                return None
            pure = F.adaptive_avg_pool2d if fn is F.adaptive_avg_pool2d else F.adaptive_max_pool2d
            return AdaptivePoolExecutor(pure, x, osz, 2, shape, x.dtype)
        if fn in (F.max_pool2d, F.avg_pool2d):
            return self._functional_pool(fn, args, kwargs)
        return None

    def _binary(self, fn: Any, args: Sequence[Any], true_div: bool) -> Executor | None:
        if not any(_is_val(a) for a in args):
            return None
        if not all(_is_val(a) or (isinstance(a, (int, float)) and not isinstance(a, bool)) for a in args):
            return None
        tens = [a for a in args if _is_val(a)]
        try:
            shape = tuple(torch.broadcast_shapes(*[tuple(t.shape) for t in tens]))
        except RuntimeError:
            return None
        if any(len(t.shape) > len(shape) for t in tens) or not shape:
            return None
        probes = [torch.empty((1,) * len(a.shape), dtype=a.dtype) if _is_val(a) else a for a in args]
        dtype = torch.result_type(probes[0], probes[1])
        if true_div and not (dtype.is_floating_point or dtype.is_complex):
            dtype = torch.get_default_dtype()
        return BinaryExecutor(fn, [Operand(a) if _is_val(a) else a for a in args], shape, dtype)

    def _functional_wb(self, fn: Any, args: Any, kwargs: Any) -> Executor | None:
        names = (["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
                 if fn is F.conv2d else ["input", "weight", "bias"])
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names or k in bound:
                return None
            bound[k] = v
        x, w, b = bound.get("input"), bound.get("weight"), bound.get("bias")
        if not (_is_val(x) and _is_val(w)) or (b is not None and not _is_val(b)):
            return None
        if not x.dtype.is_floating_point or w.dtype != x.dtype:
            return None
        if fn is F.linear:
            if len(x.shape) < 2 or len(w.shape) != 2:
                return None
            return LinearExecutor(Operand(x), Operand(w), Operand(b) if b is not None else None,
                                  tuple(x.shape[:-1]) + (w.shape[0],), x.dtype)
        if len(x.shape) != 4 or len(w.shape) != 4:
            return None
        stride, padding, dil = bound.get("stride", 1), bound.get("padding", 0), bound.get("dilation", 1)
        shape = _conv_shape(tuple(x.shape), tuple(w.shape), stride, padding, dil)
        return ConvExecutor(Operand(x), Operand(w), Operand(b) if b is not None else None,
                            stride, padding, dil, bound.get("groups", 1), "zeros", shape, x.dtype)

    def _functional_pool(self, fn: Any, args: Any, kwargs: Any) -> Executor | None:
        if fn is F.max_pool2d:
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
        else:
            names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override"]
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names or k in bound:
                return None
            bound[k] = v
        x = bound.get("input")
        if not _is_val(x) or bound.get("return_indices") or not x.dtype.is_floating_point:
            return None
        stride = bound.get("stride")
        stride = bound["kernel_size"] if stride in (None, (), []) else stride
        dil = bound.get("dilation", 1)
        shape = _pool_shape(tuple(x.shape), 2, bound["kernel_size"], stride, bound.get("padding", 0),
                            dil, bool(bound.get("ceil_mode", False)))
        if shape is None:
            return None
        return PoolExecutor(Operand(x), 2, fn is F.max_pool2d, bound["kernel_size"], stride,
                            bound.get("padding", 0), dil, bool(bound.get("ceil_mode", False)),
                            bool(bound.get("count_include_pad", True)), bound.get("divisor_override"),
                            shape, x.dtype)

    def _method_executor(self, node: fx.Node, args: Any, kwargs: Any) -> Executor | None:
        name = node.target
        if not args or not _is_val(args[0]):
            return None
        if name in _UNARY_METHODS:
            if any(_is_val(a) for a in list(args[1:]) + list(kwargs.values())):
                return None
            x = Operand(args[0])
            if name == "float":
                if args[1:] or kwargs:
                    return None
                dtype = torch.float32
            elif not x.dtype.is_floating_point:
                return None
            else:
                dtype = x.dtype
            extra, kw = tuple(args[1:]), dict(kwargs)
            return UnaryExecutor(lambda t, *a, **k: getattr(t, name)(*a, **k), x, extra, kw, x.shape, dtype)
        if name in _BINARY_METHODS:
            if kwargs or len(args) != 2:
                return None
            return self._binary(_BINARY_METHODS[name], args, name == "div")
        if name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self._flatten(Operand(args[0]), start, end)
        return None


def _conv_shape(xs: Sequence[int], ws: Sequence[int], stride: Any, padding: Any,
                dilation: Any) -> tuple[int, ...]:
    nd = len(xs) - 2
    s, d, k = _tup(stride, nd), _tup(dilation, nd), tuple(ws[2:])
    if isinstance(padding, str):
        if padding == "same":
            return (xs[0], ws[0]) + tuple(xs[2:])
        padding = 0
    p = _tup(padding, nd)
    sp = tuple((xs[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd))
    return (xs[0], ws[0]) + sp


def _pool_shape(xs: Sequence[int], nd: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
                ceil_mode: bool) -> tuple[int, ...] | None:
    if len(xs) < nd + 1:
        return None
    k = _tup(kernel, nd)
    s = _tup(stride if stride not in (None, (), []) else kernel, nd)
    p, d = _tup(padding, nd), _tup(dilation, nd)
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
    return tuple(xs[:len(xs) - nd]) + tuple(sp)


def _adaptive_shape(xs: Sequence[int], nd: int, output_size: Any) -> tuple[int, ...] | None:
    if len(xs) < nd + 1:
        return None
    osz = _tup(output_size, nd)
    lead = tuple(xs[:len(xs) - nd])
    return lead + tuple(xs[len(xs) - nd + i] if o is None else int(o) for i, o in enumerate(osz))


_VIEW_METHODS = frozenset({"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute",
                           "transpose", "t", "expand", "contiguous", "view_as", "reshape_as",
                           "expand_as", "size", "dim", "chunk", "split", "__getitem__"})
_VIEW_FUNCTIONS = frozenset({operator.getitem, torch.flatten, torch.reshape, torch.squeeze,
                             torch.unsqueeze, torch.transpose, torch.permute, torch.chunk,
                             torch.split})


def _generic_out_estimate(node: fx.Node, mod: nn.Module | None, args: Any, kwargs: Any) -> int:
    """Bytes a whole-run node's new output may need, before running it (both modes alike).

    Views (reshape, flatten, getitem, ...) need nothing new; anything else is assumed to need
    at most as much as all its tensor inputs together (exact for stack/cat, an upper bound for
    reductions, softmax and norms). The real output is charged after the node runs.
    """
    from taoism.enclave.ops import FUNCTIONS
    if (node.op == "call_method" and node.target in _VIEW_METHODS) or (
            node.op == "call_function" and (node.target in _VIEW_FUNCTIONS
                                            or node.target is FUNCTIONS.get("getattr"))) or (
            isinstance(mod, nn.Flatten)):
        return 0
    total = 0

    def add(v: Any) -> Any:
        nonlocal total
        if isinstance(v, PagedTensor):
            total += v.nbytes
        elif isinstance(v, torch.Tensor):
            total += tensor_bytes(v)
        return v
    fx.node.map_aggregate((args, kwargs), add)
    return total


_MISSING = object()


def _root(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _kind_name(node: fx.Node, mod: nn.Module | None) -> str:
    if mod is not None:
        return type(mod).__name__
    if node.op == "call_method":
        return f".{node.target}"
    t = node.target
    return getattr(t, "__name__", str(t))


# ----------------------------------------------------------------------------------------------
# The enclave's memory manager (one per loaded program)
# ----------------------------------------------------------------------------------------------

@dataclass
class _FastEntry:
    peak: int
    peak_breakdown: dict[str, int]
    nodes: list[NodeMemory]


@dataclass
class InferenceStats:
    """Counters of the current inference (reset when its first segment starts)."""

    peak_bytes: int = 0
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    sealed_bytes: int = 0
    unsealed_bytes: int = 0
    segments: int = 0


class EnclaveMemory:
    """Accounting, chunked execution and sealed paging for one loaded enclave program.

    ``budget`` None means unlimited (accounting only). The first run of a segment for a given
    input shape is interpreted node by node (so it is accounted); if nothing needed chunking or
    sealing, later runs with that shape take the segment's compiled GraphModule directly (no
    per-node Python) and replay the recorded accounting.
    """

    def __init__(self, root: nn.Module, programs: Mapping[int, Any], spec: Mapping[str, Any] | None,
                 constants: Sequence[str] = (), *, meta: bool = False) -> None:
        spec = dict(spec or {})
        self.tee = str(spec.get("tee", "unlimited"))
        budget = spec.get("budget_bytes")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise FrameError(f"memory section: budget_bytes must be a positive int or null, got {budget!r}")
        self.budget: int | None = budget
        page = spec.get("page_bytes") or (min(DEFAULT_PAGE_BYTES, max(4096, budget // 32))
                                          if budget else DEFAULT_PAGE_BYTES)
        frac = spec.get("resident_weight_fraction", 0.5)
        if isinstance(page, bool) or not isinstance(page, int) or page < 256:
            raise FrameError(f"memory section: page_bytes must be an int >= 256, got {page!r}")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac <= 1.0:
            raise FrameError(f"memory section: resident_weight_fraction must be in [0, 1], got {frac!r}")
        if not isinstance(spec.get("module_paths") or {}, dict):
            raise FrameError("memory section: module_paths must be an object")
        self.acct = Accountant(budget)
        self.sealer = Sealer(meta=meta)
        self.sealer.on_bytes = self.acct.on_sealed
        self.ctx = ExecContext(self.acct, self.sealer, meta=meta, page_bytes=page)
        self.values = ResidentValues(self.acct)
        self.weights = WeightStore(root, constants, self.ctx, self.values)
        self.env: dict[str, Any] = {}
        self.runner = BudgetedRunner(self.ctx, self.values, self.weights, self.env)
        self.programs = dict(programs)
        self.first_segment = min(self.programs) if self.programs else None
        self.boundary_bytes = 0
        self._fast: dict[Any, _FastEntry] = {}
        self.node_peaks: dict[str, NodeMemory] = {}
        self.inference = InferenceStats()
        self.last_inference = InferenceStats()
        self.overall_peak = 0
        self.overall_breakdown: dict[str, int] = {}
        self.runs = 0
        self.fast_runs = 0
        self.last_report: MemoryReport | None = None
        # weights sealed at load: the host's choice, or the default policy
        sealable = self.weights.sealable()
        sizes = {k: self.weights.module_bytes(k) for k in self.weights.modules}
        if "sealed_modules" in spec and spec["sealed_modules"] is not None:
            names = spec["sealed_modules"]
            if not isinstance(names, list) or any(n not in sealable for n in names):
                raise FrameError("memory section: sealed_modules must list sealable module keys")
            to_seal = list(names)
        else:
            to_seal = choose_sealed_weights(sizes, sealable, budget, float(frac))
        for k in to_seal:
            self.weights.seal_module(k)
        self.load_peak = self.acct.peak
        # the boundary's reply staging buffer; the server reports the real size before each run
        self.set_boundary_bytes(int(spec.get("boundary_bytes", DEFAULT_BOUNDARY_BYTES)))
        if budget is not None and self.acct.total + self.ctx.reserve > budget:
            paths = dict(spec.get("module_paths") or {})
            fixed = sorted(((self.weights.module_bytes(k), paths.get(k, k), type(m).__name__)
                            for k, m in self.weights.modules.items()
                            if k not in self.weights.sealed and self.weights.module_bytes(k)), reverse=True)
            names = ", ".join(f"{p!r} ({t}, {n:,} bytes)" for n, p, t in fixed[:5])
            raise MemoryBudgetError(
                f"what the enclave must keep resident ({self.acct.total:,} bytes: {self.acct.current}; "
                f"weights of layers without a chunked form: {names or 'none'}; the boundary's "
                f"{self.boundary_bytes:,}-byte staging buffer) plus {self.ctx.reserve:,} bytes of "
                f"sealing headroom exceeds the memory budget of {budget:,} bytes")

    # -- boundary staging ------------------------------------------------------------------
    def set_boundary_bytes(self, n: int) -> None:
        """The channel's reply staging buffer (crypto, resident for the whole session)."""
        n = int(n)
        if n != self.boundary_bytes:
            s = self.acct.strict
            self.acct.strict = False
            self.acct.free("crypto", self.boundary_bytes)
            self.acct.alloc("crypto", n)
            self.acct.strict = s
            self.boundary_bytes = n

    def _rebase(self) -> None:
        """Reset the counters to what is resident between inferences (after a failed run too)."""
        acct = self.acct
        acct.current = {"weights": self.weights.resident_bytes, "activations": 0, "scratch": 0,
                        "crypto": self.boundary_bytes}
        acct.total = sum(acct.current.values())
        acct.node = None

    # -- running ---------------------------------------------------------------------------
    def run(self, prog: Any, tensors: Sequence[torch.Tensor], profile: bool = False
            ) -> tuple[list[torch.Tensor], list[float]]:
        """Run one segment; returns (outputs to send, per-node times if ``profile``)."""
        acct = self.acct
        if prog.index == self.first_segment:
            self.runner.clear()
            self._rebase()
            self.last_inference = self.inference
            self.inference = InferenceStats()
        missing = [v for v in prog.inputs if v not in prog.send_in and v not in self.env]
        if missing:
            raise FrameError(f"segment {prog.index} needs value {missing[0]!r}, which the enclave does "
                             "not hold (segments must run in plan order)")
        acct.reset_peak()
        sig = None
        if self.weights.all_resident:
            sig = (prog.index, tuple((tuple(t.shape), t.dtype) for t in tensors),
                   tuple(sorted((k, tuple(v.shape), isinstance(v, PagedTensor))
                                for k, v in self.env.items() if _is_val(v))))
            fast = self._fast.get(sig)
            if fast is not None:
                return self._run_fast(prog, tensors, fast, profile)
        nodes: list[NodeMemory] = []
        times: list[float] | None = [] if profile else None
        self.runner.arrival_overflow = 0
        inputs = list(tensors)
        if isinstance(tensors, list):
            tensors.clear()  # the caller's list (the request message) must not keep them alive
        outs = self.runner.run_segment(prog, inputs, nodes, times)
        report = self._finish(prog, nodes, fast_path=False)
        if sig is not None and self._cacheable(nodes):
            self._fast[sig] = _FastEntry(report.peak_bytes, dict(report.peak_breakdown), nodes)
        node_times = []
        if times is not None:
            by = {nm.name: t for nm, t in zip([n for n in nodes if not n.name.startswith("<")], times)}
            node_times = [by.get(n, 0.0) for n in prog.node_names]
        return outs, node_times

    def _cacheable(self, nodes: Sequence[NodeMemory]) -> bool:
        if self.ctx.meta or not self.weights.all_resident or self.runner.arrival_overflow:
            return False
        if any(isinstance(v, PagedTensor) for v in self.env.values()):
            return False
        return all(n.chunks == 1 and not n.out_sealed and not n.evicted and not n.sealed_bytes
                   and not n.unsealed_bytes for n in nodes)

    def _run_fast(self, prog: Any, tensors: Sequence[torch.Tensor], fast: _FastEntry,
                  profile: bool) -> tuple[list[torch.Tensor], list[float]]:
        runner = self.runner
        for v, t in zip(prog.send_in, tensors):
            runner.bind(v, t, strict=False)
        args = [self.env[v] for v in prog.inputs]
        times: list[float] = []
        if profile:
            outs, times = prog.run_timed(args)
        else:
            outs = prog.gm(*args)
        n_ret = len(prog.returns)
        for v, t in zip(prog.keep, outs[n_ret:]):
            runner.bind(v, t, strict=False)
        for v in prog.free:
            if v not in prog.keep:
                runner.unbind(v)
        self.fast_runs += 1
        self.acct.peak = max(self.acct.peak, fast.peak)
        if fast.peak >= self.acct.peak:
            self.acct.peak_breakdown = dict(fast.peak_breakdown)
        self._finish(prog, fast.nodes, fast_path=True, merge=False)
        return list(outs[:n_ret]), times

    def _finish(self, prog: Any, nodes: list[NodeMemory], *, fast_path: bool,
                merge: bool = True) -> MemoryReport:
        acct = self.acct
        self.runs += 1
        inf = self.inference
        inf.segments += 1
        if acct.peak >= inf.peak_bytes:
            inf.peak_bytes, inf.peak_breakdown = acct.peak, dict(acct.peak_breakdown)
        inf.sealed_bytes += acct.sealed_bytes
        inf.unsealed_bytes += acct.unsealed_bytes
        if acct.peak >= self.overall_peak:
            self.overall_peak, self.overall_breakdown = acct.peak, dict(acct.peak_breakdown)
        for nm in (nodes if merge else ()):
            cur = self.node_peaks.get(nm.name)
            if cur is None:
                cur = self.node_peaks[nm.name] = NodeMemory(nm.name)
            cur.merge_max(nm)
        report = MemoryReport(
            budget_bytes=self.budget, tee=self.tee, peak_bytes=acct.peak,
            peak_breakdown=dict(acct.peak_breakdown), sealed_bytes=acct.sealed_bytes,
            unsealed_bytes=acct.unsealed_bytes, weights_resident_bytes=self.weights.resident_bytes,
            weights_sealed_bytes=self.weights.sealed_bytes, nodes=list(nodes), fast_path=fast_path)
        self.last_report = report
        return report

    # -- reporting -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything the STATS request reports about memory (JSON-ready)."""
        inf = self.inference if self.inference.segments else self.last_inference
        return {
            "tee": self.tee, "budget_bytes": self.budget, "peak_bytes": self.overall_peak,
            "peak_breakdown": dict(self.overall_breakdown),
            "within_budget": self.budget is None or self.overall_peak <= self.budget,
            "load_peak_bytes": self.load_peak,
            "arrival_overflow_bytes": self.runner.arrival_overflow,
            "last_inference": {"peak_bytes": inf.peak_bytes, "peak_breakdown": dict(inf.peak_breakdown),
                               "sealed_bytes": inf.sealed_bytes, "unsealed_bytes": inf.unsealed_bytes,
                               "segments": inf.segments},
            "sealed_bytes_total": self.sealer.stats.sealed_bytes,
            "unsealed_bytes_total": self.sealer.stats.unsealed_bytes,
            "seal": self.sealer.stats.to_json(),
            "page_store_bytes": self.sealer.store.nbytes,
            "weights": self.weights.report(),
            "boundary_staging_bytes": self.boundary_bytes,
            "runs": self.runs, "fast_runs": self.fast_runs,
            "nodes": [n.to_json() for n in self.node_peaks.values()],
            "runtime_not_counted": runtime_rss(),
        }


__all__ = ["AdaptivePoolExecutor", "BatchNormExecutor", "BinaryExecutor", "BudgetedRunner",
           "CatExecutor", "ChunkPlan", "ConvExecutor", "EnclaveMemory", "ExecContext", "Executor",
           "FlattenExecutor", "LinearExecutor", "Operand", "PoolExecutor", "Sink", "UnaryExecutor",
           "WeightStore", "choose_sealed_weights", "run_chunked"]
