"""Convolution (1d/2d) by batch rows x output channels x output rows, the input halo included."""

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
    IntOrSeq,
    Operand,
    Sink,
    as_tuple,
    chunk_candidates,
    largest_ok,
    read_weight_rows,
    shape_bytes,
)
from taoism.enclave.paged import even_cuts


class ConvExecutor(Executor):
    """Conv1d/Conv2d by batch rows x output channels x output rows (input halo included).

    Two loop orders: ``oc`` (output-channel chunks outer: each weight chunk is unsealed once,
    the input is re-read per chunk) and ``xy`` (batch/row chunks outer: each input chunk is read
    once, the weights are re-read per chunk); the planner picks the one that moves fewer bytes.
    """

    kind = "conv"

    def __init__(
        self,
        x: Operand,
        w: Operand,
        b: Operand | None,
        stride: IntOrSeq,
        padding: IntOrSeq | str,
        dilation: IntOrSeq,
        groups: int,
        padding_mode: str,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.x, self.w, self.b = x, w, b
        nd = len(x.shape) - 2
        if nd not in (1, 2):
            raise ValueError("ConvExecutor handles 1d and 2d convolutions")
        self.nd = nd
        self.s, self.d = as_tuple(stride, nd), as_tuple(dilation, nd)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, nd)
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
        self.pointwise = (
            self.kprod == 1
            and all(v == 1 for v in self.s)
            and not self.str_pad
            and not any(self.padding)
        )
        self.osz = out_dtype.itemsize
        self.w_bytes = w.nbytes + (b.nbytes if b is not None else 0)
        self.w_paged = w.paged or (b is not None and b.paged)

    def operands(self) -> list[Operand]:
        return [o for o in (self.x, self.w, self.b) if o is not None]

    # -- geometry --------------------------------------------------------------------------
    def _oc_cands(self) -> list[int]:
        if self.groups == 1:
            return chunk_candidates(self.Cout)
        whole = [m * self.opg for m in chunk_candidates(self.groups)]
        sub = [c for c in chunk_candidates(self.opg) if c < self.opg]
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
            c = x.read_cost((nb, cin, self.H, self.W)[: 2 + self.nd], copy=cin != self.Cin)
            if self.pre_pad:
                hin = self.H + 2 * self.padding[0]
                win = self.W + (2 * self.padding[1] if self.nd == 2 else 0)
                c += nb * cin * hin * win * isz
            return c
        rows = self._rows_in(rh)
        c = nb * cin * rows * self.W * isz
        if x.paged:
            c += x.read_cost((nb, cin, min(rows, self.H), self.W)[: 2 + self.nd])
        return c

    def _cost(self, nb: int, oc: int, rh: int, out_sealed: bool, order: str = "oc") -> int:
        cin = self._cin_used(oc) if order == "oc" else self.Cin
        w, b = self.w, self.b
        w_b = w.read_cost((oc,) + tuple(w.shape[1:])) if w.paged else 0
        if b is not None and b.paged:
            w_b += b.read_cost((oc,))
        out_b = nb * oc * rh * self.Wout * self.osz
        scratch = (
            0
            if self.pointwise
            else nb * self._cin_used(oc) * self.kprod * rh * self.Wout * self.x.itemsize
        )
        multi = (nb, oc, rh) != (self.N, self.Cout, self.Hout)
        return (
            self._in_bytes(nb, cin, rh)
            + w_b
            + out_b
            + scratch
            + (self.out_bytes if multi and not out_sealed else 0)
        )

    def _traffic(self, nb: int, oc: int, rh: int, order: str, out_sealed: bool) -> int:
        n_oc = len(self._oc_cuts(oc)) - 1
        n_xy = math.ceil(self.N / nb) * math.ceil(self.Hout / rh)
        t = self.out_bytes if out_sealed else 0
        if self.x.paged:
            rows = (
                self.H
                if rh == self.Hout
                else min(self.H, self._rows_in(rh)) * math.ceil(self.Hout / rh)
            )
            one = self.N * self.Cin * rows * self.W * self.x.itemsize
            t += one * (n_oc if (order == "oc" and self.groups == 1) else 1)
        if self.w_paged:
            t += self.w_bytes * (1 if order == "oc" else n_xy)
        return t

    def scratch_bytes(self, nb: int, oc: int, rh: int) -> int:
        """Modelled im2col bytes of one chunk (0 for a pointwise convolution)."""
        return (
            0
            if self.pointwise
            else nb * self._cin_used(oc) * self.kprod * rh * self.Wout * self.x.itemsize
        )

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
                for nb in chunk_candidates(N):
                    if self.rows_ok:
                        rh = largest_ok(
                            1, Hout, lambda r: self._cost(nb, oc, r, out_sealed, order) <= avail
                        )
                    else:
                        rh = Hout if self._cost(nb, oc, Hout, out_sealed, order) <= avail else None
                    if rh is None:
                        continue
                    chunks = math.ceil(N / nb) * (len(self._oc_cuts(oc)) - 1) * math.ceil(Hout / rh)
                    score = (
                        self._traffic(nb, oc, rh, order, out_sealed) + chunks * CHUNK_PENALTY_BYTES,
                        -nb * oc * rh,
                    )
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
        return ChunkPlan(
            tuple(grid),
            self._cost(nb, oc, rh, out_sealed, order),
            out_sealed,
            self._traffic(nb, oc, rh, order, out_sealed),
            order,
        )

    # -- execution -------------------------------------------------------------------------
    def _conv(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        groups: int,
        row_explicit: bool,
    ) -> torch.Tensor:
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

    def _input(
        self,
        n0: int,
        n1: int,
        c0: int,
        c1: int,
        r0: int,
        r1: int,
        full_rows: bool,
        ctx: ExecContext,
    ) -> tuple[torch.Tensor, int]:
        if full_rows:
            reg = (slice(n0, n1), slice(c0, c1)) + tuple(slice(0, n) for n in self.x.shape[2:])
            return self.x.read(reg, ctx, copy=(c1 - c0) != self.Cin)
        return self._rows(n0, n1, c0, c1, r0, r1, ctx)

    def _step(
        self,
        xc: torch.Tensor,
        wt: torch.Tensor,
        bt: torch.Tensor | None,
        g: int,
        explicit: bool,
        n0: int,
        n1: int,
        o0: int,
        o1: int,
        r0: int,
        r1: int,
        sink: Sink,
        ctx: ExecContext,
    ) -> None:
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
        region = (slice(n0, n1), slice(o0, o1), slice(r0, r1))
        if self.nd == 2:
            region += (slice(0, self.Wout),)
        sink.put_charged(region, y)

    def run(self, plan: ChunkPlan, sink: Sink, ctx: ExecContext) -> None:
        acct = ctx.acct
        ncuts, occuts, rcuts = plan.grid[0], plan.grid[1], plan.grid[2]
        full_rows = len(rcuts) == 2
        ocs = list(zip(occuts, occuts[1:]))
        xys = [
            (n0, n1, r0, r1) for n0, n1 in zip(ncuts, ncuts[1:]) for r0, r1 in zip(rcuts, rcuts[1:])
        ]
        if plan.order != "xy":
            for o0, o1 in ocs:
                c0, c1, g = self._groups_of(o0, o1)
                wt, bt, wn = read_weight_rows(self.w, self.b, o0, o1, ctx)
                try:
                    for n0, n1, r0, r1 in xys:
                        xc, charged = self._input(n0, n1, c0, c1, r0, r1, full_rows, ctx)
                        try:
                            self._step(
                                xc, wt, bt, g, not full_rows, n0, n1, o0, o1, r0, r1, sink, ctx
                            )
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
                    wt, bt, wn = read_weight_rows(self.w, self.b, o0, o1, ctx)
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

    def _rows(
        self, n0: int, n1: int, c0: int, c1: int, r0: int, r1: int, ctx: ExecContext
    ) -> tuple[torch.Tensor, int]:
        """Input rows for output rows [r0, r1), zero-padded explicitly at the borders."""
        a = r0 * self.s[0] - self.padding[0]
        b = (r1 - 1) * self.s[0] - self.padding[0] + self.d[0] * (self.k[0] - 1) + 1
        a2, b2 = max(a, 0), min(b, self.H)
        rest = tuple(slice(0, n) for n in self.x.shape[3:])
        shape = (n1 - n0, c1 - c0, b - a) + tuple(self.x.shape[3:])
        n = shape_bytes(shape, self.x.itemsize)
        ctx.acct.alloc("activations", n)
        buf = (
            torch.zeros(shape, dtype=self.x.dtype, device=ctx.device)
            if (a2 > a or b2 < b)
            else torch.empty(shape, dtype=self.x.dtype, device=ctx.device)
        )
        if b2 > a2:
            part, pn = self.x.read((slice(n0, n1), slice(c0, c1), slice(a2, b2)) + rest, ctx)
            buf.narrow(2, a2 - a, b2 - a2).copy_(part)
            del part
            ctx.acct.free("activations", pn)
        return buf, n


def conv_shape(
    xs: Sequence[int],
    ws: Sequence[int],
    stride: IntOrSeq,
    padding: IntOrSeq | str,
    dilation: IntOrSeq,
) -> tuple[int, ...]:
    """Output shape of a convolution from the input and weight shapes."""
    nd = len(xs) - 2
    s, d, k = as_tuple(stride, nd), as_tuple(dilation, nd), tuple(ws[2:])
    if isinstance(padding, str):
        if padding == "same":
            return (xs[0], ws[0]) + tuple(xs[2:])
        padding = 0
    p = as_tuple(padding, nd)
    sp = tuple((xs[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd))
    return (xs[0], ws[0]) + sp


__all__ = ["ConvExecutor", "conv_shape"]
