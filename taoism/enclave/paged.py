"""Paged tensors: a tensor cut into a grid of sealed blocks, streamed in and out one at a time.

A :class:`PagedTensor` keeps each block sealed (:mod:`taoism.enclave.pages`); reading a region
unseals only the blocks that overlap it, writing one seals it again under a new version.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch

from taoism.enclave.pages import PageSealer, PageStore, SealedPage, SealStats
from taoism.errors import IntegrityError

Region = tuple[slice, ...]  # a block or any box of a tensor, one slice per dimension


def even_cuts(size: int, chunk: int) -> tuple[int, ...]:
    """Cut points 0, chunk, 2*chunk, ..., size (the last piece may be shorter)."""
    chunk = max(1, min(chunk, size)) if size else 1
    return tuple(range(0, size, chunk)) + (size,) if size else (0, 0)


def block_cuts(
    shape: Sequence[int], itemsize: int, target_bytes: int, order: Sequence[int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """A block grid over ``shape`` whose blocks hold at most ``target_bytes`` where possible.

    Dimensions are cut in ``order`` (default: dim 0, then dim 2 (rows), then the others):
    a dimension is cut only when one slice of the remaining inner dims already exceeds the
    target, so blocks stay large and contiguous.
    """
    nd = len(shape)
    if order is None:
        order = [0] + ([2] if nd > 2 else []) + [d for d in range(1, nd) if d != 2]
    sizes = list(shape)
    cuts: list[tuple[int, ...] | None] = [None] * nd
    per = math.prod(shape) * itemsize
    for d in order:
        if per <= target_bytes or shape[d] == 0:
            break
        slice_bytes = per // shape[d]
        take = max(1, target_bytes // max(slice_bytes, 1))
        sizes[d] = min(shape[d], take)
        per = slice_bytes * sizes[d]
    for d in range(nd):
        cuts[d] = even_cuts(shape[d], sizes[d]) if shape[d] else (0, 0)
    return tuple(c for c in cuts if c is not None)


def _overlap(cuts: tuple[int, ...], start: int, stop: int) -> range:
    """Indices of the pieces of ``cuts`` that overlap [start, stop)."""
    import bisect

    if stop <= start:
        return range(0)
    first = bisect.bisect_right(cuts, start) - 1
    last = bisect.bisect_left(cuts, stop) - 1
    return range(max(first, 0), min(last, len(cuts) - 2) + 1)


class PagedTensor:
    """A tensor stored outside the budget as sealed blocks on a grid (``cuts`` per dim).

    Trusted metadata (name, version, shape, dtype, grid) stays in the enclave; the pages live in
    the sealer's :class:`PageStore`. ``read(region)`` unseals the overlapping blocks into a new
    tensor; ``put(block, t)`` seals one block. ``charge(kind, n)``, if set, is called with the
    bytes of any block-sized temporary a read needs (for the memory accounting).
    """

    __slots__ = (
        "name",
        "version",
        "shape",
        "dtype",
        "cuts",
        "sealer",
        "meta",
        "_present",
        "itemsize",
        "max_block_bytes",
    )

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        cuts: Sequence[Sequence[int]],
        sealer: PageSealer,
    ) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.cuts = tuple(tuple(int(c) for c in cs) for cs in cuts)
        if len(self.cuts) != len(self.shape) or any(
            c[0] != 0 or c[-1] != s for c, s in zip(self.cuts, self.shape)
        ):
            raise ValueError(f"bad block grid {self.cuts} for shape {self.shape}")
        self.sealer = sealer
        self.meta = sealer.meta
        self.version = sealer.next_version()
        self._present: set[tuple[int, ...]] = set()
        self.itemsize = dtype.itemsize
        self.max_block_bytes = self.itemsize * math.prod(
            max((b - a for a, b in zip(c, c[1:])), default=0) for c in self.cuts
        )

    # -- geometry --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the whole (plaintext) tensor."""
        return math.prod(self.shape) * self.itemsize

    def blocks(self) -> Iterator[tuple[int, ...]]:
        """The grid index of every block, outer dims first."""
        return itertools.product(*(range(len(c) - 1) for c in self.cuts))

    def block_region(self, idx: tuple[int, ...]) -> Region:
        """The region of the tensor that block ``idx`` covers."""
        return tuple(slice(c[i], c[i + 1]) for c, i in zip(self.cuts, idx))

    def block_index(self, region: Region) -> tuple[int, ...]:
        """The grid index of the block that exactly covers ``region`` (ValueError otherwise)."""
        idx = []
        for c, sl in zip(self.cuts, region):
            try:
                i = c.index(sl.start)
            except ValueError:
                raise ValueError(f"region {region} is not a block of {self.name}") from None
            if c[i + 1] != sl.stop:
                raise ValueError(f"region {region} is not a block of {self.name}")
            idx.append(i)
        return tuple(idx)

    # -- writing ---------------------------------------------------------------------------
    def put(self, idx: tuple[int, ...], t: torch.Tensor) -> None:
        """Seal ``t`` as the whole block ``idx``."""
        reg = self.block_region(idx)
        want = tuple(s.stop - s.start for s in reg)
        if tuple(t.shape) != want:
            raise ValueError(
                f"block {idx} of {self.name} must have shape {want}, got {tuple(t.shape)}"
            )
        self.sealer.seal(self.name, self.version, idx, t)
        self._present.add(idx)

    def put_region(self, region: Region, t: torch.Tensor) -> None:
        """Seal ``t`` as the region it covers: one block, or a union of whole blocks."""
        ranges = [_overlap(c, sl.start, sl.stop) for c, sl in zip(self.cuts, region)]
        for c, sl, r in zip(self.cuts, region, ranges):
            if not r or c[r[0]] != sl.start or c[r[-1] + 1] != sl.stop:
                raise ValueError(f"region {region} is not a union of blocks of {self.name}")
        if all(len(r) == 1 for r in ranges):
            self.put(tuple(r[0] for r in ranges), t)
            return
        if self.meta:  # planning: count the blocks a real put seals (strided ones need a copy)
            widths = [[c[i + 1] - c[i] for i in r] for c, r in zip(self.cuts, ranges)]
            first = self.block_region(tuple(r[0] for r in ranges))
            strided = not t[
                tuple(slice(b.start - sl.start, b.stop - sl.start) for b, sl in zip(first, region))
            ].is_contiguous()
            if strided and self.sealer.on_temp is not None:
                biggest = self.itemsize * math.prod(max(w) for w in widths)
                self.sealer.on_temp(biggest)
                self.sealer.on_temp(-biggest)
            self.sealer.count(
                "sealed", t.numel() * self.itemsize, math.prod(len(w) for w in widths)
            )
            self._present.update(itertools.product(*ranges))
            return
        for idx in itertools.product(*ranges):
            breg = self.block_region(idx)
            self.put(
                idx,
                t[
                    tuple(
                        slice(b.start - sl.start, b.stop - sl.start) for b, sl in zip(breg, region)
                    )
                ],
            )

    @classmethod
    def seal_tensor(
        cls,
        name: str,
        t: torch.Tensor,
        sealer: PageSealer,
        target_bytes: int,
        cuts: Sequence[Sequence[int]] | None = None,
    ) -> PagedTensor:
        """Seal a whole resident tensor block by block (blocks of at most ``target_bytes``)."""
        if cuts is None:
            cuts = block_cuts(t.shape, t.element_size(), target_bytes)
        pt = cls(name, t.shape, t.dtype, cuts, sealer)
        for idx in pt.blocks():
            pt.put(idx, t[pt.block_region(idx)])
        return pt

    # -- reading ---------------------------------------------------------------------------
    def read(
        self,
        region: Region | None = None,
        charge: Callable[[int], None] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Unseal ``region`` (a tuple of unit-step slices, one per dim) into a new tensor.

        A block that the region covers exactly is decrypted straight into the result; any other
        overlapping block is decrypted into a block-sized temporary, announced to ``charge`` and
        ``release`` (crypto working memory).
        """
        if region is None:
            region = tuple(slice(0, s) for s in self.shape)
        region = tuple(slice(*sl.indices(s)[:2]) for sl, s in zip(region, self.shape))
        out_shape = tuple(max(0, sl.stop - sl.start) for sl in region)
        device = "meta" if self.meta else "cpu"
        out = torch.empty(out_shape, dtype=self.dtype, device=device)
        if out.numel() == 0:
            return out
        ranges = [_overlap(c, sl.start, sl.stop) for c, sl in zip(self.cuts, region)]
        exact = (
            len(ranges) > 0
            and all(len(r) == 1 for r in ranges)
            and all(
                c[r[0]] == sl.start and c[r[0] + 1] == sl.stop
                for c, r, sl in zip(self.cuts, ranges, region)
            )
        )
        direct = exact or self._direct(ranges, region)
        if self.meta:  # planning: count what a real read would unseal, block by block
            if direct:
                self.sealer.count(
                    "unsealed", out.numel() * self.itemsize, math.prod(len(r) for r in ranges)
                )
                return out
            widths = [[c[i + 1] - c[i] for i in r] for c, r in zip(self.cuts, ranges)]
            biggest = self.itemsize * math.prod(max(w) for w in widths)
            if charge is not None:
                charge(biggest)
            if release is not None:
                release(biggest)
            self.sealer.count(
                "unsealed",
                self.itemsize * math.prod(sum(w) for w in widths),
                math.prod(len(w) for w in widths),
            )
            return out
        if exact:
            idx = tuple(r[0] for r in ranges)
            self._check_present(idx)
            self.sealer.unseal_into(self.name, self.version, idx, out)
            return out
        if direct:  # every block lands on a contiguous slice of the result: no temporaries
            for idx in itertools.product(*ranges):
                self._check_present(idx)
                breg = self.block_region(idx)
                dst = tuple(
                    slice(b.start - sl.start, b.stop - sl.start) for sl, b in zip(region, breg)
                )
                self.sealer.unseal_into(self.name, self.version, idx, out[dst])
            return out
        for idx in itertools.product(*ranges):
            self._check_present(idx)
            breg = self.block_region(idx)
            bshape = tuple(s.stop - s.start for s in breg)
            nbytes = math.prod(bshape) * self.itemsize
            if charge is not None:
                charge(nbytes)
            try:
                tmp = torch.empty(bshape, dtype=self.dtype, device=device)
                self.sealer.unseal_into(self.name, self.version, idx, tmp)
                src = tuple(
                    slice(max(sl.start, b.start) - b.start, min(sl.stop, b.stop) - b.start)
                    for sl, b in zip(region, breg)
                )
                dst = tuple(
                    slice(max(sl.start, b.start) - sl.start, min(sl.stop, b.stop) - sl.start)
                    for sl, b in zip(region, breg)
                )
                out[dst].copy_(tmp[src])
                del tmp
            finally:
                if release is not None:
                    release(nbytes)
        return out

    def _direct(self, ranges: Sequence[range], region: Region) -> bool:
        """True if the region is a union of whole blocks that are contiguous slices of it."""
        split = [d for d, r in enumerate(ranges) if len(r) > 1]
        if not split:
            return False
        for c, r, sl in zip(self.cuts, ranges, region):
            if c[r[0]] != sl.start or c[r[-1] + 1] != sl.stop:
                return False
        last = split[-1]
        return all(sl.stop - sl.start == 1 for sl in region[:last])

    def _check_present(self, idx: tuple[int, ...]) -> None:
        if not self.meta and idx not in self._present:
            raise IntegrityError(
                f"block {list(idx)} of sealed tensor {self.name} was never written"
            )

    def read_cost(self, region_bytes: int, exact: bool = False) -> int:
        """Enclave bytes a read of ``region_bytes`` needs: the result plus one block temporary."""
        return region_bytes + (0 if exact else self.max_block_bytes)

    def free(self) -> None:
        """Drop the pages (the value is dead)."""
        self.sealer.drop(self.name, list(self._present))
        self._present.clear()

    def __repr__(self) -> str:
        return (
            f"PagedTensor({self.name!r} v{self.version}, shape={self.shape}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, blocks={math.prod(len(c) - 1 for c in self.cuts)})"
        )


__all__ = [
    "PageStore",
    "PagedTensor",
    "SealStats",
    "SealedPage",
    "PageSealer",
    "block_cuts",
    "even_cuts",
]
