"""Device segments: GraphModules over private copies of their modules (host side, shield time)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.capture import CapturedGraph
from taoism.placement import Segment
from taoism.placement.lowering import enclave_program, fetch


def device_segment(captured: CapturedGraph, seg: Segment, device: torch.device) -> fx.GraphModule:
    """A GraphModule running ``seg`` on ``device`` over deep copies of its modules."""
    nodes = {n.name: n for n in captured.gm.graph.nodes}
    graph = fx.Graph()
    env: dict[str, fx.Node] = {v: graph.placeholder(v) for v in seg.inputs}
    attrs: dict[str, Any] = {}
    for name in seg.nodes:
        n = nodes[name]
        if n.op in ("call_module", "get_attr"):
            obj = fetch(captured.gm, str(n.target))
            if isinstance(obj, nn.Module):
                obj = copy.deepcopy(obj).to(device).eval()
            elif isinstance(obj, torch.Tensor):
                obj = obj.detach().clone().to(device)
            attrs[str(n.target)] = obj
        env[name] = graph.node_copy(n, lambda a: env[a.name])
    graph.output(tuple(env[v] for v in seg.outputs))
    return fx.GraphModule(attrs, graph, f"DeviceSegment{seg.index}")


__all__ = ["device_segment", "enclave_program"]  # enclave_program: re-exported for existing callers
