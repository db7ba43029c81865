"""Strategies that move whole modules: none, all, deep:k, shallow:k, teeslice.

The model is not rewritten (a private deep copy is returned); only the placement differs.
Nodes outside every unit of deep/shallow (e.g. a top-level ``torch.flatten``) are AUTO: they run
where their inputs are, so they add no crossing.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from taoism.capture import CapturedGraph
from taoism.errors import ConfigError
from taoism.strategies._graph import CaptureOptions, captured_graph, private_copy
from taoism.strategies.spec import BlackBox, Deep, NoShield, Shallow, TEESlice


def apply_none(
    model: nn.Module, s: NoShield, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    return private_copy(model), {"_default": "GPU"}


def apply_all(
    model: nn.Module, s: BlackBox, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    return private_copy(model), {"_default": "ENCLAVE"}


def _scopes(cg: CapturedGraph) -> list[str]:
    """Per graph node in order, the module path or attribute it belongs to ("" at top level)."""
    out = []
    for n in cg.gm.graph.nodes:
        info = cg.nodes.get(n.name)
        if n.op in ("call_module", "get_attr"):
            out.append(str(n.target))
        elif info is not None:
            out.append(info.module_path)
        else:
            out.append(str(next(reversed(n.meta.get("nn_module_stack") or {"": None}), "")))
    return out


def _first_use(cg: CapturedGraph) -> dict[str, int]:
    """Position of the first graph node inside (or reading) each module path and attribute."""
    order: dict[str, int] = {}
    for i, scope in enumerate(_scopes(cg)):
        parts = scope.split(".") if scope else []
        for depth in range(1, len(parts) + 1):
            order.setdefault(".".join(parts[:depth]), i)
    return order


def _repeated(mod: nn.Module) -> bool:
    """A Sequential/ModuleList of >= 2 blocks of one class (encoder layers, residual stages)."""
    kids = list(mod.children())
    return (
        isinstance(mod, (nn.Sequential, nn.ModuleList))
        and len(kids) >= 2
        and len({type(k) for k in kids}) == 1
        and any(True for _ in kids[0].children())
    )


def _expand(name: str, mod: nn.Module) -> list[str]:
    """A top-level child as units: itself, or its repeated blocks one by one (a transformer's
    encoder layers), with the child's other submodules as units of their own."""
    if _repeated(mod):
        return [f"{name}.{k}" for k, _ in mod.named_children()]
    if any(_repeated(c) for c in mod.children()):
        return [
            u
            for k, c in mod.named_children()
            for u in (_expand(f"{name}.{k}", c) if _repeated(c) else [f"{name}.{k}"])
        ]
    return [name]


def model_units(
    model: nn.Module,
    given: tuple[tuple[str, ...], ...] | None,
    cg: CapturedGraph | None = None,
    opts: CaptureOptions = CaptureOptions(),
) -> list[tuple[str, ...]]:
    """The partition units: ``given``, else the model's own (``taoism_units()``, as
    ``taoism.zoo.units``), else its blocks in the order the forward first uses them: one per
    top-level child, except that a container of repeated blocks (a transformer's encoder
    layers) gives one unit per block (children the forward never uses are left out)."""
    from taoism.zoo import units as zoo_units

    if given is not None:
        units = list(given)
    elif callable(getattr(model, "taoism_units", None)):
        units = zoo_units(model)
    else:
        cg = cg if cg is not None else captured_graph(model, opts)
        first = _first_use(cg)
        names = [u for name, mod in model.named_children() for u in _expand(name, mod)]
        units = sorted(((u,) for u in names if u in first), key=lambda u: first[u[0]])
    known = (
        {n for n, _ in model.named_modules()}
        | {n for n, _ in model.named_parameters()}
        | {n for n, _ in model.named_buffers()}
    )
    for u in units:
        for name in u:
            if name not in known:
                raise ConfigError(
                    f"unit {u} names {name!r}, which is not a submodule or parameter "
                    f"of {type(model).__name__}; examples: {sorted(known)[1:6]}"
                )
    if not units:
        raise ConfigError(
            f"{type(model).__name__} has no partition units (no submodules used by "
            "its forward); use 'all' or give units=... in Deep/Shallow"
        )
    return units


def apply_layerwise(
    model: nn.Module, s: Deep | Shallow, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    """The first (shallow) or last (deep) ``k`` units in the enclave, the other units on the
    device; nodes outside every unit run where their inputs are (AUTO)."""
    m = private_copy(model)
    cg = captured_graph(m, opts)
    units = model_units(m, s.units, cg)
    if s.k > len(units):
        raise ConfigError(
            f"{s.spec}: {type(model).__name__} has only {len(units)} partition units "
            f"({', '.join('+'.join(u) for u in units[:4])}, ...); use K in 0..{len(units)}"
        )
    shielded = units[: s.k] if isinstance(s, Shallow) else units[len(units) - s.k :]
    # Only names the graph uses may appear in a placement (a unit may hold an unused module).
    used = _first_use(cg)
    placement: dict[str, Any] = {"_default": "AUTO"}
    for u in units:
        side = "ENCLAVE" if u in shielded else "GPU"
        for name in u:
            if name in used:
                placement[name] = side
    return m, placement


def is_sliced(model: nn.Module) -> bool:
    return callable(getattr(model, "public_modules", None)) and callable(
        getattr(model, "private_modules", None)
    )


def apply_teeslice(
    model: nn.Module, s: TEESlice, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    """Public modules (the backbone) on the device; slices, merges, pooling and fc in the enclave."""
    if not is_sliced(model):
        raise ConfigError(
            f"strategy 'teeslice' needs a TEESlice model (a public backbone plus private slices, "
            f"partitioned before training), but got a plain {type(model).__name__}; build one with "
            "taoism.zoo.get_model('teeslice_resnet18') (or teeslice_resnet34/50, teeslice_small_cnn) "
            "and load its "
            "public backbone with model.load_backbone(...)"
        )
    m: Any = private_copy(model)  # a TEESlice model: public_modules() / private_modules()
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
