"""The attacker's starting point: what the host exposes, turned back into a full state dict.

An attacker view maps every ORIGINAL parameter/buffer name to an
:class:`~taoism.strategies.ExposedParam` (``status`` in plaintext / zeroed / morphed /
obfuscated / absent, ``tensor`` = what the untrusted host holds). It comes from a deployment
(:func:`taoism.strategies.attacker_view`); :func:`white_box_view` and :func:`black_box_view`
build the two extremes from a plain model for tests.

:func:`reconstruct_state` recovers what the published attacks recover (S&P'24, Sec. V):

* ``plaintext``: taken as is.
* ``zeroed`` (Magnitude): the zero entries are filled from the public model.
* ``morphed`` (SOTER): each layer's secret scalar is estimated as
  ``sqrt(var(morphed weight) / var(public weight))`` and divided out of the layer's weight and
  bias.
* ``obfuscated`` (ShadowNet): the extra rows are noise filters; the rows with the largest
  variance are dropped as noise (removing them leaves the low-variance real rows), and the real
  rows are un-shuffled by a minimum-L2 assignment to the public model's rows. Biases follow
  their weight's rows.
* ``absent``: taken from the public model (or left at the template's value when the public model
  has no such tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from taoism.errors import ConfigError

__all__ = [
    "Reconstruction",
    "black_box_view",
    "exposed_param",
    "match_rows",
    "reconstruct_state",
    "view_summary",
    "white_box_view",
]

STATUSES = ("plaintext", "zeroed", "morphed", "obfuscated", "absent")


def _exposed_cls() -> Any:
    from taoism.strategies import ExposedParam

    return ExposedParam


def exposed_param(status: str, tensor: torch.Tensor | None, kind: str = "param") -> Any:
    """An :class:`~taoism.strategies.ExposedParam` (for views built by hand)."""
    if status not in STATUSES:
        raise ConfigError(f"unknown exposure status {status!r}; one of {', '.join(STATUSES)}")
    numel = tensor.numel() if tensor is not None else 0
    return _exposed_cls()(status, tensor, kind, numel)


def _named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor, str]]:
    return [(n, p.detach(), "param") for n, p in model.named_parameters()] + [
        (n, b.detach(), "buffer") for n, b in model.named_buffers()
    ]


def white_box_view(model: nn.Module) -> dict[str, Any]:
    """Every tensor in plaintext (what ``strategy="none"`` exposes)."""
    return {n: exposed_param("plaintext", t.clone(), k) for n, t, k in _named_tensors(model)}


def black_box_view(model: nn.Module) -> dict[str, Any]:
    """Nothing exposed (what ``strategy="all"`` exposes)."""
    cls = _exposed_cls()
    return {n: cls("absent", None, k, t.numel()) for n, t, k in _named_tensors(model)}


def view_summary(view: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per status: number of tensors and of elements (original sizes) the view holds."""
    out = {s: {"tensors": 0, "elements": 0} for s in STATUSES}
    for e in view.values():
        st = e.status if e.status in out else "absent"
        out[st]["tensors"] += 1
        out[st]["elements"] += int(
            getattr(e, "numel", 0) or (e.tensor.numel() if e.tensor is not None else 0)
        )
    return out


def match_rows(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``order`` such that ``rows[order[j]]`` is the row assigned to ``reference[j]``.

    Minimum total squared L2 distance (Hungarian, via scipy when installed; otherwise greedy on
    globally sorted distances). ``rows`` and ``reference`` are ``(n, d)`` with the same ``n``.
    """
    cost = torch.cdist(reference.double(), rows.double()) ** 2  # (ref, rows)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        n = cost.shape[0]
        order = torch.full((n,), -1, dtype=torch.long)
        used = torch.zeros(n, dtype=torch.bool)
        for flat in torch.argsort(cost.flatten()).tolist():
            r, c = divmod(flat, n)
            if order[r] < 0 and not used[c]:
                order[r] = c
                used[c] = True
        return order
    ref_idx, row_idx = linear_sum_assignment(cost.numpy())
    order = torch.empty(cost.shape[0], dtype=torch.long)
    order[torch.as_tensor(ref_idx)] = torch.as_tensor(row_idx)
    return order


@dataclass
class Reconstruction:
    """A surrogate's initial state dict and how each exposed tensor was recovered."""

    state: dict[str, torch.Tensor]
    statuses: dict[str, str]
    scales: dict[str, float] = field(default_factory=dict)  # SOTER: estimated scalar per module
    row_orders: dict[str, list[int]] = field(
        default_factory=dict
    )  # ShadowNet: kept host rows, in order

    def modules_with(self, status: str) -> set[str]:
        return {n.rpartition(".")[0] for n, s in self.statuses.items() if s == status}


def _var(t: torch.Tensor) -> float:
    return float(t.double().var()) if t.numel() > 1 else float(t.double().pow(2).mean())


def reconstruct_state(
    view: Mapping[str, Any],
    public_state: Mapping[str, torch.Tensor],
    template_state: Mapping[str, torch.Tensor],
) -> Reconstruction:
    """The attacker's best initial state dict for the victim's architecture.

    ``template_state``: a state dict of the victim's architecture (names, shapes, dtypes; its
    values are used only where neither the view nor the public model has anything).
    ``public_state``: the public model's state dict.
    """
    state: dict[str, torch.Tensor] = {}
    statuses: dict[str, str] = {}
    by_module: dict[str, dict[str, str]] = {}
    for name in template_state:
        e = view.get(name)
        st = e.status if e is not None and e.tensor is not None else "absent"
        if st not in STATUSES:
            raise ConfigError(f"attacker view entry {name!r} has unknown status {st!r}")
        statuses[name] = st
        mod, _, leaf = name.rpartition(".")
        by_module.setdefault(mod, {})[leaf] = st

    def public_or_template(name: str) -> torch.Tensor:
        ref = template_state[name]
        pub = public_state.get(name)
        if pub is not None and tuple(pub.shape) == tuple(ref.shape):
            return pub.detach().clone().to(ref.dtype)
        return ref.detach().clone()

    rec = Reconstruction(state, statuses)
    # SOTER: one scalar per module, from its weight when the weight is morphed.
    for mod, leaves in by_module.items():
        morphed = [leaf for leaf, st in leaves.items() if st == "morphed"]
        if not morphed:
            continue
        key = "weight" if "weight" in morphed else morphed[0]
        name = f"{mod}.{key}" if mod else key
        host = view[name].tensor.detach().cpu()
        pub = public_state.get(name)
        pv = _var(pub) if pub is not None and pub.shape == host.shape else 0.0
        rec.scales[mod] = (_var(host) / pv) ** 0.5 if pv > 0 else 1.0
    # ShadowNet: row selection per module, from its weight when the weight is obfuscated.
    for mod, leaves in by_module.items():
        if leaves.get("weight") != "obfuscated":
            continue
        name = f"{mod}.weight" if mod else "weight"
        host = view[name].tensor.detach().cpu()
        c = template_state[name].shape[0]
        rows = host.reshape(host.shape[0], -1).double()
        if host.shape[0] < c or tuple(host.shape[1:]) != tuple(template_state[name].shape[1:]):
            raise ConfigError(
                f"obfuscated tensor {name!r} has shape {tuple(host.shape)}, cannot "
                f"hold the {tuple(template_state[name].shape)} original rows"
            )
        # Noise filters are drawn from U(-noise, noise): far larger spread than trained filters.
        spread = rows.var(dim=1, unbiased=False) + rows.mean(dim=1) ** 2
        kept = torch.sort(torch.argsort(spread)[:c]).values
        pub = public_state.get(name)
        if pub is not None and tuple(pub.shape) == tuple(template_state[name].shape):
            order = kept[match_rows(rows[kept], pub.reshape(c, -1).double())]
        else:
            order = kept
        rec.row_orders[mod] = order.tolist()

    for name, ref in template_state.items():
        st = statuses[name]
        mod = name.rpartition(".")[0]
        host = view[name].tensor.detach().cpu() if st != "absent" else None
        if st == "plaintext":
            if tuple(host.shape) != tuple(ref.shape):
                raise ConfigError(
                    f"plaintext tensor {name!r} has shape {tuple(host.shape)}, the "
                    f"architecture needs {tuple(ref.shape)}"
                )
            state[name] = host.clone().to(ref.dtype)
        elif st == "zeroed":
            fill = public_or_template(name)
            state[name] = torch.where(host == 0, fill, host.to(ref.dtype))
        elif st == "morphed":
            state[name] = (host.double() / rec.scales.get(mod, 1.0)).to(ref.dtype)
        elif st == "obfuscated":
            order = rec.row_orders.get(mod)
            if order is None:  # e.g. a bias whose weight was not obfuscated: keep the first rows
                order = list(range(ref.shape[0]))
            state[name] = host[torch.tensor(order)].clone().to(ref.dtype)
        else:
            state[name] = public_or_template(name)
    return rec
