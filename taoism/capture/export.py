"""Capture through ``torch.export``: a graph of ATen ops, named by the user's module paths.

``torch.export`` (dynamo) handles data-dependent Python that torch.fx cannot trace. The exported
program is unlifted into a plain ``fx.GraphModule`` whose parameters sit at their original paths
(``get_attr`` nodes), whose call nodes are ATen operators (``torch.ops.aten.*``) and whose inputs
and outputs match the model's forward; each node's module path comes from its
``nn_module_stack`` metadata. The batch dimension is exported dynamic where the model allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from taoism.errors import CaptureError

# Ops that only reinterpret or inspect a tensor: no floating-point work.
_NO_FLOP_OPS = frozenset(
    {
        "view",
        "reshape",
        "_unsafe_view",
        "permute",
        "transpose",
        "t",
        "expand",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "flatten",
        "contiguous",
        "clone",
        "alias",
        "detach",
        "sym_size",
        "sym_numel",
        "sym_stride",
        "_assert_tensor_metadata",
        "_assert_scalar",
        "to",
        "_to_copy",
        "dropout",
        "split",
        "chunk",
        "unbind",
        "cat",
        "stack",
        "embedding",
        "lift_fresh_copy",
    }
)
_EMPTY_SCOPE = "_empty_nn_module_stack_from_metadata_hook"


def op_name(target: Any) -> str:
    """``aten.linear.default`` for an ATen overload, else the target's repr."""
    return (
        str(target)
        if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
        else getattr(target, "__name__", repr(target))
    )


def is_aten(target: Any) -> bool:
    """True for an ATen operator overload (what exported graphs call)."""
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"


def _batched(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Batch-1 examples repeated to batch 2: export specialises a size-1 dimension to 1."""
    return tuple(torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t for t in inputs)


def export_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """``torch.export`` ``model`` (dynamic batch where possible) into a plain GraphModule."""
    examples = _batched(inputs)
    dynamic = tuple({0: torch.export.Dim.AUTO} if t.dim() > 0 else None for t in examples)
    was_training = model.training
    model.eval()
    try:
        try:
            ep = torch.export.export(model, examples, dynamic_shapes=dynamic)
        except Exception:  # a model that fixes its batch size: export it static
            ep = torch.export.export(model, inputs)
    except Exception as exc:  # torch.export raises many types (UserError, Unsupported, ...)
        raise CaptureError(
            f"torch.export could not export {type(model).__name__}: {str(exc).splitlines()[0][:400]}. "
            "Fix: capture='fx' with leaf_modules=[...] naming the submodule that cannot be "
            "captured (it then runs opaque, on the device), or make that code exportable "
            "(see torch.export's error above)"
        ) from exc
    finally:
        model.train(was_training)
    unlifted = ep.module()
    graph = unlifted.graph
    for n in list(graph.nodes):  # the input guards re-check shapes we check ourselves
        if n.op == "call_module" and str(n.target) == "_guards_fn":
            graph.erase_node(n)
    out = next(n for n in graph.nodes if n.op == "output")
    flat = list(out.args[0]) if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
    out.args = (pytree.tree_unflatten(flat, ep.call_spec.out_spec),)
    graph._codegen = fx.graph.CodeGen()  # plain positional inputs, structured output
    _device_from_input(graph, {t.device for t in inputs})
    # A plain GraphModule over the attributes the graph uses (parameters at their model paths).
    return fx.GraphModule(unlifted, graph, type(model).__name__).eval()


def _device_from_input(graph: fx.Graph, devices: set[torch.device]) -> None:
    """Export bakes the example's device into factory ops (``arange(..., device=cpu)``): read
    it from the first input instead, so the graph runs on whichever device it is moved to."""
    first = next((n for n in graph.nodes if n.op == "placeholder"), None)
    if first is None or len(devices) != 1:
        return
    device_node = None
    for n in list(graph.nodes):
        if n.op == "call_function" and n.kwargs.get("device") in devices:
            if device_node is None:
                with graph.inserting_after(first):
                    device_node = graph.call_function(getattr, (first, "device"))
            n.kwargs = {**n.kwargs, "device": device_node}


def node_scope(node: fx.Node) -> str:
    """The innermost module path of an exported node (from ``nn_module_stack``), else ""."""
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0]
    stack = node.meta.get("nn_module_stack") or {}
    for value in reversed(list(stack.values())):
        path = value[0] if isinstance(value, tuple) else str(value)
        if path and path != _EMPTY_SCOPE:
            return path
        return ""
    return ""


class FlopProp(ShapeProp):
    """ShapeProp that also counts each node's FLOPs (torch's flop counter, else one per output
    element for elementwise ops; views and copies count zero)."""

    def __init__(self, gm: fx.GraphModule, count: bool = True) -> None:
        super().__init__(gm)
        self.count = count
        self.flops: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op != "call_function" or not self.count:
            return super().run_node(n)
        with FlopCounterMode(display=False) as counter:
            out = super().run_node(n)
        counted = counter.get_total_flops()
        packet = getattr(n.target, "_opname", "") or op_name(n.target).split(".")[-1]
        if counted == 0 and packet not in _NO_FLOP_OPS:
            counted = sum(t.numel() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        self.flops[n.name] = int(counted)
        return out


def propagate(
    gm: fx.GraphModule, inputs: Sequence[torch.Tensor], count: bool = True
) -> dict[str, int]:
    """Run ``gm`` on ``inputs`` recording ``tensor_meta``; returns FLOPs per node (whole batch,
    counted only with ``count``)."""
    prop = FlopProp(gm, count)
    with torch.no_grad():
        prop.propagate(*inputs)
    return prop.flops


__all__ = ["FlopProp", "export_graph", "is_aten", "node_scope", "op_name", "propagate"]
