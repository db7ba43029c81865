"""Graph helpers shared by the rewriting strategies, and the small modules they insert.

Rewrites work on a ``torch.fx`` trace of a deep copy of the model. The device-side modules
stay at their original module paths (so what the host holds maps back to the original
parameter names); every module a strategy adds lives under ``_tsdp.<role>.<mangled path>``
and is placed in the enclave. The inserted modules are traced through by taoism's capture and
use only ops on the enclave's whitelist (``+``, ``*``, indexing), so they need no new enclave
module kinds.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.errors import CaptureError

TSDP_ROOT = "_tsdp"  # top-level attribute holding every module a strategy adds
CONV_TYPES = (nn.Conv1d, nn.Conv2d)
LINEAR_TYPES = CONV_TYPES + (nn.Linear,)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def mangle(path: str) -> str:
    """A module path as one attribute name (``layer1.0.conv1`` -> ``layer1__0__conv1``)."""
    return path.replace(".", "__")


def added_path(role: str, original: str) -> str:
    """Where a strategy puts the enclave-side module ``role`` for original module ``original``."""
    return f"{TSDP_ROOT}.{role}.{mangle(original)}"


def parse_added(module_path: str) -> tuple[str, str] | None:
    """``(role, mangled original path)`` of a module path under ``_tsdp``, else None."""
    parts = module_path.split(".")
    if len(parts) >= 3 and parts[0] == TSDP_ROOT:
        return parts[1], parts[2]
    return None


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode (the caller's model is never touched)."""
    if not isinstance(model, nn.Module):
        raise CaptureError(f"a strategy needs an nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).eval()


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace ``model`` (torch.nn layers are leaves, as in taoism's capture)."""
    tracer = fx.Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types
        raise CaptureError(
            f"a TSDP strategy rewrites the model's graph, but torch.fx could not trace "
            f"{type(model).__name__}: {exc}. Make the forward traceable, or use a placement= "
            "instead of a rewriting strategy") from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return gm.eval()


def module_calls(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, str, nn.Module]]:
    """``(node, path, module)`` for each call_module node, in execution order."""
    for n in gm.graph.nodes:
        if n.op == "call_module":
            yield n, str(n.target), gm.get_submodule(str(n.target))


def first_use_order(gm: fx.GraphModule, types: tuple[type, ...]) -> list[str]:
    """Paths of modules of ``types``, each once, in order of first call."""
    seen: list[str] = []
    for _, path, mod in module_calls(gm):
        if isinstance(mod, types) and path not in seen:
            seen.append(path)
    return seen


def insert_after(gm: fx.GraphModule, node: fx.Node, target: str,
                 extra_args: tuple = (), with_input: bool = False) -> fx.Node:
    """Insert ``call_module(target)`` after ``node`` and route every use of ``node`` through it.

    The new node's args are ``(node.args[0], node)`` when ``with_input`` (the layer's input and
    output), else ``(node, *extra_args)``.
    """
    with gm.graph.inserting_after(node):
        args = (node.args[0], node) if with_input else (node, *extra_args)
        new = gm.graph.call_module(target, args)
    node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    return new


def finish(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


# --- modules inserted by the strategies (run in the enclave, traced through) -------------------
class ShieldedShare(nn.Module):
    """Magnitude: ``public_output + private(x)``; ``private`` holds only the shielded weights."""

    def __init__(self, private: nn.Module) -> None:
        super().__init__()
        self.private = private

    def forward(self, x: torch.Tensor, public_out: torch.Tensor) -> torch.Tensor:
        return public_out + self.private(x)


class Rescale(nn.Module):
    """SOTER: undo a morphed layer's secret scale, ``y * (1 / s)``."""

    def __init__(self, inv_scale: float) -> None:
        super().__init__()
        self.register_buffer("inv_scale", torch.tensor(float(inv_scale), dtype=torch.float32))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.inv_scale


class ChannelSelect(nn.Module):
    """ShadowNet: keep the real output channels of an obfuscated layer, in their order.

    ``index[i]`` is where real channel ``i`` sits in the shuffled output; ``last`` selects on
    the last dimension (Linear) instead of dimension 1 (conv).
    """

    def __init__(self, index: torch.Tensor, last: bool) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.int64).clone())
        self.last = bool(last)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.last:
            return y[..., self.index]
        return y[:, self.index]

    def extra_repr(self) -> str:
        return f"channels={self.index.numel()}, last={self.last}"
