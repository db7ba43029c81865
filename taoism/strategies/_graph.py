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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.capture import CAPTURE_KINDS, CapturedGraph, capture
from taoism.capture.trace import trace_fx
from taoism.errors import CaptureError, ConfigError

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


@dataclass(frozen=True)
class CaptureOptions:
    """How a strategy captures the model: as ``shield`` does (same leaf modules and path)."""

    leaf_modules: tuple[str | type[nn.Module], ...] = ()
    capture: str = "auto"
    example_inputs: tuple[torch.Tensor, ...] | None = None  # needed by torch.export only

    @classmethod
    def of(
        cls,
        leaf_modules: Iterable[str | type[nn.Module]] = (),
        capture: str = "auto",
        example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> CaptureOptions:
        """Options from ``shield``-style arguments (validated)."""
        if capture not in CAPTURE_KINDS:
            raise ConfigError(f"capture must be one of {CAPTURE_KINDS}, got {capture!r}")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        return cls(
            tuple(leaf_modules),
            capture,
            tuple(example_inputs) if example_inputs is not None else None,
        )


def trace(
    model: nn.Module, opts: CaptureOptions = CaptureOptions(), strategy: str = ""
) -> fx.GraphModule:
    """fx-trace ``model`` as taoism's capture does (same leaves, ``opts.leaf_modules``).

    Rewriting strategies edit torch.nn layer calls, which only an fx graph has: a model fx
    cannot trace gets a message naming the submodule and the fix.
    """
    what = f"strategy {strategy!r}" if strategy else "this TSDP strategy"
    if opts.capture == "export":
        raise CaptureError(
            f"{what} rewrites the model's conv/linear layer calls, which needs a "
            "torch.fx graph, but capture='export' was asked for; use capture='fx' "
            "(or 'auto'), or a layer-wise strategy (none, all, deep:K, shallow:K), "
            "which works on exported graphs"
        )
    try:
        gm = trace_fx(model, opts.leaf_modules)
    except CaptureError as exc:
        raise CaptureError(
            f"{what} rewrites the model's graph with torch.fx: {exc} (with "
            "leaf_modules the strategy keeps that submodule whole, on the device "
            "unless the strategy places it; layer-wise strategies also work through "
            "capture='export')"
        ) from exc
    return gm.eval()


def captured_graph(model: nn.Module, opts: CaptureOptions) -> CapturedGraph:
    """The model captured as shield will capture it (fx, else torch.export when inputs are given)."""
    if opts.example_inputs is None:
        if opts.capture == "export":
            raise ConfigError(
                "capture='export' needs example inputs; pass example_inputs= to "
                "apply_strategy (shield passes its example input)"
            )
        gm = trace(model, opts)
        return CapturedGraph(
            gm=gm,
            nodes={},
            batch=0,
            input_shapes=(),
            input_dtypes=(),
            kind="fx",
            module_classes={n: type(m) for n, m in model.named_modules()},
        )
    return capture(model, opts.example_inputs, leaf_modules=opts.leaf_modules, capture=opts.capture)


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


def insert_after(
    gm: fx.GraphModule, node: fx.Node, target: str, extra_args: tuple = (), with_input: bool = False
) -> fx.Node:
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
