"""The attacker's starting points: surrogates built from what the deployment exposes.

Every start is a *fresh* copy of an architecture (its own seeded initialisation, never the
victim's), loaded with the reconstructed view (:func:`taoism.security.views.reconstruct_state`)
where the host holds something and with the public model elsewhere. So no tensor of a start
can come from the victim unless the deployment exposed it.

Every other row's attacker tries the view and, when the view exposes anything, the black-box
start (``view_start`` with an empty view; ``AttackConfig.black_box_start``), and the row reports
the better. For TEESlice (:func:`teeslice_starts`) the attacker tries three starts, and the row reports the
best: the sliced model with its backbone unfrozen; the plain architecture with the exposed
backbone and a new head; the plain architecture from its public weights (the black-box start).
``teeslice_starts`` is the one place that knows how a TEESlice deployment is attacked; the table's
TEESlice row feeds it a fresh :class:`taoism.teeslice.SlicedNet` of the deployed structure
(:func:`taoism.security.sliced.attacker_sliced`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from taoism.security.attacks import build_surrogate
from taoism.security.views import Reconstruction

__all__ = ["Start", "teeslice_starts", "view_start"]

State = dict[str, torch.Tensor]


@dataclass
class Start:
    """One starting point: a model, how each of its tensors was obtained, and a name."""

    name: str
    model: nn.Module
    statuses: dict[str, str]
    rec: Reconstruction | None = None
    info: dict[str, Any] = field(default_factory=dict)


def view_start(
    fresh: nn.Module,
    view: Mapping[str, Any],
    public_sd: Mapping[str, torch.Tensor],
    name: str = "view",
) -> Start:
    """``fresh``'s architecture initialised from the view, de-obfuscated, the rest public."""
    model, rec = build_surrogate(fresh, view, public_sd)
    model.requires_grad_(True)
    return Start(name, model, dict(rec.statuses), rec)


def teeslice_starts(
    fresh_sliced: nn.Module,
    fresh_plain: Callable[[], nn.Module],
    view: Mapping[str, Any],
    sliced_public_sd: Mapping[str, torch.Tensor],
    plain_public_sd: Mapping[str, torch.Tensor],
) -> list[Start]:
    """The three TEESlice starts (see the module docstring)."""
    starts = [view_start(fresh_sliced, view, sliced_public_sd, "sliced_unfrozen")]
    # The backbone as the host holds it, under the plain architecture, with a new head.
    prefix = "backbone."
    exposed = {k[len(prefix) :]: e for k, e in view.items() if k.startswith(prefix)}
    plain = fresh_plain()
    head = [n for n, m in plain.named_modules() if isinstance(m, nn.Linear)][-1]
    no_head = {k: v for k, v in plain.state_dict().items() if not k.startswith(head + ".")}
    backbone_view = {k: exposed[k] for k in no_head if k in exposed}
    fresh_head = {k: v for k, v in plain.state_dict().items() if k.startswith(head + ".")}
    start_b = view_start(
        plain, backbone_view, {**dict(plain_public_sd), **fresh_head}, "backbone_new_head"
    )
    starts.append(start_b)
    # The plain architecture from its public weights (what a black-box attacker starts from).
    starts.append(view_start(fresh_plain(), {}, plain_public_sd, "plain_public"))
    return starts
