"""Which chunked executor runs a graph node: three tables (module types, functions, methods).

Each table maps what a node calls to a builder that checks the node's arguments and returns an
executor, or None when the node has no chunked form and runs whole. Output shapes are computed
from the layer's own parameters (no meta tensors: importing torch's meta kernels costs seconds,
and the enclave must not pay that on a first run).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from taoism.enclave.exec.attention import AttentionExecutor
from taoism.enclave.exec.base import Executor, Operand
from taoism.enclave.exec.conv import ConvExecutor, conv_shape
from taoism.enclave.exec.elementwise import BatchNormExecutor, BinaryExecutor, UnaryExecutor
from taoism.enclave.exec.embedding import EmbeddingExecutor
from taoism.enclave.exec.linear import LinearExecutor
from taoism.enclave.exec.matmul import MatmulExecutor, matmul_shape
from taoism.enclave.exec.norm import LayerNormExecutor
from taoism.enclave.exec.pooling import (
    AdaptivePoolExecutor,
    PoolExecutor,
    adaptive_shape,
    pool_shape,
)
from taoism.enclave.exec.shape import CatExecutor, FlattenExecutor
from taoism.enclave.paged import PagedTensor

Value = torch.Tensor | PagedTensor
WeightLookup = Callable[[str, str], Value | None]  # (module key, tensor name) -> its tensor
Args = tuple[Any, ...]  # a node's evaluated arguments: values, scalars, nested containers
Kwargs = Mapping[str, Any]
ModuleBuilder = Callable[[nn.Module, str, Operand, WeightLookup], Executor | None]
FunctionBuilder = Callable[[fx.Node, Args, Kwargs], Executor | None]
MethodBuilder = Callable[[str, Args, Kwargs], Executor | None]

UNARY_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
)
_INPLACE = {operator.iadd: operator.add, operator.imul: operator.mul}
_A = torch.ops.aten


def is_value(v: object) -> bool:
    """True for a graph value the executors read: a resident tensor or a sealed PagedTensor."""
    return isinstance(v, (torch.Tensor, PagedTensor))


# -- modules -----------------------------------------------------------------------------------


def _conv_module(mod: nn.Module, key: str, x: Operand, weights: WeightLookup) -> Executor | None:
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d))
    nd = 2 if isinstance(mod, nn.Conv2d) else 1
    w = Operand(weights(key, "weight"))
    if len(x.shape) != nd + 2 or not x.dtype.is_floating_point or w.dtype != x.dtype:
        return None
    bv = weights(key, "bias")
    shape = conv_shape(x.shape, w.shape, mod.stride, mod.padding, mod.dilation)
    return ConvExecutor(
        x,
        w,
        Operand(bv) if bv is not None else None,
        mod.stride,
        mod.padding,
        mod.dilation,
        mod.groups,
        mod.padding_mode,
        shape,
        x.dtype,
    )


def _linear_module(mod: nn.Module, key: str, x: Operand, weights: WeightLookup) -> Executor | None:
    w = Operand(weights(key, "weight"))
    if len(x.shape) < 2 or not x.dtype.is_floating_point or w.dtype != x.dtype:
        return None
    bv = weights(key, "bias")
    return LinearExecutor(
        x, w, Operand(bv) if bv is not None else None, x.shape[:-1] + (w.shape[0],), x.dtype
    )


def _batchnorm_module(
    mod: nn.Module, key: str, x: Operand, weights: WeightLookup
) -> Executor | None:
    assert isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d))
    if mod.training or len(x.shape) < 2 or not x.dtype.is_floating_point:
        return None
    params: dict[str, Operand | None] = {}
    for k in ("running_mean", "running_var", "weight", "bias"):
        v = weights(key, k)
        params[k] = (
            Operand(v) if v is not None and (isinstance(v, PagedTensor) or v.numel()) else None
        )
    if not mod.track_running_stats:
        params["running_mean"] = params["running_var"] = None
    if any(p is not None and p.dtype != x.dtype for p in params.values()):
        return None
    return BatchNormExecutor(x, params, mod.eps, x.shape, x.dtype)


def _unary_module(mod: nn.Module, key: str, x: Operand, weights: WeightLookup) -> Executor | None:
    if not x.dtype.is_floating_point:
        return None
    return UnaryExecutor(mod, x, (), {}, x.shape, x.dtype)


def _pool_module(mod: nn.Module, key: str, x: Operand, weights: WeightLookup) -> Executor | None:
    assert isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d))
    if getattr(mod, "return_indices", False) or not x.dtype.is_floating_point:
        return None
    nd = 2 if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)) else 1
    is_max = isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d))
    dil = getattr(mod, "dilation", 1)
    shape = pool_shape(x.shape, nd, mod.kernel_size, mod.stride, mod.padding, dil, mod.ceil_mode)
    if shape is None:
        return None
    return PoolExecutor(
        x,
        nd,
        is_max,
        mod.kernel_size,
        mod.stride,
        mod.padding,
        dil,
        mod.ceil_mode,
        getattr(mod, "count_include_pad", True),
        getattr(mod, "divisor_override", None),
        shape,
        x.dtype,
    )


_ADAPTIVE = {
    nn.AdaptiveAvgPool1d: F.adaptive_avg_pool1d,
    nn.AdaptiveAvgPool2d: F.adaptive_avg_pool2d,
    nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
}


def _adaptive_module(
    mod: nn.Module, key: str, x: Operand, weights: WeightLookup
) -> Executor | None:
    assert isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    if getattr(mod, "return_indices", False) or not x.dtype.is_floating_point:
        return None
    nd = 1 if isinstance(mod, nn.AdaptiveAvgPool1d) else 2
    fn = next(f for cls, f in _ADAPTIVE.items() if isinstance(mod, cls))
    shape = adaptive_shape(x.shape, nd, mod.output_size)
    if shape is None:
        return None
    return AdaptivePoolExecutor(fn, x, mod.output_size, nd, shape, x.dtype)


def _embedding_module(
    mod: nn.Module, key: str, x: Operand, weights: WeightLookup
) -> Executor | None:
    assert isinstance(mod, nn.Embedding)
    return embedding(x, weights(key, "weight"), mod.max_norm)


def _layernorm_module(
    mod: nn.Module, key: str, x: Operand, weights: WeightLookup
) -> Executor | None:
    assert isinstance(mod, nn.LayerNorm)
    return layer_norm(
        x, mod.normalized_shape, weights(key, "weight"), weights(key, "bias"), mod.eps
    )


def _flatten_module(mod: nn.Module, key: str, x: Operand, weights: WeightLookup) -> Executor | None:
    assert isinstance(mod, nn.Flatten)
    return flatten(x, mod.start_dim, mod.end_dim)


MODULE_EXECUTORS: Mapping[type[nn.Module], ModuleBuilder] = {
    nn.Conv1d: _conv_module,
    nn.Conv2d: _conv_module,
    nn.Linear: _linear_module,
    nn.BatchNorm1d: _batchnorm_module,
    nn.BatchNorm2d: _batchnorm_module,
    **{cls: _unary_module for cls in UNARY_MODULES},
    nn.MaxPool1d: _pool_module,
    nn.MaxPool2d: _pool_module,
    nn.AvgPool1d: _pool_module,
    nn.AvgPool2d: _pool_module,
    **{cls: _adaptive_module for cls in _ADAPTIVE},
    nn.Flatten: _flatten_module,
    nn.Embedding: _embedding_module,
    nn.LayerNorm: _layernorm_module,
}


# -- shared builders ---------------------------------------------------------------------------


def flatten(x: Operand, start: int, end: int) -> Executor | None:
    """A chunked flatten of a sealed value (a resident one is a free view: None, run it whole)."""
    nd = len(x.shape)
    if nd < 2 or not x.paged:
        return None
    s, e = start % nd, end % nd
    if s == 0 or e < s:
        return None
    shape = x.shape[:s] + (math.prod(x.shape[s : e + 1]),) + x.shape[e + 1 :]
    return FlattenExecutor(x, start, end, shape, x.dtype)


def binary(
    fn: Callable[..., torch.Tensor], args: Sequence[object], true_div: bool
) -> Executor | None:
    """A broadcasting binary op over values and Python scalars, or None if it has no chunked form."""
    if not any(is_value(a) for a in args):
        return None
    if not all(
        is_value(a) or (isinstance(a, (int, float)) and not isinstance(a, bool)) for a in args
    ):
        return None
    tens: list[Value] = [a for a in args if isinstance(a, (torch.Tensor, PagedTensor))]
    try:
        shape = tuple(torch.broadcast_shapes(*[tuple(t.shape) for t in tens]))
    except RuntimeError:
        return None
    if any(len(t.shape) > len(shape) for t in tens) or not shape:
        return None
    probes = [
        torch.empty((1,) * len(a.shape), dtype=a.dtype)
        if isinstance(a, (torch.Tensor, PagedTensor))
        else a
        for a in args
    ]
    dtype = torch.result_type(probes[0], probes[1])  # type: ignore[arg-type]
    if true_div and not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    operands = [Operand(a) if isinstance(a, (torch.Tensor, PagedTensor)) else a for a in args]
    return BinaryExecutor(fn, operands, shape, dtype)  # type: ignore[arg-type]


def embedding(idx: Operand, table: object, max_norm: object = None) -> Executor | None:
    """A chunked lookup of integer indices in a 2-D table (None with ``max_norm``: it edits the table)."""
    if not is_value(table) or max_norm is not None or idx.dtype not in (torch.int64, torch.int32):
        return None
    t = Operand(table)  # type: ignore[arg-type]
    if len(t.shape) != 2 or not t.dtype.is_floating_point:
        return None
    return EmbeddingExecutor(idx, t, idx.shape + (t.shape[1],), t.dtype)


def layer_norm(x: Operand, shape: object, w: object, b: object, eps: object) -> Executor | None:
    """A layer norm cut along its leading dims (None where it has no chunked form)."""
    ns = (
        (shape,)
        if isinstance(shape, int)
        else tuple(shape)
        if isinstance(shape, (list, tuple))
        else None
    )
    if ns is None or not all(isinstance(d, int) for d in ns) or not isinstance(eps, float):
        return None
    if len(ns) >= len(x.shape) or tuple(x.shape[-len(ns) :]) != ns or not x.dtype.is_floating_point:
        return None
    params = [Operand(p) if is_value(p) else None for p in (w, b)]  # type: ignore[arg-type]
    if any(p is not None and (p.shape != ns or p.dtype != x.dtype) for p in params) or any(
        p is not None and not is_value(p) for p in (w, b)
    ):
        return None
    return LayerNormExecutor(x, ns, params[0], params[1], eps, x.dtype)


def _layernorm_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    bound = _bind(
        ["input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable"], args, kwargs
    )
    if bound is None or not is_value(bound.get("input")):
        return None
    return layer_norm(
        Operand(bound["input"]),
        bound.get("normalized_shape"),
        bound.get("weight"),
        bound.get("bias"),
        bound.get("eps", 1e-5),
    )


def _bind(names: Sequence[str], args: Args, kwargs: Kwargs) -> dict[str, Any] | None:
    """Positional and keyword arguments by parameter name (None on an unknown or repeated one)."""
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names or k in bound:
            return None
        bound[k] = v
    return bound


# -- functions ---------------------------------------------------------------------------------


def _unary_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    if (
        not args
        or not is_value(args[0])
        or kwargs.get("inplace")
        or any(is_value(a) for a in list(args[1:]) + list(kwargs.values()))
    ):
        return None
    x = Operand(args[0])
    if not x.dtype.is_floating_point:
        return None
    return UnaryExecutor(node.target, x, tuple(args[1:]), kwargs, x.shape, x.dtype)  # type: ignore[arg-type]


def _binary_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    fn = node.target
    if kwargs or len(args) != 2:
        return None
    first = node.args[0]
    if fn in _INPLACE and isinstance(first, fx.Node) and len(first.users) > 1:
        return None  # in-place on a value others still read: keep torch's semantics
    return binary(_INPLACE.get(fn, fn), args, fn in (operator.truediv, torch.div, _A.div.Tensor))  # type: ignore[arg-type]


def _cat_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    seq = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(seq, (list, tuple)) or not seq or not all(is_value(t) for t in seq):
        return None
    if (
        set(kwargs) - {"tensors", "dim"}
        or len({t.dtype for t in seq}) != 1
        or not isinstance(dim, int)
    ):
        return None
    shapes = [tuple(t.shape) for t in seq]
    nd = len(shapes[0])
    if nd == 0 or any(len(sh) != nd for sh in shapes):
        return None
    d = dim % nd
    if any(sh[:d] + sh[d + 1 :] != shapes[0][:d] + shapes[0][d + 1 :] for sh in shapes):
        return None
    shape = shapes[0][:d] + (sum(sh[d] for sh in shapes),) + shapes[0][d + 1 :]
    return CatExecutor([Operand(t) for t in seq], d, shape, seq[0].dtype)


def _flatten_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    if not args or not is_value(args[0]):
        return None
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return flatten(Operand(args[0]), start, end)


def _weighted_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    fn = (
        F.linear
        if node.target is _A.linear.default
        else (F.conv2d if node.target is _A.conv2d.default else node.target)
    )
    names = (
        ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
        if fn is F.conv2d
        else ["input", "weight", "bias"]
    )
    bound = _bind(names, args, kwargs)
    if bound is None:
        return None
    x, w, b = bound.get("input"), bound.get("weight"), bound.get("bias")
    if not (is_value(x) and is_value(w)) or (b is not None and not is_value(b)):
        return None
    if not x.dtype.is_floating_point or w.dtype != x.dtype:
        return None
    bias = Operand(b) if b is not None else None
    if fn is F.linear:
        if len(x.shape) < 2 or len(w.shape) != 2:
            return None
        return LinearExecutor(
            Operand(x), Operand(w), bias, tuple(x.shape[:-1]) + (w.shape[0],), x.dtype
        )
    if len(x.shape) != 4 or len(w.shape) != 4:
        return None
    stride, padding, dil = bound.get("stride", 1), bound.get("padding", 0), bound.get("dilation", 1)
    shape = conv_shape(tuple(x.shape), tuple(w.shape), stride, padding, dil)
    return ConvExecutor(
        Operand(x),
        Operand(w),
        bias,
        stride,
        padding,
        dil,
        bound.get("groups", 1),
        "zeros",
        shape,
        x.dtype,
    )


def _adaptive_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    if (
        not args
        or not is_value(args[0])
        or kwargs.get("return_indices")
        or set(kwargs) - {"output_size", "return_indices"}
    ):
        return None
    osz = args[1] if len(args) > 1 else kwargs.get("output_size")
    x = Operand(args[0])
    shape = adaptive_shape(x.shape, 2, osz)
    if shape is None or not x.dtype.is_floating_point:
        return None
    pure = F.adaptive_avg_pool2d if node.target is F.adaptive_avg_pool2d else F.adaptive_max_pool2d
    return AdaptivePoolExecutor(pure, x, osz, 2, shape, x.dtype)


def _pool_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    is_max = node.target is F.max_pool2d
    if is_max:
        names = [
            "input",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "ceil_mode",
            "return_indices",
        ]
    else:
        names = [
            "input",
            "kernel_size",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        ]
    bound = _bind(names, args, kwargs)
    if bound is None:
        return None
    x = bound.get("input")
    if not is_value(x) or bound.get("return_indices") or not x.dtype.is_floating_point:
        return None
    stride = bound.get("stride")
    stride = bound["kernel_size"] if stride in (None, (), []) else stride
    dil, pad = bound.get("dilation", 1), bound.get("padding", 0)
    ceil = bool(bound.get("ceil_mode", False))
    shape = pool_shape(tuple(x.shape), 2, bound["kernel_size"], stride, pad, dil, ceil)
    if shape is None:
        return None
    return PoolExecutor(
        Operand(x),
        2,
        is_max,
        bound["kernel_size"],
        stride,
        pad,
        dil,
        ceil,
        bool(bound.get("count_include_pad", True)),
        bound.get("divisor_override"),
        shape,
        x.dtype,
    )


def _matmul_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    if kwargs or len(args) != 2 or not all(is_value(a) for a in args):
        return None
    a, b = Operand(args[0]), Operand(args[1])
    if node.target in (torch.bmm, _A.bmm.default) and (len(a.shape) != 3 or len(b.shape) != 3):
        return None
    if node.target is _A.mm.default and (len(a.shape) != 2 or len(b.shape) != 2):
        return None
    shape = matmul_shape(a.shape, b.shape)
    if shape is None or a.dtype != b.dtype or not a.dtype.is_floating_point:
        return None
    return MatmulExecutor(a, b, shape, a.dtype)


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _attention_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    bound = _bind(_SDPA_ARGS, args, kwargs)
    if bound is None or bound.get("dropout_p", 0.0) != 0.0 or bound.get("enable_gqa", False):
        return None
    q, k, v, m = (bound.get(n) for n in _SDPA_ARGS[:4])
    if not (is_value(q) and is_value(k) and is_value(v)) or (m is not None and not is_value(m)):
        return None
    nd = len(q.shape)
    if (
        nd < 3
        or len(k.shape) != nd
        or len(v.shape) != nd
        or k.shape[:-2] != q.shape[:-2]
        or v.shape[:-2] != q.shape[:-2]
        or k.shape[-1] != q.shape[-1]
        or v.shape[-2] != k.shape[-2]
    ):
        return None
    if len({q.dtype, k.dtype, v.dtype}) != 1 or not q.dtype.is_floating_point:
        return None
    scores = tuple(q.shape[:-1]) + (k.shape[-2],)
    if m is not None and (
        len(m.shape) > nd or tuple(torch.broadcast_shapes(tuple(m.shape), scores)) != scores
    ):
        return None
    is_causal = bool(bound.get("is_causal", False))
    if is_causal and m is not None:
        return None
    out = tuple(q.shape[:-1]) + (v.shape[-1],)
    return AttentionExecutor(
        Operand(q),
        Operand(k),
        Operand(v),
        Operand(m) if m is not None else None,
        is_causal,
        bound.get("scale"),
        out,
        q.dtype,
    )


def _embedding_function(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
    if (
        node.target is _A.embedding.default
    ):  # (weight, indices, padding_idx, ...): forward ignores the rest
        names = ["weight", "input", "padding_idx", "scale_grad_by_freq", "sparse"]
    else:
        names = [
            "input",
            "weight",
            "padding_idx",
            "max_norm",
            "norm_type",
            "scale_grad_by_freq",
            "sparse",
        ]
    bound = _bind(names, args, kwargs)
    if bound is None or not is_value(bound.get("input")):
        return None
    return embedding(Operand(bound["input"]), bound.get("weight"), bound.get("max_norm"))


def _aten_first_value(build: FunctionBuilder) -> FunctionBuilder:
    """``build`` for an ATen op whose first argument must be a tensor (not a Python scalar)."""

    def wrapped(node: fx.Node, args: Args, kwargs: Kwargs) -> Executor | None:
        return build(node, args, kwargs) if args and is_value(args[0]) else None

    return wrapped


UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    F.hardtanh,
    F.hardswish,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.abs,
    torch.clamp,
    operator.neg,
)
BINARY_FUNCTIONS = (
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    operator.iadd,
    operator.imul,
)
ATEN_UNARY = (
    _A.relu.default,
    _A.gelu.default,
    _A.silu.default,
    _A.sigmoid.default,
    _A.tanh.default,
    _A.hardtanh.default,
    _A.hardswish.default,
    _A.hardsigmoid.default,
    _A.leaky_relu.default,
    _A.elu.default,
    _A.exp.default,
    _A.abs.default,
    _A.neg.default,
)
ATEN_BINARY = (_A.add.Tensor, _A.sub.Tensor, _A.mul.Tensor, _A.div.Tensor)
MATMUL_FUNCTIONS = (
    torch.matmul,
    operator.matmul,
    torch.bmm,
    _A.matmul.default,
    _A.bmm.default,
    _A.mm.default,
)

FUNCTION_EXECUTORS: Mapping[Callable[..., Any], FunctionBuilder] = {
    **{fn: _unary_function for fn in UNARY_FUNCTIONS},
    **{fn: _binary_function for fn in BINARY_FUNCTIONS},
    torch.cat: _cat_function,
    torch.flatten: _flatten_function,
    F.conv2d: _weighted_function,
    F.linear: _weighted_function,
    F.adaptive_avg_pool2d: _adaptive_function,
    F.adaptive_max_pool2d: _adaptive_function,
    F.max_pool2d: _pool_function,
    F.avg_pool2d: _pool_function,
    **{fn: _matmul_function for fn in MATMUL_FUNCTIONS},
    F.scaled_dot_product_attention: _attention_function,
    _A.scaled_dot_product_attention.default: _attention_function,
    F.embedding: _embedding_function,
    _A.embedding.default: _embedding_function,
    F.layer_norm: _layernorm_function,
    _A.layer_norm.default: _layernorm_function,
    **{op: _aten_first_value(_unary_function) for op in ATEN_UNARY},
    **{op: _aten_first_value(_binary_function) for op in ATEN_BINARY},
    _A.cat.default: _cat_function,
    _A.flatten.using_ints: _aten_first_value(_flatten_function),
    _A.linear.default: _weighted_function,
    _A.conv2d.default: _weighted_function,
}


# -- tensor methods ----------------------------------------------------------------------------


def _unary_method(name: str, args: Args, kwargs: Kwargs) -> Executor | None:
    if any(is_value(a) for a in list(args[1:]) + list(kwargs.values())):
        return None
    x = Operand(args[0])
    if name == "float":
        if args[1:] or kwargs:
            return None
        dtype = torch.float32
    elif not x.dtype.is_floating_point:
        return None
    else:
        dtype = x.dtype
    return UnaryExecutor(
        lambda t, *a, **k: getattr(t, name)(*a, **k),
        x,
        tuple(args[1:]),
        dict(kwargs),
        x.shape,
        dtype,
    )


_BINARY_METHODS = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def _binary_method(name: str, args: Args, kwargs: Kwargs) -> Executor | None:
    if kwargs or len(args) != 2:
        return None
    return binary(_BINARY_METHODS[name], args, name == "div")


def _flatten_method(name: str, args: Args, kwargs: Kwargs) -> Executor | None:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return flatten(Operand(args[0]), start, end)


METHOD_EXECUTORS: Mapping[str, MethodBuilder] = {
    **{m: _unary_method for m in ("relu", "sigmoid", "tanh", "exp", "abs", "clamp", "float")},
    **{m: _binary_method for m in _BINARY_METHODS},
    "flatten": _flatten_method,
}


def executor_for(
    node: fx.Node, mod: nn.Module | None, args: Args, kwargs: Kwargs, weights: WeightLookup
) -> Executor | None:
    """The chunked executor of a graph node, or None when it has no chunked form (it runs whole)."""
    if node.op == "call_module":
        if kwargs or len(args) != 1 or not is_value(args[0]) or mod is None:
            return None
        build = next(
            (MODULE_EXECUTORS[c] for c in type(mod).__mro__ if c in MODULE_EXECUTORS), None
        )
        return (
            build(mod, str(node.target), Operand(args[0]), weights) if build is not None else None
        )
    if node.op == "call_function":
        try:
            fbuild = FUNCTION_EXECUTORS.get(node.target)  # type: ignore[call-overload]
        except TypeError:  # an unhashable target
            return None
        return fbuild(node, args, kwargs) if fbuild is not None else None
    if node.op == "call_method":
        mbuild = METHOD_EXECUTORS.get(str(node.target))
        if mbuild is None or not args or not is_value(args[0]):
            return None
        return mbuild(str(node.target), args, kwargs)
    return None


__all__ = [
    "FUNCTION_EXECUTORS",
    "METHOD_EXECUTORS",
    "MODULE_EXECUTORS",
    "binary",
    "embedding",
    "executor_for",
    "flatten",
    "is_value",
    "layer_norm",
]
