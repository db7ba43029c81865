"""Rebuild enclave segments from their JSON description and run them (inside the enclave)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from taoism.errors import ProgramError
from taoism.protocol.schema import names as _names
from taoism.protocol.vocabulary import FUNCTIONS, METHODS, MODULE_KINDS, decode_arg, to_dtype


@dataclass
class SegmentProgram:
    """One enclave segment, compiled to a GraphModule over the enclave's private modules."""

    index: int
    inputs: tuple[str, ...]  # every value the segment reads, in call order
    send_in: tuple[str, ...]  # the subset the host sends with each run request
    returns: tuple[str, ...]  # values sent back to the host
    keep: tuple[str, ...]  # values kept in the enclave for later segments
    free: tuple[str, ...]  # enclave values dropped after this segment
    gm: fx.GraphModule
    node_names: tuple[str, ...]
    stateless: bool = field(init=False)
    # stateless, inputs not in send_in order: the send_in position of each input
    input_order: tuple[int, ...] | None = field(init=False)
    replay: fx.GraphModule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Stateless: reads only what the host sends, keeps nothing and drops what it was sent, so
        # a replayed run leaves the enclave's values exactly as it found them (issue 9's lean
        # replay in EnclaveMemory skips binding them).
        self.stateless = (
            not self.keep
            and set(self.inputs) <= set(self.send_in)
            and set(self.send_in) <= set(self.free)
        )
        self.input_order = None
        if self.stateless and self.inputs != self.send_in:
            self.input_order = tuple(self.send_in.index(v) for v in self.inputs)
        self.replay = _direct_calls(self.gm)

    def stateless_args(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """A stateless segment's arguments, in call order, from the tensors the host sent."""
        if self.input_order is None:
            return list(tensors)
        return [tensors[i] for i in self.input_order]

    def run(self, args: Sequence[torch.Tensor]) -> tuple[Any, ...]:
        """Run the compiled segment (its returns, then its kept values).

        Runs :attr:`replay`, whose generated code calls each module's ``forward`` directly: an
        enclave module has no hooks, and the module-call machinery (~1-2 us per call hot, far
        more after a wait) is measurable per crossing (issue 9).
        """
        return self.replay.forward(*args)

    def run_timed(self, args: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], list[float]]:
        """Run node by node, returning outputs and per-node seconds (in ``node_names`` order)."""
        interp = _TimingInterpreter(self.gm)
        out = interp.run(*args)
        return out, [interp.times.get(n, 0.0) for n in self.node_names]


# Parameter-free modules whose forward is one torch call: the replay makes that call itself.
# Exact types only (a subclass may override forward); each entry gives what forward calls.
_FUNCTIONAL: dict[type, Any] = {
    nn.ReLU: lambda m: (torch.relu_ if m.inplace else torch.relu, {}),
    nn.Sigmoid: lambda m: (torch.sigmoid, {}),
    nn.Tanh: lambda m: (torch.tanh, {}),
    nn.GELU: lambda m: (F.gelu, {"approximate": m.approximate}),
}


def _direct_calls(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with each ``call_module`` node turned into what the module's ``forward`` calls.

    A module of :data:`_FUNCTIONAL` becomes its one torch call; any other ``<module>.forward(...)``
    (the same module objects, without the hook machinery of ``Module.__call__``).
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            module = gm.get_submodule(target)
            args = fx.map_arg(node.args, env.__getitem__)
            kwargs = fx.map_arg(node.kwargs, env.__getitem__)
            lower = _FUNCTIONAL.get(type(module))
            if lower is not None and len(args) == 1 and not kwargs:
                fn, extra = lower(module)
                new = graph.call_function(fn, args, extra)
            else:
                new = graph.call_method("forward", (graph.get_attr(target), *args), kwargs)
        else:
            new = graph.node_copy(node, env.__getitem__)
        env[node] = new
    return fx.GraphModule(gm, graph, f"{type(gm).__name__}Replay")


class _TimingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.times: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        t0 = time.perf_counter()
        out = super().run_node(n)
        if n.op not in ("placeholder", "output"):
            self.times[n.name] = time.perf_counter() - t0
        return out


def build_modules(desc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """Instantiate the whitelisted modules of a program description and load their tensors."""
    root = nn.Module()
    mods = desc.get("modules", {})
    if not isinstance(mods, dict):
        raise ProgramError("segment description: 'modules' must be an object")
    for key, spec in mods.items():
        if not key.isidentifier():
            raise ProgramError(f"segment description: module key {key!r} is not an identifier")
        kind = MODULE_KINDS.get(spec.get("type"))
        if kind is None:
            raise ProgramError(
                f"segment description: module type {spec.get('type')!r} is not one the "
                "enclave can run"
            )
        m = kind.build(spec.get("config", {}))
        state = {
            name: tensors[f"{key}.{name}"]
            for name in _names(spec.get("tensors", []), "tensors")
            if f"{key}.{name}" in tensors
        }
        missing, unexpected = m.load_state_dict(state, strict=False)
        if unexpected or set(missing) != set(spec.get("absent", [])):
            raise ProgramError(
                f"segment description: module {key} ({spec.get('type')}) got tensors "
                f"missing={missing} unexpected={unexpected}"
            )
        m.eval()
        root.add_module(key, m)
    consts = desc.get("constants", [])
    for name in _names(consts, "constants"):
        root.register_buffer(name, tensors[name])
    return root


def build_program(desc: Mapping[str, Any], root: nn.Module) -> list[SegmentProgram]:
    """Compile every segment of the description into a GraphModule over ``root``."""
    programs = []
    for seg in desc.get("segments", []):
        graph = fx.Graph()
        env: dict[str, fx.Node] = {}
        inputs = _names(seg["inputs"], "inputs")
        for name in inputs:
            env[name] = graph.placeholder(name)

        def lookup(name: str) -> fx.Node:
            if name not in env:
                raise ProgramError(f"segment {seg.get('id')}: reference to unknown value {name!r}")
            return env[name]

        node_names = []
        for nd in seg["nodes"]:
            name, op = nd["name"], nd["op"]
            args = decode_arg(nd.get("args", []), lookup)
            raw_kwargs = nd.get("kwargs", {})
            if not isinstance(raw_kwargs, dict):
                raise ProgramError(
                    f"segment {seg.get('id')}: node {name}: kwargs must be an object"
                )
            kwargs = {str(k): decode_arg(v, lookup) for k, v in raw_kwargs.items()}
            if op == "call_module":
                if not hasattr(root, nd["module"]):
                    raise ProgramError(
                        f"segment {seg.get('id')}: node {name}: unknown module {nd['module']!r}"
                    )
                n = graph.call_module(nd["module"], tuple(args), kwargs)
            elif op == "call_function":
                fn = FUNCTIONS.get(nd["fn"])
                if fn is None:
                    raise ProgramError(
                        f"segment {seg.get('id')}: node {name}: function {nd['fn']!r} "
                        "is not on the enclave's whitelist"
                    )
                n = graph.call_function(fn, tuple(args), kwargs)
            elif op == "call_method":
                if nd["method"] not in METHODS:
                    raise ProgramError(
                        f"segment {seg.get('id')}: node {name}: method {nd['method']!r} "
                        "is not on the enclave's whitelist"
                    )
                if nd["method"] == "to":  # dtype only, checked when it runs
                    n = graph.call_function(to_dtype, tuple(args), kwargs)
                elif nd["method"] == "view" and not (
                    args[1:2] and isinstance(args[1], torch.dtype)
                ):
                    n = graph.call_method("reshape", tuple(args), kwargs)  # strides may differ here
                else:
                    n = graph.call_method(nd["method"], tuple(args), kwargs)
            elif op == "get_attr":
                if not hasattr(root, nd["tensor"]):
                    raise ProgramError(f"segment {seg.get('id')}: node {name}: unknown constant")
                n = graph.get_attr(nd["tensor"])
            else:
                raise ProgramError(f"segment {seg.get('id')}: node {name}: unknown op {op!r}")
            n.name = name
            env[name] = n
            node_names.append(name)
        returns, keep = _names(seg["returns"], "returns"), _names(seg["keep"], "keep")
        graph.output(tuple(lookup(v) for v in returns + keep))
        gm = fx.GraphModule(root, graph, f"EnclaveSegment{seg['id']}")
        programs.append(
            SegmentProgram(
                index=int(seg["id"]),
                inputs=inputs,
                send_in=_names(seg["send_in"], "send_in"),
                returns=returns,
                keep=keep,
                free=_names(seg["free"], "free"),
                gm=gm,
                node_names=tuple(node_names),
            )
        )
    return programs


def build_meta_modules(
    desc: Mapping[str, Any], tensor_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
) -> nn.Module:
    """As :func:`build_modules`, on the meta device: shapes only, for memory planning."""
    root = nn.Module()
    for key, spec in desc.get("modules", {}).items():
        kind = MODULE_KINDS.get(spec.get("type"))
        if kind is None:
            raise ProgramError(
                f"segment description: module type {spec.get('type')!r} is not one the "
                "enclave can run"
            )
        with torch.device("meta"):
            m = kind.build(spec.get("config", {}))
        for name in spec.get("absent", []):
            if name in m._parameters:
                m._parameters[name] = None
            elif name in m._buffers:
                m._buffers[name] = None
        m.eval()
        root.add_module(key, m)
    for name in _names(desc.get("constants", []), "constants"):
        shape, dtype = tensor_specs[name]
        root.register_buffer(name, torch.empty(shape, dtype=dtype, device="meta"))
    return root
