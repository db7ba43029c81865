"""Strategies that move whole modules: none, all, deep:k, shallow:k, teeslice.

The model is not rewritten (a private deep copy is returned); only the placement differs.
Nodes outside every unit of deep/shallow (e.g. a top-level ``torch.flatten``) are AUTO: they run
where their inputs are, so they add no crossing.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from taoism.errors import ConfigError
from taoism.strategies._graph import private_copy, trace
from taoism.strategies.spec import BlackBox, Deep, NoShield, Shallow, TEESlice


def apply_none(model: nn.Module, s: NoShield) -> tuple[nn.Module, dict[str, Any]]:
    return private_copy(model), {"_default": "GPU"}


def apply_all(model: nn.Module, s: BlackBox) -> tuple[nn.Module, dict[str, Any]]:
    return private_copy(model), {"_default": "ENCLAVE"}


def _first_use(gm: fx.GraphModule) -> dict[str, int]:
    """Position of the first graph node that touches each top-level child."""
    order: dict[str, int] = {}
    for i, n in enumerate(gm.graph.nodes):
        if n.op in ("call_module", "get_attr"):
            order.setdefault(str(n.target).split(".")[0], i)
        path = next(reversed(n.meta.get("nn_module_stack") or {"": None}), "")
        if path:
            order.setdefault(str(path).split(".")[0], i)
    return order


def model_units(model: nn.Module, given: tuple[tuple[str, ...], ...] | None,
                gm: fx.GraphModule | None = None) -> list[tuple[str, ...]]:
    """The partition units: ``given``, else the model's own (``taoism_units()``, as
    ``taoism.zoo.units``), else one unit per top-level child in the order the forward first
    uses them (children the forward never uses are left out)."""
    from taoism.zoo import units as zoo_units

    if given is not None:
        units = list(given)
    elif callable(getattr(model, "taoism_units", None)):
        units = zoo_units(model)
    else:
        gm = gm if gm is not None else trace(model)
        first = _first_use(gm)
        units = sorted(((name,) for name, _ in model.named_children() if name in first),
                       key=lambda u: first[u[0]])
    known = dict(model.named_modules())
    for u in units:
        for name in u:
            if name not in known:
                raise ConfigError(f"unit {u} names {name!r}, which is not a submodule of "
                                  f"{type(model).__name__}; examples: {sorted(known)[1:6]}")
    if not units:
        raise ConfigError(f"{type(model).__name__} has no partition units (no submodules used by "
                          "its forward); use 'all' or give units=... in Deep/Shallow")
    return units


def apply_layerwise(model: nn.Module, s: Deep | Shallow) -> tuple[nn.Module, dict[str, Any]]:
    """The first (shallow) or last (deep) ``k`` units in the enclave, the other units on the
    device; nodes outside every unit run where their inputs are (AUTO)."""
    m = private_copy(model)
    gm = trace(m)
    units = model_units(m, s.units, gm)
    if s.k > len(units):
        raise ConfigError(f"{s.spec}: {type(model).__name__} has only {len(units)} partition units "
                          f"({', '.join('+'.join(u) for u in units[:4])}, ...); use K in 0..{len(units)}")
    shielded = units[:s.k] if isinstance(s, Shallow) else units[len(units) - s.k:]
    # Only names the graph uses may appear in a placement (a unit may hold an unused module).
    used = {str(n.target) for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}

    def called(name: str) -> bool:
        return any(t == name or t.startswith(name + ".") for t in used)

    placement: dict[str, Any] = {"_default": "AUTO"}
    for u in units:
        side = "ENCLAVE" if u in shielded else "GPU"
        for name in u:
            if called(name):
                placement[name] = side
    return m, placement


def is_sliced(model: nn.Module) -> bool:
    return callable(getattr(model, "public_modules", None)) and callable(
        getattr(model, "private_modules", None))


def apply_teeslice(model: nn.Module, s: TEESlice) -> tuple[nn.Module, dict[str, Any]]:
    """Public modules (the backbone) on the device; slices, merges, pooling and fc in the enclave."""
    if not is_sliced(model):
        raise ConfigError(
            f"strategy 'teeslice' needs a TEESlice model (a public backbone plus private slices, "
            f"partitioned before training), but got a plain {type(model).__name__}; build one with "
            "taoism.zoo.get_model('teeslice_resnet18') (or teeslice_resnet34/50, teeslice_small_cnn) "
            "and load its "
            "public backbone with model.load_backbone(...)")
    m = private_copy(model)
    placement: dict[str, Any] = {"_default": "ENCLAVE"}
    for name in m.public_modules():
        placement[name] = "GPU"
    for name in m.private_modules():
        placement[name] = "ENCLAVE"
    # The backbone's final pooling reads the last merged feature, which is in the enclave:
    # pooling there saves a round trip and exposes nothing new.
    backbone = getattr(m, "backbone", None)
    if backbone is not None and isinstance(getattr(backbone, "avgpool", None), nn.Module):
        placement["backbone.avgpool"] = "ENCLAVE"
    return m, placement
