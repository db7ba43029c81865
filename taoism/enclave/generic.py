"""Nodes without a chunked form: what they may need before running, and calling them (or their meta form)."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.enclave.exec.attention import attention_scores_bytes
from taoism.enclave.paged import PagedTensor
from taoism.protocol.vocabulary import FUNCTIONS

Args = Any  # a node's evaluated arguments: values, scalars, nested containers (fx.node.Argument)
MetaState = dict[str, torch.Tensor]

_VIEW_METHODS = frozenset(
    {
        "view",
        "reshape",
        "flatten",
        "squeeze",
        "unsqueeze",
        "permute",
        "transpose",
        "t",
        "expand",
        "contiguous",
        "view_as",
        "reshape_as",
        "expand_as",
        "size",
        "dim",
        "chunk",
        "split",
        "__getitem__",
    }
)
_VIEW_FUNCTIONS = frozenset(
    {
        operator.getitem,
        torch.flatten,
        torch.reshape,
        torch.squeeze,
        torch.unsqueeze,
        torch.transpose,
        torch.permute,
        torch.chunk,
        torch.split,
        FUNCTIONS["getattr"],
        torch._assert,
        *(
            FUNCTIONS[f"aten.{n}"]
            for n in (
                "view.default",
                "reshape.default",
                "permute.default",
                "transpose.int",
                "swapaxes.default",
                "t.default",
                "unsqueeze.default",
                "squeeze.dim",
                "squeeze.dims",
                "expand.default",
                "select.int",
                "slice.Tensor",
                "unbind.int",
                "split.Tensor",
                "split_with_sizes.default",
                "chunk.default",
                "alias.default",
                "detach.default",
                "sym_size.int",
                "sym_numel.default",
                "_assert_tensor_metadata.default",
                "_assert_scalar.default",
                "dropout.default",
            )
        ),
    }
)
# Views that copy a non-contiguous resident input (a permuted tensor reshaped, made contiguous).
_COPYING_METHODS = frozenset({"view", "reshape", "flatten", "contiguous", "view_as", "reshape_as"})
_COPYING_FUNCTIONS = frozenset(
    {
        torch.flatten,
        torch.reshape,
        *(
            FUNCTIONS[f"aten.{n}"]
            for n in (
                "view.default",
                "_unsafe_view.default",
                "reshape.default",
                "flatten.using_ints",
                "contiguous.default",
            )
        ),
    }
)
_ATTENTION = frozenset(
    {
        FUNCTIONS["F.scaled_dot_product_attention"],
        FUNCTIONS["aten.scaled_dot_product_attention.default"],
    }
)


def generic_out_estimate(node: fx.Node, mod: nn.Module | None, args: Args, kwargs: Args) -> int:
    """Bytes a whole-run node's new output may need, before running it (both modes alike).

    Views (reshape, flatten, getitem, ...) need nothing new, except a reshape or flatten of a
    non-contiguous resident input (a copy of it); anything else is assumed to need
    at most as much as all its tensor inputs together (exact for stack/cat, an upper bound for
    reductions, softmax and norms). The real output is charged after the node runs.
    """
    if (node.op == "call_method" and node.target in _COPYING_METHODS) or (
        node.op == "call_function" and node.target in _COPYING_FUNCTIONS
    ):
        return sum(
            v.nbytes
            for v in paged_and_tensors(args, kwargs)[:1]
            if isinstance(v, torch.Tensor) and not v.is_contiguous()
        )
    if (
        (node.op == "call_method" and node.target in _VIEW_METHODS)
        or (node.op == "call_function" and node.target in _VIEW_FUNCTIONS)
        or isinstance(mod, nn.Flatten)
    ):
        return 0
    tensors = paged_and_tensors(args, kwargs)
    est = sum(v.nbytes for v in tensors)
    if (
        isinstance(mod, nn.MultiheadAttention) and tensors
    ):  # (L, N, E) or (N, L, E): scores per head
        q, k = tensors[0], tensors[1] if len(tensors) > 1 else tensors[0]
        b = q.shape[0] if mod.batch_first else (q.shape[1] if len(q.shape) == 3 else 1)
        rows, keys = (
            q.shape[-2] if mod.batch_first else q.shape[0],
            k.shape[-2] if mod.batch_first else k.shape[0],
        )
        est += attention_scores_bytes((b, mod.num_heads), rows, keys, q.itemsize) + 4 * q.nbytes
    elif node.op == "call_function" and node.target in _ATTENTION and len(tensors) >= 2:
        q, k = tensors[0], tensors[1]
        est += attention_scores_bytes(q.shape[:-2], q.shape[-2], k.shape[-2], q.itemsize)
    elif isinstance(mod, nn.Embedding) and tensors:
        est += math.prod(tensors[0].shape) * mod.embedding_dim * mod.weight.element_size()
    return est


def paged_and_tensors(args: Args, kwargs: Args) -> list[torch.Tensor | PagedTensor]:
    """Every tensor and sealed value among a node's arguments, in order (repeats included)."""
    out: list[torch.Tensor | PagedTensor] = []

    def visit(v: object) -> object:
        if isinstance(v, (torch.Tensor, PagedTensor)):
            out.append(v)
        return v

    fx.node.map_aggregate((args, kwargs), visit)
    return out


def paged_inputs(args: Args, kwargs: Args) -> list[PagedTensor]:
    """The distinct sealed values among a node's arguments."""
    out: list[PagedTensor] = []
    for v in paged_and_tensors(args, kwargs):
        if isinstance(v, PagedTensor) and all(v is not o for o in out):
            out.append(v)
    return out


def kind_name(node: fx.Node, mod: nn.Module | None) -> str:
    """A short name of what the node runs (module type, ``.method`` or function name)."""
    if mod is not None:
        return type(mod).__name__
    if node.op == "call_method":
        return f".{node.target}"
    t = node.target
    return getattr(t, "__name__", str(t))


def call_node(node: fx.Node, mod: nn.Module | None, args: Args, kwargs: Args) -> Any:
    """Run the node's op on real tensors (returns whatever the op returns)."""
    if node.op == "call_module":
        assert mod is not None
        return mod(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    self_obj, *rest = args
    return getattr(self_obj, str(node.target))(*rest, **kwargs)


def meta_state(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> MetaState:
    """Meta tensors for a module's parameters and buffers, from their shapes and dtypes."""
    return {k: torch.empty(shape, dtype=dt, device="meta") for k, (shape, dt) in shapes.items()}


def meta_call(
    node: fx.Node, mod: nn.Module | None, args: Args, kwargs: Args, state: MetaState | None
) -> Any:
    """The node's output on meta tensors (shapes and dtypes only); ``state``: the module's."""

    def to_meta(v: object) -> object:
        if isinstance(v, PagedTensor) or (isinstance(v, torch.Tensor) and v.device.type != "meta"):
            return torch.empty(v.shape, dtype=v.dtype, device="meta")
        return v

    margs = fx.node.map_aggregate(args, to_meta)
    mkwargs = fx.node.map_aggregate(kwargs, to_meta)
    if node.op == "call_module":
        assert mod is not None and state is not None
        return torch.func.functional_call(mod, state, margs, mkwargs)  # type: ignore[arg-type]
    if node.target is torch.ops.aten._assert_tensor_metadata.default:
        return None  # it checks the real device, which meta tensors do not have
    return call_node(node, mod, margs, mkwargs)


__all__ = [
    "call_node",
    "generic_out_estimate",
    "kind_name",
    "meta_call",
    "meta_state",
    "paged_inputs",
]
