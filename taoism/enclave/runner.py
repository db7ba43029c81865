"""The budgeted segment runner: runs an enclave segment node by node within the memory budget.

Each node runs whole when it fits, else chunked (:mod:`taoism.enclave.exec`); values and, as a
last resort, weights are sealed (evicted) farthest-next-use first when a layer needs room. With
a meta context the same code plans memory without computing anything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from taoism.enclave.eviction import NEVER, Choice, Evictable, NextUse, best_choice
from taoism.enclave.exec.base import ExecContext, Executor, Operand, Sink
from taoism.enclave.exec.select import executor_for
from taoism.enclave.generic import (
    Args,
    MetaState,
    call_node,
    generic_out_estimate,
    kind_name,
    meta_call,
    meta_state,
    paged_inputs,
)
from taoism.enclave.memory import NodeMemory, ResidentValues
from taoism.enclave.paged import PagedTensor
from taoism.enclave.program import SegmentProgram
from taoism.enclave.weights import WeightStore
from taoism.errors import MemoryBudgetError

Value = Any  # what a graph node produced: a tensor, a PagedTensor, or any fx value (sizes, tuples)
_MISSING = object()


@dataclass
class _SegmentInfo:
    """A segment's nodes and value lifetimes, computed once per program."""

    prog: SegmentProgram
    nodes: list[fx.Node]
    uses: dict[str, list[int]]  # value name -> sorted node positions (the end counts as len(nodes))
    keep_ret: set[str]
    dead: list[list[str]]  # values to drop after each node


class BudgetedRunner:
    """Runs enclave segments node by node within the budget (or meta: plans them)."""

    def __init__(
        self, ctx: ExecContext, values: ResidentValues, weights: WeightStore, env: dict[str, Value]
    ) -> None:
        self.ctx = ctx
        self.values = values
        self.weights = weights
        self.env = env
        self._paged_refs: dict[int, int] = {}
        self._meta_states: dict[str, MetaState] = {}
        self._choices: dict[tuple[object, ...], Choice | None] = {}
        self._prog_info: dict[int, _SegmentInfo] = {}
        self.arrival_overflow = 0

    # -- env bookkeeping -------------------------------------------------------------------
    def bind(self, name: str, value: Any, *, strict: bool = True) -> None:
        """Hold ``value`` (a node's output: any fx value) as ``name``, charging it to the budget."""
        old = self.env.get(name, _MISSING)
        if old is not _MISSING:
            self.unbind(name)
        self.env[name] = value
        if isinstance(value, PagedTensor):
            self._paged_refs[id(value)] = self._paged_refs.get(id(value), 0) + 1
        else:
            if strict:
                self.values.add(name, value)
            else:
                acct = self.ctx.acct
                s = acct.strict
                acct.strict = False
                try:
                    self.values.add(name, value)
                finally:
                    acct.strict = s

    def unbind(self, name: str) -> None:
        """Drop ``name``, releasing its bytes (and its sealed pages once nothing else holds them)."""
        v = self.env.pop(name, _MISSING)
        if v is _MISSING:
            return
        if isinstance(v, PagedTensor):
            k = id(v)
            self._paged_refs[k] -= 1
            if self._paged_refs[k] == 0:
                del self._paged_refs[k]
                v.free()
        else:
            self.values.drop(name)

    def clear(self) -> None:
        """Drop every held value (a new inference starts)."""
        for name in list(self.env):
            self.unbind(name)

    # -- eviction --------------------------------------------------------------------------
    def _seal_value(self, name: str) -> None:
        v = self.env[name]
        group = [name] + sorted(self.values.sharers(name))
        for g in group:
            t = self.env[g]
            if isinstance(t, torch.Tensor):
                pt = PagedTensor.seal_tensor(f"a:{g}", t, self.ctx.sealer, self.ctx.page_bytes)
                self.values.drop(g)
                self.env[g] = pt
                self._paged_refs[id(pt)] = 1
        del v

    def _evictables(
        self,
        protect: set[str],
        next_use: NextUse | Mapping[str, int],
        weights_in_use: set[str],
        allow_weights: bool,
    ) -> list[Evictable]:
        out = []
        seen: set[str] = set()
        for name in self.values.names():
            if name in protect or name in seen or not isinstance(self.env.get(name), torch.Tensor):
                continue
            group = {name} | self.values.sharers(name)
            if group & protect:
                continue
            seen |= group
            nb = sum(self.values.bytes_of(g) for g in group) or self.values.bytes_of(name)
            if nb <= 0:
                continue
            out.append((next_use.get(name, NEVER), Evictable(name, nb, 2 * nb)))
        out.sort(key=lambda t: (-t[0], -t[1].nbytes, t[1].name))
        ev = [e for _, e in out]
        if allow_weights:
            ws = [k for k in self.weights.sealable() if k not in weights_in_use]
            ws.sort(key=lambda k: (-self.weights.module_bytes(k), k))
            ev += [
                Evictable(k, self.weights.module_bytes(k), 4 * self.weights.module_bytes(k), True)
                for k in ws
            ]
        return ev

    def _evict(self, ev: Sequence[Evictable], nm: NodeMemory) -> None:
        for e in ev:
            if e.weight:
                self.weights.seal_module(e.name)
                nm.evicted.append(f"weights:{e.name}")
            elif e.name in self.env and isinstance(self.env[e.name], torch.Tensor):
                self._seal_value(e.name)
                nm.evicted.append(e.name)

    def make_room(
        self,
        need: int,
        protect: set[str],
        next_use: NextUse | Mapping[str, int],
        weights_in_use: set[str],
        nm: NodeMemory,
        partial: bool = False,
    ) -> bool:
        """Evict (seal) values, then weights, until ``need`` bytes are free.

        Without ``partial``, nothing is evicted unless that reaches ``need``.
        """
        acct = self.ctx.acct
        need += self.ctx.reserve
        if acct.free_bytes() >= need:
            return True
        evs = self._evictables(protect, next_use, weights_in_use, True)
        chosen, freed = [], 0
        for e in evs:
            if acct.free_bytes() + freed >= need:
                break
            chosen.append(e)
            freed += e.nbytes
        if acct.free_bytes() + freed < need and not partial:
            return False
        self._evict(chosen, nm)
        return acct.free_bytes() >= need

    # -- one segment -----------------------------------------------------------------------
    def run_segment(
        self,
        prog: SegmentProgram,
        inputs: Sequence[torch.Tensor],
        report_nodes: list[NodeMemory],
        times: list[float] | None = None,
    ) -> list[torch.Tensor]:
        """Bind the segment's host inputs, run its nodes, and return its ``returns`` resident."""
        env, acct = self.env, self.ctx.acct
        info = self._prog_info.get(id(prog))
        if info is None:
            nodes = [n for n in prog.gm.graph.nodes if n.op not in ("placeholder", "output")]
            out_node = next(n for n in prog.gm.graph.nodes if n.op == "output")
            # uses: value name -> sorted node positions (the end counts as len(nodes))
            uses: dict[str, list[int]] = {}
            for i, n in enumerate(nodes):
                for a in n.all_input_nodes:
                    uses.setdefault(a.name, []).append(i)
            for a in out_node.all_input_nodes:
                uses.setdefault(a.name, []).append(len(nodes))
            keep_ret = set(prog.keep) | set(prog.returns)
            free_inputs = set(prog.free)
            dead: list[list[str]] = [[] for _ in nodes]  # values to drop after each node
            last = {k: v[-1] for k, v in uses.items()}
            for i, n in enumerate(nodes):
                for a in n.all_input_nodes:
                    if (
                        last.get(a.name) == i
                        and a.name not in keep_ret
                        and (a.name in free_inputs or a.name not in prog.inputs)
                    ):
                        dead[i].append(a.name)
                if n.name not in uses and n.name not in keep_ret:
                    dead[i].append(n.name)
            info = self._prog_info[id(prog)] = _SegmentInfo(prog, nodes, uses, keep_ret, dead)
        nodes, uses, keep_ret, dead = info.nodes, info.uses, info.keep_ret, info.dead
        for v, t in zip(prog.send_in, inputs):
            self.bind(v, t, strict=False)
        arrived = sum(t.nbytes for t in inputs)
        if isinstance(inputs, list):
            inputs.clear()  # the env holds them now, and drops each after its last use
        if acct.budget is not None and acct.total > acct.budget:
            over = acct.total - acct.budget
            self.arrival_overflow = max(self.arrival_overflow, over)
            nm = NodeMemory(f"<arrival seg {prog.index}>", kind="boundary", mode="evict")
            acct.begin_node(nm)
            strict, acct.strict = acct.strict, False
            try:
                self.make_room(
                    0, set(), NextUse(uses, -1, keep_ret, len(nodes)), set(), nm, partial=True
                )
            finally:
                acct.strict = strict
                acct.end_node()
            report_nodes.append(nm)
            if acct.total > acct.budget:
                raise MemoryBudgetError(
                    f"segment {prog.index}: the inputs received from the host "
                    f"({arrived:,} bytes) do not fit the enclave memory "
                    f"budget of {acct.budget:,} bytes next to what must stay resident "
                    f"({acct.current}), even after sealing everything that can be sealed"
                )
        for i, node in enumerate(nodes):
            t0 = time.perf_counter()
            nm = NodeMemory(node.name)
            acct.begin_node(nm)
            try:
                self._run_node(node, i, uses, keep_ret, len(nodes), nm)
            finally:
                acct.end_node()
            for v in dead[i]:  # free what is dead after this node
                self.unbind(v)
            report_nodes.append(nm)
            if times is not None:
                times.append(time.perf_counter() - t0)
        # returns must be resident to cross the boundary
        nm = NodeMemory(f"<returns seg {prog.index}>", kind="boundary", mode="whole")
        acct.begin_node(nm)
        outs = []
        try:
            for v in prog.returns:
                val = env[v]
                if isinstance(val, PagedTensor):
                    need = val.nbytes + val.max_block_bytes
                    if not self.make_room(need, set(prog.returns), {}, set(), nm):
                        raise MemoryBudgetError(
                            f"segment {prog.index} returns {v!r} ({val.nbytes:,} bytes) to the host, "
                            f"but it does not fit the enclave budget of {acct.budget:,} bytes; the "
                            "boundary sends whole tensors. Place the node that produces it on the "
                            "device or raise the budget"
                        )
                    t = Operand(val).read(Operand(val).full(), self.ctx)[0]
                    acct.free("activations", t.nbytes)
                    self.unbind(v)
                    self.bind(v, t)
                outs.append(env[v])
        finally:
            acct.end_node()
        report_nodes.append(nm)
        for v in prog.returns:
            if v not in prog.keep:
                self.unbind(v)  # handed to the boundary
        for v in prog.free:
            if v not in prog.keep:
                self.unbind(v)
        return outs

    # -- one node --------------------------------------------------------------------------
    def _lookup(self, n: fx.Node) -> Value:
        return self.env[n.name]

    def _run_node(
        self,
        node: fx.Node,
        i: int,
        uses: Mapping[str, list[int]],
        keep_ret: set[str],
        end: int,
        nm: NodeMemory,
    ) -> None:
        env = self.env
        args = fx.node.map_arg(node.args, self._lookup)
        kwargs = fx.node.map_arg(node.kwargs, self._lookup)
        if node.op == "get_attr":
            nm.kind, nm.mode = "constant", "alias"
            self.bind(node.name, getattr(self.weights.root, node.target))
            return
        mod = self.weights.modules.get(node.target) if node.op == "call_module" else None
        # aliases: identity, dropout in eval
        if (
            (mod is not None and (isinstance(mod, (nn.Identity, nn.Dropout))))
            or (
                node.op == "call_function"
                and node.target is F.dropout
                and (kwargs.get("training", args[2] if len(args) > 2 else True) is False)
            )
            or (
                node.op == "call_function"
                and node.target is torch.ops.aten.dropout.default
                and (kwargs.get("train", args[2] if len(args) > 2 else True) is False)
            )
        ):
            nm.kind, nm.mode = "identity", "alias"
            v = args[0]
            env[node.name] = v
            if isinstance(v, PagedTensor):
                self._paged_refs[id(v)] += 1
            else:
                self.values.add(node.name, v)
            return
        next_use = NextUse(uses, i, keep_ret, end)
        protect = {a.name for a in node.all_input_nodes}
        w_in_use = {node.target} if mod is not None else set()
        ex = executor_for(node, mod, args, kwargs, self.weights.get)
        if ex is None:
            self._run_generic(node, mod, args, kwargs, protect, next_use, w_in_use, nm)
            return
        nm.kind = ex.kind
        choice = self._choose(ex, protect, next_use, w_in_use)
        if choice is None:
            # last resort: seal this node's own resident inputs and weights, then retry
            for a in node.all_input_nodes:
                if (
                    isinstance(env.get(a.name), torch.Tensor)
                    and not self.values.sharers(a.name)
                    and self.values.bytes_of(a.name) > 0
                ):
                    self._seal_value(a.name)
                    nm.evicted.append(a.name)
            if mod is not None and node.target in self.weights.sealable():
                self.weights.seal_module(node.target)
                nm.evicted.append(f"weights:{node.target}")
            args = fx.node.map_arg(node.args, self._lookup)
            kwargs = fx.node.map_arg(node.kwargs, self._lookup)
            ex = executor_for(node, mod, args, kwargs, self.weights.get)
            assert ex is not None
            choice = self._choose(ex, set(), next_use, w_in_use)
            if choice is None:
                self._refuse(node.name, ex, nm)
        plan = choice.plan
        if choice.evict:
            self._evict(choice.evict, nm)
            replanned = ex.plan(self.ctx.acct.free_bytes() - self.ctx.reserve, choice.out_sealed)
            assert replanned is not None
            plan = replanned
        sink = Sink(self.ctx, node.name, ex.out_shape, ex.out_dtype, plan.grid, plan.out_sealed)
        try:
            ex.run(plan, sink, self.ctx)
        finally:
            out, charged = sink.result()
            self.ctx.acct.free("activations", charged)
        nm.mode = "chunked" if plan.chunks > 1 else "whole"
        nm.chunks = plan.chunks
        nm.grid = plan.describe()
        nm.out_sealed = plan.out_sealed
        self.bind(node.name, out)

    def _choose(
        self,
        ex: Executor,
        protect: set[str],
        next_use: NextUse | Mapping[str, int],
        w_in_use: set[str],
    ) -> Choice | None:
        """The cached best choice for ``ex`` given what is resident now."""
        free0 = self.ctx.acct.free_bytes() - self.ctx.reserve
        first = ex.plan(free0, False)
        if first is not None and first.chunks == 1:
            return Choice((), False, first)  # fits whole: nothing to decide
        evs = self._evictables(protect, next_use, w_in_use, True)
        key = (
            id(ex.__class__),
            ex.out_shape,
            free0,
            tuple((o.shape, o.paged, o.block) for o in ex.operands()),
            tuple((e.name, e.nbytes) for e in evs),
        )
        hit = self._choices.get(key)
        if hit is not None:
            return hit
        res = best_choice(ex, evs, free0)
        if len(self._choices) > 4096:
            self._choices.clear()
        self._choices[key] = res
        return res

    def _refuse(self, name: str, ex: Executor, nm: NodeMemory) -> None:
        acct = self.ctx.acct
        need = ex.min_cost()
        base = acct.total
        raise MemoryBudgetError(
            f"layer {name!r} ({ex.kind}) cannot run within the enclave memory budget of "
            f"{acct.budget:,} bytes even at its smallest chunk: it needs {need:,} bytes for one "
            f"chunk on top of {base:,} bytes that must stay resident ({acct.current}), "
            f"{need + base:,} bytes in all. Raise the budget (EnclaveConfig.memory_budget / tee=) "
            "or place this layer on the device"
        )

    def _run_generic(
        self,
        node: fx.Node,
        mod: nn.Module | None,
        args: Args,
        kwargs: Args,
        protect: set[str],
        next_use: NextUse,
        w_in_use: set[str],
        nm: NodeMemory,
    ) -> None:
        """Run a node whole: unseal its sealed inputs, call it, register its output."""
        acct = self.ctx.acct
        nm.kind = kind_name(node, mod)
        nm.mode = "generic"
        paged = paged_inputs(args, kwargs)
        out_b = generic_out_estimate(node, mod, args, kwargs)
        sealed_w = self.weights.sealed.get(str(node.target)) if mod is not None else None
        w_need = sum(p.nbytes + p.max_block_bytes for p in sealed_w.values()) if sealed_w else 0
        need = sum(p.nbytes + p.max_block_bytes for p in paged) + out_b + w_need
        if not self.make_room(need, protect, next_use, w_in_use, nm):
            raise MemoryBudgetError(
                f"layer {node.name!r} ({nm.kind}) runs whole (no chunked form) and needs "
                f"{need:,} bytes for its inputs and output on top of {acct.total:,} bytes that must "
                f"stay resident, over the enclave memory budget of {acct.budget:,} bytes. Raise the "
                "budget or place this layer on the device"
            )
        temps: list[str] = []
        if paged:
            repl: dict[int, torch.Tensor] = {}
            for j, p in enumerate(paged):
                t, n = Operand(p).read(Operand(p).full(), self.ctx)
                acct.free("activations", n)
                tname = f"~{node.name}.{j}"
                self.values.add(tname, t)
                temps.append(tname)
                repl[id(p)] = t
            args = fx.node.map_aggregate(
                args, lambda v: repl.get(id(v), v) if isinstance(v, PagedTensor) else v
            )
            kwargs = fx.node.map_aggregate(
                kwargs, lambda v: repl.get(id(v), v) if isinstance(v, PagedTensor) else v
            )
        if self.ctx.meta:
            state = self._meta_state(str(node.target), mod) if mod is not None else None
            out = meta_call(node, mod, args, kwargs, state)
        elif mod is not None and sealed_w:
            with self.weights.unsealed(str(node.target)):
                out = call_node(node, mod, args, kwargs)
        else:
            out = call_node(node, mod, args, kwargs)
        self.bind(node.name, out)
        for t in temps:
            self.values.drop(t)

    def _meta_state(self, key: str, mod: nn.Module) -> MetaState:
        st = self._meta_states.get(key)
        if st is None:
            shapes = self.weights.shapes.get(key)
            if shapes is None:
                shapes = {
                    k: (tuple(v.shape), v.dtype)
                    for k, v in list(mod.named_parameters()) + list(mod.named_buffers())
                }
            st = self._meta_states[key] = meta_state(shapes)
        return st


__all__ = ["BudgetedRunner"]
