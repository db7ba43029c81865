"""Lower a plan's enclave segments to the protocol's program description (host side, shield time).

The description (:mod:`taoism.protocol.schema`) names only whitelisted ops
(:mod:`taoism.protocol.vocabulary`); the weight tensors it lists are gathered for the backend,
which sends them to the enclave encrypted, and are not kept on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.capture import CapturedGraph
from taoism.errors import PlacementError
from taoism.placement.modes import EnclaveMode
from taoism.placement.plan import Plan, Segment
from taoism.protocol.schema import PROGRAM_FORMAT
from taoism.protocol.vocabulary import METHODS, MODULE_KINDS, encode_arg, function_name, module_kind


def fetch(root: nn.Module, path: str) -> Any:
    """The attribute at dotted ``path`` under ``root`` (a submodule, parameter or constant)."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def enclave_program(
    captured: CapturedGraph, plan: Plan, segments: Sequence[Segment] | None = None
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """The JSON description of every enclave segment (or of ``segments``) and the tensors it needs, in order.

    A device segment in ``segments`` is described the same way (``send_in`` = its inputs,
    ``returns`` = its outputs): :func:`taoism.package` stores the device part like this.
    """
    nodes = {n.name: n for n in captured.gm.graph.nodes}
    modules: dict[str, Any] = {}
    module_keys: dict[str, str] = {}
    constants: list[str] = []
    const_keys: dict[str, str] = {}
    tensor_names: list[str] = []
    tensors: list[torch.Tensor] = []
    described_segments = []

    def ref(a: Any) -> str | None:
        return a.name if isinstance(a, fx.Node) else None

    for seg in plan.enclave_segments if segments is None else segments:
        described = []
        for name in seg.nodes:
            n = nodes[name]
            item: dict[str, Any] = {"name": name, "op": n.op}
            if n.op == "call_module":
                target = str(n.target)
                mod = captured.gm.get_submodule(target)
                kind = module_kind(mod)
                if kind is None:
                    raise PlacementError(
                        f"node {name!r} calls module {target!r} of type {type(mod).__name__}, which the "
                        f"enclave cannot run (it runs {', '.join(sorted(MODULE_KINDS))}). Place it on "
                        f"the device ({{{target!r}: 'GPU'}}), or, if it is a container, let tracing "
                        "see inside it (do not list it in leaf_modules)"
                    )
                if target not in module_keys:
                    key = module_keys[target] = f"m{len(module_keys)}"
                    state = mod.state_dict()
                    modules[key] = {
                        "type": type(mod).__name__,
                        "config": kind.config(mod),
                        "tensors": list(state),
                        "path": target,
                    }
                    for tname, t in state.items():
                        tensor_names.append(f"{key}.{tname}")
                        tensors.append(t.detach().to("cpu").contiguous())
                item["module"] = module_keys[target]
            elif n.op == "call_function":
                fname = function_name(n.target)
                if fname is None:
                    raise PlacementError(
                        f"node {name!r} calls {getattr(n.target, '__name__', n.target)!r}, which is not "
                        "on the enclave's function whitelist; place this node on the device "
                        f"({{{name!r}: 'GPU'}})"
                    )
                item["fn"] = fname
            elif n.op == "call_method":
                if n.target not in METHODS:
                    raise PlacementError(
                        f"node {name!r} calls tensor method {n.target!r}, which is not on the enclave's "
                        f"method whitelist; place this node on the device ({{{name!r}: 'GPU'}})"
                    )
                item["method"] = n.target
            elif n.op == "get_attr":
                target = str(n.target)
                if target not in const_keys:
                    key = const_keys[target] = f"c{len(const_keys)}"
                    constants.append(key)
                    tensor_names.append(key)
                    tensors.append(
                        torch.as_tensor(fetch(captured.gm, target)).detach().to("cpu").contiguous()
                    )
                item["tensor"] = const_keys[target]
            else:  # pragma: no cover - plans hold compute nodes only
                raise PlacementError(f"node {name!r}: op {n.op!r} cannot run in the enclave")
            item["args"] = encode_arg(list(n.args), ref)
            item["kwargs"] = encode_arg(dict(n.kwargs), ref)["$d"]
            described.append(item)
        enclave_side = seg.side is EnclaveMode.ENCLAVE
        described_segments.append(
            {
                "id": seg.index,
                "inputs": list(seg.inputs),
                "send_in": list(seg.send_in if enclave_side else seg.inputs),
                "returns": list(seg.returns if enclave_side else seg.outputs),
                "keep": list(seg.keep),
                "free": list(seg.enclave_free),
                "nodes": described,
            }
        )
    desc = {
        "format": PROGRAM_FORMAT,
        "modules": modules,
        "constants": constants,
        "tensors": tensor_names,
        "segments": described_segments,
    }
    return desc, tensors


__all__ = ["enclave_program", "fetch"]
