"""Layer norm by regions of its leading (not normalised) dimensions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taoism.enclave.exec.base import ExecContext, Operand, Region, RegionExecutor, shape_bytes


class LayerNormExecutor(RegionExecutor):
    """``F.layer_norm`` over the trailing ``normalized_shape`` dims, cut along the leading ones."""

    kind = "layernorm"

    def __init__(
        self,
        x: Operand,
        normalized_shape: Sequence[int],
        weight: Operand | None,
        bias: Operand | None,
        eps: float,
        out_dtype: torch.dtype,
    ) -> None:
        self.x, self.w, self.b, self.eps = x, weight, bias, eps
        self.norm_shape = tuple(normalized_shape)
        self.out_shape, self.out_dtype = tuple(x.shape), out_dtype
        self.dims = tuple(range(len(self.out_shape) - len(self.norm_shape)))

    def operands(self) -> list[Operand]:
        return [o for o in (self.x, self.w, self.b) if o is not None]

    def chunk_cost(self, sizes: Sequence[int]) -> int:
        c = self.x.read_cost(sizes) + 2 * shape_bytes(
            sizes, self.out_itemsize
        )  # output + a temporary
        return c + sum(p.read_cost(p.shape) for p in (self.w, self.b) if p is not None)

    def compute(self, region: Region, ctx: ExecContext) -> tuple[torch.Tensor, int]:
        x, charged = self.x.read(region, ctx)
        ps: list[torch.Tensor | None] = []
        try:
            for p in (self.w, self.b):
                if p is None:
                    ps.append(None)
                    continue
                t, n = p.read(p.full(), ctx)
                charged += n
                ps.append(t)
        except BaseException:
            ctx.acct.free("activations", charged)
            raise
        w, b = ps
        return self._y(
            ctx, region, lambda: F.layer_norm(x, self.norm_shape, w, b, self.eps)
        ), charged


__all__ = ["LayerNormExecutor"]
