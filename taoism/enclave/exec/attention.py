"""Scaled dot-product attention by batch dims (batch, heads) and query rows.

Each chunk reads its queries, the keys and values of its (batch, head) entries and the matching
part of the mask; its working set counts the score matrix (and its softmax) of those rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes
from taoism.enclave.exec.elementwise import broadcast_region

SCORE_COPIES = 3  # scores, their softmax and a temporary: the math kernel's working set per row


def attention_scores_bytes(batch: Sequence[int], rows: int, keys: int, itemsize: int) -> int:
    """Bytes of the score matrices attention keeps for ``rows`` queries of ``batch`` entries."""
    return SCORE_COPIES * math.prod(batch) * rows * keys * itemsize


class AttentionExecutor(RegionExecutor):
    """``F.scaled_dot_product_attention`` (no dropout, no GQA), by batch dims and query rows."""

    kind = "attention"

    def __init__(
        self,
        q: Operand,
        k: Operand,
        v: Operand,
        mask: Operand | None,
        is_causal: bool,
        scale: float | None,
        out_shape: Sequence[int],
        out_dtype: torch.dtype,
    ) -> None:
        self.q, self.k, self.v, self.mask = q, k, v, mask
        self.is_causal, self.scale = is_causal, scale
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        nd = len(self.out_shape)
        # causal rows depend on their offset: cut only the batch dims then
        self.dims = tuple(range(nd - 2 if is_causal else nd - 1))
        self.S = k.shape[-2]

    def operands(self) -> list[Operand]:
        return [o for o in (self.q, self.k, self.v, self.mask) if o is not None]

    def _regions(self, region: Region) -> tuple[Region, Region, Region, Region | None]:
        batch, rows = region[:-2], region[-2]
        keys = slice(0, self.S)
        q = batch + (rows, slice(0, self.q.shape[-1]))
        k = batch + (keys, slice(0, self.k.shape[-1]))
        v = batch + (keys, slice(0, self.v.shape[-1]))
        m = None
        if self.mask is not None:
            m = broadcast_region(self.mask.shape, batch + (rows, keys))
        return q, k, v, m

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        regs = self._regions(tuple(slice(0, s) for s in sizes))
        c = shape_bytes(sizes, self.out_itemsize)
        for op, reg in zip((self.q, self.k, self.v, self.mask), regs):
            if op is not None and reg is not None:
                c += op.read_cost([r.stop - r.start for r in reg])
        return c + attention_scores_bytes(sizes[:-2], sizes[-2], self.S, self.out_itemsize)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        vals: list[torch.Tensor | None] = []
        charged = 0
        try:
            for op, reg in zip((self.q, self.k, self.v, self.mask), self._regions(region)):
                if op is None or reg is None:
                    vals.append(None)
                    continue
                t, n = op.read(reg, ctx)
                charged += n
                vals.append(t)
            q, k, v, m = vals
            assert q is not None and k is not None and v is not None  # only the mask is optional
            y = self._y(
                ctx,
                region,
                lambda: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=m, is_causal=self.is_causal, scale=self.scale
                ),
            )
        except BaseException:
            ctx.acct.free("activations", charged)
            raise
        return y, charged


__all__ = ["AttentionExecutor", "SCORE_COPIES", "attention_scores_bytes"]
