"""The enclave's weights: resident module tensors and constants, or sealed module by module."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from taoism.enclave.exec.base import ExecContext
from taoism.enclave.memory import ResidentValues
from taoism.enclave.paged import PagedTensor, block_cuts

SEALABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


class WeightStore:
    """The enclave's module tensors and constants: resident, or sealed module by module."""

    def __init__(
        self, root: nn.Module, constants: Sequence[str], ctx: ExecContext, values: ResidentValues
    ) -> None:
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
            for key, m in self.modules.items()
        }
        for m in self.modules.values():
            for t in _module_tensors(m).values():
                self.resident_bytes += t.nbytes
            values.own_weights(list(_module_tensors(m).values()))
        for c in self.constants:
            t = getattr(root, c)
            self.resident_bytes += t.nbytes
            values.own_weights(t)
        ctx.acct.alloc("weights", self.resident_bytes, strict=False)

    def module_bytes(self, key: str) -> int:
        """Bytes of ``key``'s tensors (resident or sealed)."""
        n = self._bytes.get(key)
        if n is None:
            n = self._bytes[key] = sum(
                math.prod(sh) * dt.itemsize for sh, dt in self.shapes[key].values()
            )
        return n

    def sealable(self) -> list[str]:
        """Modules whose weights could still be sealed (a chunked form streams them)."""
        if self._sealable is None:
            self._sealable = [
                k
                for k, m in self.modules.items()
                if isinstance(m, SEALABLE_MODULES)
                and k not in self.sealed
                and self.module_bytes(k) > 0
            ]
        return self._sealable

    @property
    def all_resident(self) -> bool:
        """True while no module's weights are sealed."""
        return not self.sealed

    def seal_module(self, key: str) -> int:
        """Move ``key``'s tensors into sealed pages (permanently); returns the bytes freed."""
        m = self.modules[key]
        pages: dict[str, PagedTensor] = {}
        freed = 0
        for name, t in _module_tensors(m).items():
            if t.dim() == 0 or not t.dtype.is_floating_point:
                continue
            pages[name] = PagedTensor.seal_tensor(
                f"w:{key}.{name}",
                t.detach(),
                self.ctx.sealer,
                self.ctx.page_bytes,
                cuts=block_cuts(
                    t.shape, t.element_size(), self.ctx.page_bytes, order=range(t.dim())
                ),
            )
            n = t.nbytes
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

    def unsealed(self, key: str) -> _Unsealed:
        """Context: ``key``'s sealed tensors unsealed into the module (charged as weights)."""
        return _Unsealed(self, key)

    def get(self, key: str, name: str) -> torch.Tensor | PagedTensor | None:
        """Tensor ``name`` of module ``key``: resident, or its sealed pages."""
        pages = self.sealed.get(key)
        if pages is not None and name in pages:
            return pages[name]
        ts = self._tensors.get(key)
        if ts is None:
            ts = self._tensors[key] = _module_tensors(self.modules[key])
        return ts.get(name)

    def report(self) -> dict[str, int | list[str]]:
        """Resident and sealed weight bytes, and the sealed modules (JSON-ready)."""
        return {
            "resident_bytes": self.resident_bytes,
            "sealed_bytes": self.sealed_bytes,
            "sealed_modules": sorted(self.sealed),
        }


class _Unsealed:
    """Context manager behind :meth:`WeightStore.unsealed`."""

    def __init__(self, store: WeightStore, key: str) -> None:
        self.store, self.key, self.n = store, key, 0

    def __enter__(self) -> None:
        m = self.store.modules[self.key]
        acct = self.store.ctx.acct
        for name, pt in self.store.sealed[self.key].items():
            t = pt.read(
                None,
                charge=lambda b: acct.alloc("crypto", b),
                release=lambda b: acct.free("crypto", b),
            )
            acct.alloc("weights", t.nbytes)
            self.n += t.nbytes
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
        m._parameters[name] = nn.Parameter(
            torch.empty(0, dtype=m._parameters[name].dtype, device=m._parameters[name].device),
            requires_grad=False,
        )
    elif name in m._buffers and m._buffers[name] is not None:
        m._buffers[name] = torch.empty(
            0, dtype=m._buffers[name].dtype, device=m._buffers[name].device
        )


def choose_sealed_weights(
    sizes: Mapping[str, int], sealable: Sequence[str], budget: int | None, resident_fraction: float
) -> list[str]:
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


__all__ = ["SEALABLE_MODULES", "WeightStore", "choose_sealed_weights"]
