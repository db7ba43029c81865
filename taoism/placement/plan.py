"""Partition a captured graph into device and enclave segments, with a static transfer schedule."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taoism.capture import CapturedGraph, NodeInfo
from taoism.errors import PlacementError
from taoism.placement.modes import EnclaveMode
from taoism.placement.rules import PlacementRules
from taoism.protocol.vocabulary import function_name

GPU, ENCLAVE, AUTO = EnclaveMode.GPU, EnclaveMode.ENCLAVE, EnclaveMode.AUTO


@dataclass(frozen=True)
class Segment:
    """Consecutive graph nodes on one side, and what crosses the boundary around them.

    For an enclave segment, ``send_in`` are the host values sent with each run, ``returns``
    the values sent back, ``keep`` the values that stay in the enclave for later segments.
    For a device segment, ``send_in``/``returns``/``keep`` are empty.
    """

    index: int
    side: EnclaveMode
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    send_in: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    host_free: tuple[str, ...] = ()  # host values no longer needed after this segment
    enclave_free: tuple[str, ...] = ()  # enclave values no longer needed after this segment

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "side": self.side.value,
            "nodes": list(self.nodes),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "send_in": list(self.send_in),
            "returns": list(self.returns),
            "keep": list(self.keep),
        }


@dataclass(frozen=True)
class LayerPlan:
    """One node's placement and static costs."""

    info: NodeInfo
    requested: EnclaveMode
    placement: EnclaveMode
    segment: int
    crossings_in: int  # tensors crossing into this node's side for it (counted once per value)
    bytes_in: int


@dataclass(frozen=True)
class Plan:
    """The placement of every node, the segments, and the boundary traffic they imply."""

    rules: PlacementRules
    layers: tuple[LayerPlan, ...]
    segments: tuple[Segment, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch: int
    value_bytes: dict[str, int] = field(repr=False)
    duplicated: tuple[str, ...] = ()  # shape nodes computed a second time, in the enclave

    # -- summaries -------------------------------------------------------------------------
    @functools.cached_property
    def enclave_segments(self) -> tuple[Segment, ...]:
        """The segments that run in the enclave, in plan order (computed once: read per inference)."""
        return tuple(s for s in self.segments if s.side is ENCLAVE)

    def crossings(self) -> int:
        """Tensors crossing the boundary per inference (either direction)."""
        return sum(len(s.send_in) + len(s.returns) for s in self.enclave_segments)

    def bytes_crossing(self) -> int:
        """Plaintext bytes crossing the boundary per inference at the example batch size."""
        return sum(
            self.value_bytes.get(v, 0) for s in self.enclave_segments for v in s.send_in + s.returns
        )

    def totals(self) -> dict[str, Any]:
        p_all = sum(l.info.params for l in self.layers)
        f_all = sum(l.info.flops for l in self.layers)
        p_enc = sum(l.info.params for l in self.layers if l.placement is ENCLAVE)
        f_enc = sum(l.info.flops for l in self.layers if l.placement is ENCLAVE)
        return {
            "nodes": len(self.layers),
            "enclave_nodes": sum(l.placement is ENCLAVE for l in self.layers),
            "segments": len(self.segments),
            "enclave_segments": len(self.enclave_segments),
            "params": p_all,
            "params_enclave": p_enc,
            "params_enclave_pct": 100.0 * p_enc / p_all if p_all else 0.0,
            "flops": f_all,
            "flops_enclave": f_enc,
            "flops_enclave_pct": 100.0 * f_enc / f_all if f_all else 0.0,
            "crossings": self.crossings(),
            "bytes_crossing": self.bytes_crossing(),
            "batch": self.batch,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "taoism-plan/1",
            "placement": {
                **{
                    l.info.name: l.placement.value
                    for l in self.layers
                    if l.info.name not in self.duplicated
                },
                "_default": self.rules.default.value,
            },
            "rules": self.rules.to_json(),
            "totals": self.totals(),
            "layers": [
                {
                    **l.info.to_json(),
                    "requested": l.requested.value,
                    "placement": l.placement.value,
                    "segment": l.segment,
                    "crossings_in": l.crossings_in,
                    "bytes_in": l.bytes_in,
                }
                for l in self.layers
            ],
            "segments": [s.to_json() for s in self.segments],
        }

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON; pass the file back as ``placement=`` to reuse it."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    def table(self) -> str:
        head = (
            f"{'#':>3} {'node':<28} {'type':<18} {'place':<7} {'seg':>3} {'params':>10} "
            f"{'MFLOPs':>9} {'out KiB':>9} {'cross':>5}"
        )
        rows = [head, "-" * len(head)]
        for i, l in enumerate(self.layers):
            kind = l.info.module_type or l.info.target.rsplit(".", 1)[-1]
            rows.append(
                f"{i:>3} {l.info.name[:28]:<28} {kind[:18]:<18} {l.placement.value:<7} "
                f"{l.segment:>3} {l.info.params:>10,} {l.info.flops / 1e6:>9.2f} "
                f"{l.info.out_bytes / 1024:>9.1f} {l.crossings_in:>5}"
            )
        t = self.totals()
        rows.append("-" * len(head))
        rows.append(
            f"segments {t['segments']} ({t['enclave_segments']} in the enclave); "
            f"params in enclave {t['params_enclave']:,}/{t['params']:,} "
            f"({t['params_enclave_pct']:.2f}%); FLOPs in enclave {t['flops_enclave_pct']:.2f}%; "
            f"{t['crossings']} tensor crossings, {t['bytes_crossing'] / 1024:.1f} KiB "
            f"per inference at batch {t['batch']}"
        )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def _resolve_modes(captured: CapturedGraph, raw: dict[str, EnclaveMode]) -> dict[str, EnclaveMode]:
    """Resolve AUTO (run where the inputs are) and keep non-tensor values with their users."""
    nodes = list(captured.gm.graph.nodes)
    home: dict[str, EnclaveMode] = {n.name: GPU for n in nodes if n.op == "placeholder"}
    out: dict[str, EnclaveMode] = {}
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        mode = raw[n.name]
        if mode is AUTO:
            if n.op == "get_attr":
                mode = AUTO  # decided by its users below
            else:
                ins = [home.get(a.name, GPU) for a in n.all_input_nodes if a.op != "get_attr"]
                mode = ENCLAVE if ENCLAVE in ins else GPU
        out[n.name] = mode
        home[n.name] = mode
    # get_attr under AUTO: in the enclave unless a device node reads it (then it is exposed anyway).
    for n in nodes:
        if n.op == "get_attr" and out.get(n.name) is AUTO:
            out[n.name] = GPU if any(out.get(u.name) is GPU for u in n.users) else ENCLAVE
    # Values that are not a single tensor (sizes, tuples) cannot cross: run their consumers'
    # side. Walk backwards so chains (size -> getitem -> view) follow the final consumer.
    infos = captured.nodes
    for n in reversed(nodes):
        if n.op in ("placeholder", "output") or infos[n.name].value_kind == "tensor":
            continue
        sides = {out[u.name] for u in n.users if u.op != "output"}
        if infos[n.name].value_kind == "tensors" and n.op != "get_attr":
            # tuple-producing node: its getitem users follow it instead (handled below)
            continue
        if len(sides) == 1:
            out[n.name] = sides.pop()
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        if infos[n.name].value_kind == "tensors":
            for u in n.users:
                if u.op != "output":
                    out[u.name] = out[n.name]
    return out


_KIND_WORDS = {
    "tensor": "a tensor",
    "tensors": "a tuple of tensors",
    "other": "a non-tensor value (a size, an int or another Python object)",
}


def _kind(info: NodeInfo) -> str:
    return _KIND_WORDS.get(info.value_kind, info.value_kind)


def _split_shape_values(
    captured: CapturedGraph, raw: dict[str, EnclaveMode], modes: dict[str, EnclaveMode]
) -> list[str]:
    """Give every non-tensor value (a size, a shape int) the side of its users; one with users on
    both sides is computed on each side (the node is duplicated), so it never crosses.

    Duplicates are added to ``captured``'s graph and node table (named ``<node>_enclave``);
    returns their names.
    """
    graph = captured.gm.graph
    twins: list[str] = []
    for n in reversed(list(graph.nodes)):
        info = captured.nodes.get(n.name)
        if (
            info is None
            or n.op in ("placeholder", "output", "get_attr")
            or info.value_kind != "other"
        ):
            continue
        sides = {modes[u.name] for u in n.users if u.op != "output"}
        if len(sides) == 1:
            modes[n.name] = sides.pop()
        elif len(sides) == 2:
            order = {m: i for i, m in enumerate(graph.nodes)}
            inside = sorted(
                (u for u in n.users if u.op != "output" and modes[u.name] is ENCLAVE),
                key=order.__getitem__,
            )
            with graph.inserting_before(inside[0]):  # next to its users: no extra segment
                twin = graph.node_copy(n)
            twin._rename(f"{n.name}_enclave")
            twin.meta = dict(n.meta)
            for u in inside:
                u.replace_input_with(n, twin)
            modes[n.name], modes[twin.name] = GPU, ENCLAVE
            raw[twin.name] = raw[n.name]
            captured.nodes[twin.name] = dataclasses.replace(info, name=twin.name)
            twins.append(twin.name)
    captured.gm.recompile()
    return twins


def _check_shape_exposure(captured: CapturedGraph, modes: dict[str, EnclaveMode]) -> None:
    """Refuse a plan that would send an enclave tensor to the host only for its shape."""
    infos = captured.nodes
    for n in captured.gm.graph.nodes:
        if (
            modes.get(n.name) is not ENCLAVE
            or infos[n.name].value_kind != "tensor"
            or any(u.op == "output" for u in n.users)
        ):
            continue
        outside = [u for u in n.users if modes.get(u.name) is GPU]
        if outside and all(infos[u.name].value_kind == "other" for u in outside):
            raise PlacementError(
                f"device node {outside[0].name!r} reads only the shape of enclave tensor {n.name!r}, "
                f"but computing it on the device would send {n.name!r} to the host; place "
                f"{outside[0].name!r}'s users in the enclave, or pass the size from a device "
                f"tensor (e.g. the model input) instead"
            )


def _check_enclave_ops(captured: CapturedGraph, modes: dict[str, EnclaveMode]) -> None:
    """Refuse ops of an exported graph placed in the enclave that are not on its whitelist
    (:data:`taoism.protocol.vocabulary.ATEN_OPS`). Names the op, the node and the way around."""
    if captured.kind != "export":
        return
    bad = [
        n
        for n in captured.gm.graph.nodes
        if n.op == "call_function"
        and modes.get(n.name) is ENCLAVE
        and function_name(n.target) is None
    ]
    if not bad:
        return
    first = captured.nodes[bad[0].name]
    ops = sorted({captured.nodes[n.name].target for n in bad})
    where = f" in module {first.module_path!r}" if first.module_path else ""
    fix_key = first.module_path or first.name
    raise PlacementError(
        f"node {first.name!r}{where} calls {'ATen op' if first.target.startswith('aten.') else 'op'} "
        f"{first.target!r}, which the enclave does not run (it is not on the enclave's op whitelist, "
        f"taoism.protocol.vocabulary.ATEN_OPS). This placement puts {len(bad)} such node(s) in the "
        f"enclave, using {len(ops)} op(s): {', '.join(ops[:12])}{' ...' if len(ops) > 12 else ''}. "
        f"Work around: place these nodes on the device (e.g. {{{fix_key!r}: 'GPU'}}), or "
        f"capture='fx' (with leaf_modules=[...] for the submodule fx cannot trace) if its layers "
        f"are ones the enclave rebuilds"
    )


def build_plan(captured: CapturedGraph, rules: PlacementRules) -> Plan:
    """Assign every node, cut consecutive same-side nodes into segments, schedule transfers."""
    raw = rules.assign(captured)
    modes = _resolve_modes(captured, raw)
    twins = _split_shape_values(captured, raw, modes)
    _check_shape_exposure(captured, modes)
    _check_enclave_ops(captured, modes)
    graph_nodes = list(captured.gm.graph.nodes)
    compute = [n for n in graph_nodes if n.op not in ("placeholder", "output")]
    inputs = tuple(n.name for n in graph_nodes if n.op == "placeholder")
    out_node = next(n for n in graph_nodes if n.op == "output")
    outputs = tuple(a.name for a in out_node.all_input_nodes)
    infos = captured.nodes

    groups: list[list[Any]] = []
    for n in compute:
        if groups and modes[groups[-1][-1].name] is modes[n.name]:
            groups[-1].append(n)
        else:
            groups.append([n])

    seg_of = {n.name: i for i, g in enumerate(groups) for n in g}
    side_of = {i: modes[g[0].name] for i, g in enumerate(groups)}
    # Users of each value, by segment index (the output node counts as a device use at the end).
    end = len(groups)
    uses: dict[str, set[int]] = {}
    for n in graph_nodes:
        for a in n.all_input_nodes:
            uses.setdefault(a.name, set()).add(end if n.op == "output" else seg_of[n.name])

    def users_on(v: str, side: EnclaveMode, after: int) -> list[int]:
        return [s for s in uses.get(v, ()) if s > after and (side_of.get(s, GPU) is side)]

    on_host = set(inputs)
    in_enclave: set[str] = set()
    segments: list[Segment] = []
    crossings: dict[str, tuple[int, int]] = {}
    for i, g in enumerate(groups):
        names = [n.name for n in g]
        inside = set(names)
        seg_inputs: list[str] = []
        for n in g:
            for a in n.all_input_nodes:
                if a.name not in inside and a.name not in seg_inputs:
                    seg_inputs.append(a.name)
        seg_outputs = [v for v in names if any(s > i for s in uses.get(v, ()))]
        side = side_of[i]
        if side is ENCLAVE:
            send_in = [v for v in seg_inputs if v not in in_enclave]
            for v in send_in:
                if infos[v].value_kind != "tensor":
                    raise PlacementError(
                        f"node {v!r} produces {_kind(infos[v])}, which cannot cross into "
                        f"the enclave for segment {i}; place {v!r} in the enclave too "
                        f"(placement={{{v!r}: 'ENCLAVE'}}) or its users on the device"
                    )
            in_enclave.update(send_in)
            returns = [v for v in seg_outputs if users_on(v, GPU, i) or (end in uses.get(v, ()))]
            keep = [v for v in seg_outputs if users_on(v, ENCLAVE, i)]
            for v in returns:
                if infos[v].value_kind != "tensor":
                    raise PlacementError(
                        f"node {v!r} in the enclave produces {_kind(infos[v])} that the "
                        f"device needs; place its users in the enclave too, or {v!r} on the device"
                    )
            on_host.update(returns)
            in_enclave.update(keep)
            for v in send_in:
                node = next(n for n in g if any(a.name == v for a in n.all_input_nodes))
                crossings[node.name] = (
                    crossings.get(node.name, (0, 0))[0] + 1,
                    crossings.get(node.name, (0, 0))[1] + infos[v].out_bytes,
                )
            segments.append(
                Segment(
                    i,
                    side,
                    tuple(names),
                    tuple(seg_inputs),
                    tuple(seg_outputs),
                    tuple(send_in),
                    tuple(returns),
                    tuple(keep),
                )
            )
        else:
            missing = [v for v in seg_inputs if v not in on_host]
            if missing:  # pragma: no cover - guaranteed by the returns rule above
                raise PlacementError(
                    f"internal: device segment {i} needs {missing} not on the host"
                )
            for n in g:
                for a in n.all_input_nodes:
                    if seg_of.get(a.name) is not None and side_of[seg_of[a.name]] is ENCLAVE:
                        crossings[n.name] = (
                            crossings.get(n.name, (0, 0))[0] + 1,
                            crossings.get(n.name, (0, 0))[1] + infos[a.name].out_bytes,
                        )
            on_host.update(seg_outputs)
            segments.append(Segment(i, side, tuple(names), tuple(seg_inputs), tuple(seg_outputs)))
    segments = _with_free_lists(segments, outputs)
    layers = tuple(
        LayerPlan(
            info=infos[n.name],
            requested=raw[n.name],
            placement=modes[n.name],
            segment=seg_of[n.name],
            crossings_in=crossings.get(n.name, (0, 0))[0],
            bytes_in=crossings.get(n.name, (0, 0))[1],
        )
        for n in compute
    )
    return Plan(
        rules=rules,
        layers=layers,
        segments=tuple(segments),
        input_names=inputs,
        output_names=outputs,
        batch=captured.batch,
        value_bytes={k: v.out_bytes for k, v in infos.items()},
        duplicated=tuple(twins),
    )


def _with_free_lists(segments: list[Segment], outputs: tuple[str, ...]) -> list[Segment]:
    """Attach, per segment, the values each side no longer needs after it."""
    host_last: dict[str, int] = {}
    enc_last: dict[str, int] = {}
    for s in segments:
        if s.side is ENCLAVE:
            for v in s.send_in:
                host_last[v] = s.index
            for v in s.inputs + s.keep:
                enc_last[v] = s.index
            for v in s.returns:
                host_last.setdefault(v, s.index)
        else:
            for v in s.inputs + s.outputs:
                host_last[v] = s.index
    out = []
    for s in segments:
        host_free = tuple(
            v for v, last in host_last.items() if last == s.index and v not in outputs
        )
        enc_free = tuple(v for v, last in enc_last.items() if last == s.index)
        out.append(
            Segment(
                s.index,
                s.side,
                s.nodes,
                s.inputs,
                s.outputs,
                s.send_in,
                s.returns,
                s.keep,
                host_free,
                enc_free,
            )
        )
    return out
