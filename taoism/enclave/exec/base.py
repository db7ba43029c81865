"""Chunked execution's building blocks: context, operands, sinks, plans, the executor base.

A layer whose working set does not fit what the enclave's budget leaves free runs in chunks
sized from its own shape and that free space. Chunk sizes come from a search over the layer's
own dimensions (nothing has to divide anything; the last chunk is simply shorter). Inputs that
do not fit stay sealed (:mod:`taoism.enclave.paged`) and are streamed in block by block.
The same code runs on meta tensors (``meta=True``) to plan memory without computing anything.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from taoism.enclave.memory import Accountant
from taoism.enclave.paged import PagedTensor, Region, even_cuts
from taoism.enclave.pages import PageSealer
from taoism.errors import MemoryBudgetError
from taoism.protocol.schema import DEFAULT_PAGE_BYTES

IntOrSeq = int | Sequence[int]  # a kernel/stride/padding/dilation argument, as torch takes it
OutputSize = int | None | Sequence[int | None]  # an adaptive pool's output_size
CHUNK_PENALTY_BYTES = 256 << 10  # a chunk's fixed overhead (~50 us) expressed as bytes of crypto


@functools.lru_cache(maxsize=4096)
def chunk_candidates(n: int) -> list[int]:
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


def largest_ok(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
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


def shape_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of a dense tensor of ``shape`` with elements of ``itemsize`` bytes."""
    return math.prod(shape) * itemsize


def as_tuple(v: IntOrSeq, n: int) -> tuple[int, ...]:
    """A per-dimension tuple from an int or a sequence (torch's ``_pair``/``_single``)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@dataclass
class ExecContext:
    """What an executor needs: the accountant, the sealer, and meta/real mode."""

    acct: Accountant
    sealer: PageSealer
    meta: bool = False
    page_bytes: int = DEFAULT_PAGE_BYTES
    reserve: int = 0  # headroom kept free for sealing temporaries (a strided block's copy)

    def __post_init__(self) -> None:
        if self.acct.budget is not None and not self.reserve:
            self.reserve = self.page_bytes
        if self.sealer.on_temp is None:
            acct = self.acct
            self.sealer.on_temp = lambda n: (
                acct.alloc("crypto", n) if n > 0 else acct.free("crypto", -n)
            )

    @property
    def device(self) -> str:
        """The torch device chunks are made on (``meta`` when planning)."""
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
        """Bytes of the whole operand."""
        return shape_bytes(self.shape, self.itemsize)

    def read_cost(self, region_shape: Sequence[int], *, copy: bool = False) -> int:
        """Bytes held while a region read is alive (0 for a view of a resident tensor)."""
        n = shape_bytes(region_shape, self.itemsize)
        if self.paged:
            return n + self.block
        return n if copy else 0

    def read(
        self, region: Region, ctx: ExecContext, *, copy: bool = False
    ) -> tuple[torch.Tensor, int]:
        """The region (a view, or a new tensor charged to ``activations``); returns (t, charged)."""
        if not self.paged:
            t = self.value[region]
            if not copy:
                return t, 0
            n = t.nbytes
            ctx.acct.alloc("activations", n)
            return t.contiguous() if not t.is_contiguous() else t.clone(), n
        shape = tuple(s.stop - s.start for s in region)
        n = shape_bytes(shape, self.itemsize)
        ctx.acct.alloc("activations", n)
        try:
            t = self.value.read(
                region,
                charge=lambda b: ctx.acct.alloc("crypto", b),
                release=lambda b: ctx.acct.free("crypto", b),
            )
        except BaseException:
            ctx.acct.free("activations", n)
            raise
        return t, n

    def full(self) -> Region:
        """The region covering the whole operand."""
        return tuple(slice(0, s) for s in self.shape)


class Sink:
    """Where a chunked layer's output goes: a resident tensor or a sealed PagedTensor."""

    def __init__(
        self,
        ctx: ExecContext,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        cuts: Sequence[Sequence[int]],
        sealed: bool,
    ) -> None:
        self.ctx = ctx
        self.shape = tuple(shape)
        self.sealed = sealed
        self.single = all(len(c) == 2 for c in cuts)
        self.charged = 0
        self.out: torch.Tensor | None = None
        self.paged: PagedTensor | None = None
        if sealed:
            self.paged = PagedTensor(
                f"a:{name}",
                shape,
                dtype,
                refine_cuts(shape, dtype.itemsize, cuts, ctx.page_bytes),
                ctx.sealer,
            )
        elif not self.single:
            self.charged = shape_bytes(shape, dtype.itemsize)
            ctx.acct.alloc("activations", self.charged)
            self.out = torch.empty(self.shape, dtype=dtype, device=ctx.device)

    def put(self, region: Region, t: torch.Tensor) -> None:
        """Store one computed chunk."""
        if self.paged is not None:
            self.paged.put_region(region, t)
        elif self.single:
            self.out = t
        else:
            assert self.out is not None
            self.out[region].copy_(t)

    def put_charged(self, region: Region, y: torch.Tensor) -> None:
        """Store a freshly computed chunk, charging it to ``activations`` while it is stored."""
        acct = self.ctx.acct
        n = y.nbytes
        acct.alloc("activations", n)
        try:
            self.put(region, y)
        finally:
            acct.free("activations", n)

    def result(self) -> tuple[torch.Tensor | PagedTensor, int]:
        """The output value, and the bytes the sink charged that the caller must release."""
        return (self.paged if self.paged is not None else self.out), self.charged


def read_weight_rows(
    w: Operand, b: Operand | None, o0: int, o1: int, ctx: ExecContext
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Weight and bias rows [o0, o1): views, or unsealed and charged to ``weights``; returns (w, b, bytes)."""
    wreg = (slice(o0, o1),) + tuple(slice(0, n) for n in w.shape[1:])
    wt, wn = w.read(wreg, ctx) if w.paged else (w.value[wreg], 0)
    bt, bn = None, 0
    if b is not None:
        bt, bn = b.read((slice(o0, o1),), ctx) if b.paged else (b.value[o0:o1], 0)
    if wn + bn:  # unsealed weights are counted as weights, not activations
        ctx.acct.free("activations", wn + bn)
        ctx.acct.alloc("weights", wn + bn)
    return wt, bt, wn + bn


def refine_cuts(
    shape: Sequence[int], itemsize: int, cuts: Sequence[Sequence[int]], target: int
) -> tuple[tuple[int, ...], ...]:
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
        row = (
            itemsize
            * math.prod(widest(c) for i, c in enumerate(cuts) if i not in (0, 2))
            * (1 if widest(cuts[0]) <= 1 else widest(cuts[0]))
        )
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
    order: str = (
        ""  # conv/linear loop order: "oc" (output channels outer) or "xy" (batch/rows outer)
    )

    @property
    def chunks(self) -> int:
        """Number of chunks in the grid."""
        return math.prod(len(c) - 1 for c in self.grid)

    def describe(self) -> str:
        """Chunk size per output dim, e.g. ``4/16,64,7/56,56`` (chunk/size where cut)."""
        return ",".join(f"{c[1] - c[0]}/{c[-1]}" if len(c) > 2 else f"{c[-1]}" for c in self.grid)


def grid_regions(grid: Sequence[Sequence[int]]) -> Iterator[Region]:
    """Every chunk region of a grid (cuts per dim), outer dims first."""
    for idx in itertools.product(*(range(len(c) - 1) for c in grid)):
        yield tuple(slice(c[i], c[i + 1]) for c, i in zip(grid, idx))


class Executor:
    """Base of the chunked executors: ``plan(avail, out_sealed)`` then ``run(plan, sink)``."""

    kind = "?"
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype

    @property
    def out_itemsize(self) -> int:
        """Bytes per output element."""
        return self.out_dtype.itemsize

    @property
    def out_bytes(self) -> int:
        """Bytes of the whole output."""
        return shape_bytes(self.out_shape, self.out_itemsize)

    def plan(self, avail: float, out_sealed: bool, smallest: bool = False) -> ChunkPlan | None:
        """The cheapest grid whose chunk fits ``avail`` bytes (``smallest``: the finest grid)."""
        raise NotImplementedError

    def min_cost(self) -> int:
        """Bytes the smallest chunk needs (output sealed)."""
        p = self.plan(float("inf"), True, smallest=True)
        return p.cost if p is not None else 0

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        """Compute every chunk of ``plan`` into ``sink``."""
        raise NotImplementedError

    def operands(self) -> list[Operand]:
        """The tensor inputs (resident or sealed) this executor reads."""
        return []


class RegionExecutor(Executor):
    """Output computed region by region; subclasses give ``chunk_cost`` and ``compute``."""

    dims: tuple[int, ...] = ()  # output dims that may be cut, outermost first

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        """Enclave bytes one output chunk of ``sizes`` holds while it is computed."""
        raise NotImplementedError

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        """The output ``region``, and the bytes its input reads charged (the caller frees them)."""
        raise NotImplementedError

    def _y(
        self, ctx: ExecContext, region: Region, thunk: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The chunk's output; when planning (meta), its shape only, without calling the op."""
        if ctx.meta:
            return torch.empty(
                tuple(sl.stop - sl.start for sl in region), dtype=self.out_dtype, device="meta"
            )
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

            v = largest_ok(1, shape[d], ok)
            if v is not None:
                sizes[d] = v
                return self._mk(sizes, out_sealed)
            sizes[d] = 1
        return None

    def _mk(self, sizes: Sequence[int], out_sealed: bool) -> ChunkPlan:
        grid = tuple(even_cuts(n, s) if n else (0, 0) for n, s in zip(self.out_shape, sizes))
        traffic = sum(o.nbytes for o in self.operands() if o.paged) + (
            self.out_bytes if out_sealed else 0
        )
        return ChunkPlan(grid, self._total(sizes, out_sealed), out_sealed, traffic)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        for region in grid_regions(plan.grid):
            y, charged = self.compute(region, ctx)
            try:
                sink.put_charged(region, y)
            finally:
                acct.free("activations", charged)
            del y


def run_chunked(
    ex: Executor,
    ctx: ExecContext,
    name: str,
    out_sealed: bool | None = None,
    avail: float | None = None,
) -> tuple[torch.Tensor | PagedTensor, ChunkPlan]:
    """Plan ``ex`` against what the accountant leaves free (or ``avail``) and run it.

    ``out_sealed``: None tries a resident output first, then a sealed one. Returns the output
    (a resident tensor or a PagedTensor) and the plan; the sink's own charge is released (the
    caller registers the output if it keeps it). Raises MemoryBudgetError if even the smallest
    chunk does not fit.
    """
    free = ctx.acct.free_bytes() if avail is None else avail
    plan = None
    for sealed in (False, True) if out_sealed is None else (out_sealed,):
        plan = ex.plan(free, sealed)
        if plan is not None:
            break
    if plan is None:
        raise MemoryBudgetError(
            f"layer {name!r} ({ex.kind}) needs at least {ex.min_cost():,} bytes "
            f"at its smallest chunk; {int(free):,} bytes are free"
        )
    sink = Sink(ctx, name, ex.out_shape, ex.out_dtype, plan.grid, plan.out_sealed)
    try:
        ex.run(plan, sink, ctx)
    finally:
        out, charged = sink.result()
        ctx.acct.free("activations", charged)
    return out, plan


__all__ = [
    "CHUNK_PENALTY_BYTES",
    "ChunkPlan",
    "ExecContext",
    "Executor",
    "IntOrSeq",
    "Operand",
    "OutputSize",
    "Region",
    "RegionExecutor",
    "Sink",
    "as_tuple",
    "chunk_candidates",
    "grid_regions",
    "largest_ok",
    "read_weight_rows",
    "refine_cuts",
    "run_chunked",
    "shape_bytes",
]
