"""Capture a model (torch.fx, or torch.export) and annotate every node with shapes, params, FLOPs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from taoism.capture.export import export_graph, is_aten, node_scope, op_name, propagate
from taoism.errors import CaptureError, ConfigError, InputError


@dataclass(frozen=True)
class NodeInfo:
    """Static facts about one graph node, measured on the example input."""

    name: str
    op: str  # placeholder, get_attr, call_module, call_function, call_method, output
    target: str  # module path, attribute path or a readable function/method name
    module_path: str  # innermost module this node belongs to ("" for the top level)
    module_type: str  # class name of the called module, "" otherwise
    out_shapes: tuple[tuple[int, ...], ...]
    out_dtypes: tuple[str, ...]
    out_bytes: int
    params: int
    flops: int  # floating-point operations per sample (a multiply-add counts 2)
    value_kind: str = "tensor"  # "tensor", "tensors" (tuple/list of tensors) or "other"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "target": self.target,
            "module_path": self.module_path,
            "module_type": self.module_type,
            "out_shapes": [list(s) for s in self.out_shapes],
            "out_dtypes": list(self.out_dtypes),
            "out_bytes": self.out_bytes,
            "params": self.params,
            "flops": self.flops,
            "value_kind": self.value_kind,
        }


@dataclass
class CapturedGraph:
    """A traced model: the GraphModule (sharing the caller's parameters) and node facts."""

    gm: fx.GraphModule
    nodes: dict[str, NodeInfo]
    batch: int
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[torch.dtype, ...]
    kind: str = "fx"  # how it was captured: "fx" or "export"
    module_classes: dict[str, type] = field(
        default_factory=dict
    )  # the model's module path -> class


_STANDARD_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)


class _Tracer(fx.Tracer):
    """fx tracer that remembers which submodule it was inside when tracing failed."""

    def __init__(self, leaf_names: frozenset[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self._leaf_names = leaf_names
        self._leaf_types = leaf_types
        self.scope_stack: list[str] = []
        self.failed_scope: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Standard layers by exact class only: a subclass (e.g. a LayerNorm2d) is traced through,
        # since the enclave rebuilds layers by exact class. Classes the user lists match subclasses.
        if (
            qualname in self._leaf_names
            or type(m) in _STANDARD_LEAVES
            or isinstance(m, self._leaf_types)
        ):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001 - fx signature
        qualname = self.path_of_module(m)
        self.scope_stack.append(qualname)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_scope is None:
                self.failed_scope = qualname
            raise
        self.scope_stack.pop()
        return out


def _readable_target(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if is_aten(t):
        return op_name(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", repr(t))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{mod}.{name}" if mod else name


def _tensor_metas(meta: Any) -> list[Any]:
    """Flatten the ShapeProp ``tensor_meta`` of a node (tensor or nested tuple of them)."""
    if meta is None:
        return []
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return [meta]
    if isinstance(meta, (list, tuple)):
        return [m for sub in meta for m in _tensor_metas(sub)]
    if isinstance(meta, dict):
        return [m for sub in meta.values() for m in _tensor_metas(sub)]
    return []


def _node_flops(
    node: fx.Node,
    mod: nn.Module | None,
    in_shapes: list[tuple[int, ...]],
    out_shapes: list[tuple[int, ...]],
    batch: int,
) -> int:
    """FLOPs for the whole batch (multiply-add = 2); divided by batch by the caller."""
    out_numel = sum(math.prod(s) for s in out_shapes)
    if mod is not None:
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and out_shapes:
            k = math.prod(mod.kernel_size) * (mod.in_channels // mod.groups)
            return 2 * k * math.prod(out_shapes[0]) + (
                math.prod(out_shapes[0]) if mod.bias is not None else 0
            )
        if isinstance(mod, nn.Linear) and out_shapes:
            return 2 * mod.in_features * math.prod(out_shapes[0]) + (
                math.prod(out_shapes[0]) if mod.bias is not None else 0
            )
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            return 2 * out_numel
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            ks = (
                mod.kernel_size
                if isinstance(mod.kernel_size, tuple)
                else (mod.kernel_size,)
                * (2 if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)) else 1)
            )
            return out_numel * math.prod(ks)
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return sum(math.prod(s) for s in in_shapes[:1])
        if isinstance(mod, (nn.Flatten, nn.Identity, nn.Dropout)):
            return 0
        return out_numel
    if node.op in ("call_function", "call_method"):
        name = _readable_target(node)
        if name.endswith(("matmul", "bmm", "mm")) and len(in_shapes) >= 2:
            k = in_shapes[0][-1] if in_shapes[0] else 1
            return 2 * k * out_numel
        if name.endswith(
            (
                "flatten",
                "view",
                "reshape",
                "size",
                "getitem",
                "permute",
                "transpose",
                "contiguous",
                "squeeze",
                "unsqueeze",
                "dim",
            )
        ):
            return 0
        if name.endswith(("mean", "sum", "adaptive_avg_pool2d")):
            return sum(math.prod(s) for s in in_shapes[:1])
        return out_numel
    return 0


CAPTURE_KINDS = ("auto", "fx", "export")


def capture(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture: str = "auto",
) -> CapturedGraph:
    """Capture ``model`` into a graph and record per-node shapes, params and FLOPs.

    ``capture="fx"`` traces with torch.fx (torch.nn layers stay whole nodes), ``"export"``
    uses ``torch.export`` (ATen ops, handles data-dependent Python), ``"auto"`` (default) uses
    fx when the model traces, else export. ``leaf_modules`` names submodules (qualified names or
    classes) fx keeps as one opaque node; export sees through every module and ignores it.
    """
    if capture not in CAPTURE_KINDS:
        raise ConfigError(f"capture must be one of {CAPTURE_KINDS}, got {capture!r}")
    if not isinstance(model, nn.Module):
        raise InputError(f"shield() needs an nn.Module, got {type(model).__name__}")
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError(
            "example_input must be a tensor or a sequence of tensors shaped like a real batch "
            f"(got {type(example_inputs).__name__})"
        )
    kind = capture
    if capture == "export":
        gm = export_graph(model, inputs)
    else:
        try:
            gm = trace_fx(model, leaf_modules)
            kind = "fx"
        except CaptureError as fx_exc:
            if capture == "fx":
                raise
            try:
                gm, kind = export_graph(model, inputs), "export"
            except CaptureError as exc:  # neither path: the fx message names the submodule
                raise CaptureError(f"{fx_exc} (torch.export failed too: {exc})") from exc
    return annotate(gm, model, inputs, kind)


def trace_fx(
    model: nn.Module, leaf_modules: Iterable[str | type[nn.Module]] = ()
) -> fx.GraphModule:
    """torch.fx-trace ``model`` (standard torch.nn layers and ``leaf_modules`` stay whole)."""
    leaf_modules = tuple(leaf_modules)
    names = frozenset(s for s in leaf_modules if isinstance(s, str))
    types = tuple(t for t in leaf_modules if isinstance(t, type))
    known = dict(model.named_modules())
    for n in names:
        if n not in known:
            raise CaptureError(
                f"leaf_modules names {n!r}, which is not a submodule of the model; "
                f"examples of valid names: {sorted(known)[1:6]}"
            )
    tracer = _Tracer(names, types)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        where = tracer.failed_scope or (tracer.scope_stack[-1] if tracer.scope_stack else None)
        if where:
            hint = (
                f"treat it as one opaque layer: capture/shield(..., leaf_modules=[{where!r}]) "
                "(an opaque layer can run only on the device), capture='export', or make its "
                "forward traceable"
            )
            raise CaptureError(
                f"torch.fx could not trace submodule {where!r} "
                f"({type(known[where]).__name__}): {exc}. Fix: {hint}"
            ) from exc
        raise CaptureError(
            f"torch.fx could not trace the top-level forward of "
            f"{type(model).__name__}: {exc}. Fix: capture='export', make the "
            "data-dependent part a submodule and pass it in leaf_modules, or "
            "simplify the forward"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def annotate(
    gm: fx.GraphModule, model: nn.Module, inputs: tuple[torch.Tensor, ...], kind: str
) -> CapturedGraph:
    """Run ``gm`` on the example inputs and record every node's facts."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise InputError(
            f"the model's forward takes {len(placeholders)} tensor input(s) "
            f"({[p.name for p in placeholders]}) but {len(inputs)} example input(s) "
            "were given; pass one example tensor per forward argument"
        )
    was_training = model.training
    gm.eval()
    try:
        aten_flops = propagate(gm, inputs, count=kind == "export")
    except Exception as exc:
        raise CaptureError(
            f"running the captured model on the example input failed: {exc}. "
            "Check that example_input has the shape and dtype the model expects"
        ) from exc
    finally:
        gm.train(was_training)
    batch = int(inputs[0].shape[0]) if inputs[0].dim() > 0 else 1
    modules = dict(gm.named_modules())
    infos: dict[str, NodeInfo] = {}
    for node in gm.graph.nodes:
        metas = _tensor_metas(node.meta.get("tensor_meta"))
        out_shapes = [tuple(int(d) for d in m.shape) for m in metas]
        in_shapes = [
            tuple(int(d) for d in m.shape)
            for a in node.all_input_nodes
            for m in _tensor_metas(a.meta.get("tensor_meta"))
        ]
        mod = modules.get(node.target) if node.op == "call_module" else None
        params = 0
        if mod is not None:
            params = sum(p.numel() for p in mod.parameters())
        elif node.op == "get_attr":
            attr = _fetch_attr(gm, str(node.target))
            params = attr.numel() if isinstance(attr, torch.Tensor) else 0
        if kind == "export":
            scope = node_scope(node)
            flops = aten_flops.get(node.name, 0)
        else:
            stack = node.meta.get("nn_module_stack") or {}
            scope = (
                str(node.target) if node.op == "call_module" else (list(stack)[-1] if stack else "")
            )
            if node.op == "get_attr":
                scope = str(node.target).rpartition(".")[0]
            flops = (
                _node_flops(node, mod, in_shapes, out_shapes, batch)
                if node.op not in ("placeholder", "output", "get_attr")
                else 0
            )
        infos[node.name] = NodeInfo(
            name=node.name,
            op=node.op,
            target=_readable_target(node),
            module_path=scope,
            module_type=type(mod).__name__ if mod is not None else "",
            out_shapes=tuple(out_shapes),
            out_dtypes=tuple(str(m.dtype).removeprefix("torch.") for m in metas),
            out_bytes=sum(math.prod(s) * m.dtype.itemsize for s, m in zip(out_shapes, metas)),
            params=params,
            flops=flops // max(batch, 1),
            value_kind=_value_kind(node.meta.get("tensor_meta")),
        )
    return CapturedGraph(
        gm=gm,
        nodes=infos,
        batch=batch,
        input_shapes=tuple(tuple(t.shape) for t in inputs),
        input_dtypes=tuple(t.dtype for t in inputs),
        kind=kind,
        module_classes={n: type(m) for n, m in model.named_modules()},
    )


def _value_kind(meta: Any) -> str:
    if isinstance(meta, TensorMetadata):
        return "tensor"
    if (
        isinstance(meta, (list, tuple))
        and meta
        and all(isinstance(m, TensorMetadata) for m in meta)
    ):
        return "tensors"
    return "other"


def _fetch_attr(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["CAPTURE_KINDS", "CapturedGraph", "NodeInfo", "annotate", "capture", "trace_fx"]
