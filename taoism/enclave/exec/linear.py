"""Linear layers by batch rows x output features (loop order chosen as for convolutions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import (
    CHUNK_PENALTY_BYTES,
    ChunkPlan,
    ExecContext,
    Executor,
    Operand,
    Sink,
    chunk_candidates,
    largest_ok,
    read_weight_rows,
)
from taoism.enclave.paged import even_cuts


class LinearExecutor(Executor):
    """Linear by batch rows (dim 0) x output features; loop order as for convolutions."""

    kind = "linear"

    def __init__(
        self,
        x: Operand,
        w: Operand,
        b: Operand | None,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
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
        for of in chunk_candidates(self.O):
            nb = largest_ok(1, self.N, lambda v: self._cost(v, of, out_sealed) <= avail)
            if nb is None:
                continue
            chunks = math.ceil(self.N / nb) * math.ceil(self.O / of)
            for order in ("oc", "xy"):
                score = (
                    self._traffic(nb, of, order, out_sealed) + chunks * CHUNK_PENALTY_BYTES,
                    -nb * of,
                )
                if best is None or score < best[0]:
                    best = (score, nb, of, order)
        if best is None:
            return None
        return self._mk(best[1], best[2], out_sealed, best[3])

    def _mk(self, nb: int, of: int, out_sealed: bool, order: str) -> ChunkPlan:
        mid = tuple((0, n) for n in self.out_shape[1:-1])
        grid = (even_cuts(self.N, nb),) + mid + (even_cuts(self.O, of),)
        return ChunkPlan(
            grid,
            self._cost(nb, of, out_sealed),
            out_sealed,
            self._traffic(nb, of, order, out_sealed),
            order,
        )

    def _step(
        self,
        xc: torch.Tensor,
        wt: torch.Tensor,
        bt: torch.Tensor | None,
        n0: int,
        n1: int,
        o0: int,
        o1: int,
        sink: Sink,
        ctx: ExecContext,
    ) -> None:
        if ctx.meta:
            y = torch.empty(tuple(xc.shape[:-1]) + (o1 - o0,), dtype=self.out_dtype, device="meta")
        else:
            y = F.linear(xc, wt, bt)
        mid = tuple(slice(0, n) for n in self.out_shape[1:-1])
        sink.put_charged((slice(n0, n1),) + mid + (slice(o0, o1),), y)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        ncuts, ocuts = plan.grid[0], plan.grid[-1]
        xrest = tuple(slice(0, n) for n in self.x.shape[1:])
        ns = list(zip(ncuts, ncuts[1:]))
        os_ = list(zip(ocuts, ocuts[1:]))
        if plan.order != "xy":
            for o0, o1 in os_:
                wt, bt, wn = read_weight_rows(self.w, self.b, o0, o1, ctx)
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
                    wt, bt, wn = read_weight_rows(self.w, self.b, o0, o1, ctx)
                    try:
                        self._step(xc, wt, bt, n0, n1, o0, o1, sink, ctx)
                    finally:
                        del wt, bt
                        acct.free("weights", wn)
            finally:
                del xc
                acct.free("activations", charged)


__all__ = ["LinearExecutor"]
