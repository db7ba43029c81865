"""The op vocabulary: what the enclave can execute, and how graph arguments are encoded as JSON.

The host describes each enclave segment as JSON (graph nodes, module configs) plus raw weight
tensors; the enclave rebuilds it only from the whitelists below, so nothing that crosses the
boundary is ever unpickled or evaluated as code.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from taoism.errors import PlacementError, ProgramError


@dataclass(frozen=True)
class ModuleKind:
    """How to describe a module type as JSON and rebuild it inside the enclave."""

    cls: type[nn.Module]
    fields: tuple[str, ...]  # constructor keyword arguments, read from attributes of the same name
    derived: Mapping[str, Callable[[nn.Module], Any]] = field(
        default_factory=dict
    )  # fields read otherwise

    def config(self, m: nn.Module) -> dict[str, Any]:
        """The JSON config of module ``m`` (its constructor arguments)."""
        cfg: dict[str, Any] = {}
        for f in self.fields:
            if f in self.derived:
                cfg[f] = _to_json(self.derived[f](m))
            elif f == "bias" and not isinstance(getattr(m, "bias", None), bool):
                cfg[f] = getattr(m, "bias", None) is not None
            else:
                cfg[f] = _to_json(getattr(m, f))
        return cfg

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        """A fresh module of this kind from its JSON config."""
        unknown = set(cfg) - set(self.fields)
        if unknown:
            raise ProgramError(
                f"enclave module {self.cls.__name__}: unexpected config keys {sorted(unknown)}"
            )
        kwargs = {k: _from_json(v) for k, v in cfg.items()}
        return self.cls(**kwargs)


def _to_json(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    raise PlacementError(f"cannot describe module attribute value {v!r} for the enclave")


def _from_json(v: Any) -> Any:
    return tuple(_from_json(x) for x in v) if isinstance(v, list) else v


_CONV = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "padding_mode",
)
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MHA = (
    "embed_dim",
    "num_heads",
    "dropout",
    "bias",
    "add_bias_kv",
    "add_zero_attn",
    "kdim",
    "vdim",
    "batch_first",
)
_MHA_DERIVED = MappingProxyType(
    {"bias": lambda m: m.in_proj_bias is not None, "add_bias_kv": lambda m: m.bias_k is not None}
)

MODULE_KINDS: Mapping[str, ModuleKind] = MappingProxyType(
    {
        k.cls.__name__: k
        for k in (
            ModuleKind(nn.Conv1d, _CONV),
            ModuleKind(nn.Conv2d, _CONV),
            ModuleKind(nn.Linear, ("in_features", "out_features", "bias")),
            ModuleKind(nn.BatchNorm1d, _BN),
            ModuleKind(nn.BatchNorm2d, _BN),
            ModuleKind(nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
            ModuleKind(nn.ReLU, ()),
            ModuleKind(nn.ReLU6, ()),
            ModuleKind(nn.LeakyReLU, ("negative_slope",)),
            ModuleKind(nn.ELU, ("alpha",)),
            ModuleKind(nn.GELU, ("approximate",)),
            ModuleKind(nn.SiLU, ()),
            ModuleKind(nn.Sigmoid, ()),
            ModuleKind(nn.Tanh, ()),
            ModuleKind(nn.Hardswish, ()),
            ModuleKind(nn.Hardsigmoid, ()),
            ModuleKind(nn.Softmax, ("dim",)),
            ModuleKind(nn.LogSoftmax, ("dim",)),
            ModuleKind(nn.MaxPool1d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
            ModuleKind(nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
            ModuleKind(
                nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
            ),
            ModuleKind(
                nn.AvgPool2d,
                (
                    "kernel_size",
                    "stride",
                    "padding",
                    "ceil_mode",
                    "count_include_pad",
                    "divisor_override",
                ),
            ),
            ModuleKind(nn.AdaptiveAvgPool1d, ("output_size",)),
            ModuleKind(nn.AdaptiveAvgPool2d, ("output_size",)),
            ModuleKind(nn.AdaptiveMaxPool2d, ("output_size",)),
            ModuleKind(nn.Flatten, ("start_dim", "end_dim")),
            ModuleKind(nn.Dropout, ("p",)),
            ModuleKind(nn.Identity, ()),
            ModuleKind(
                nn.Embedding,
                (
                    "num_embeddings",
                    "embedding_dim",
                    "padding_idx",
                    "max_norm",
                    "norm_type",
                    "scale_grad_by_freq",
                    "sparse",
                ),
            ),
            ModuleKind(nn.MultiheadAttention, _MHA, _MHA_DERIVED),
        )
    }
)

_A = torch.ops.aten
# ATen operator overloads (graphs captured with torch.export) the enclave runs, named like
# ``aten.linear.default``: a fixed list over the Core ATen op set, never looked up by name.
ATEN_OPS: tuple[torch._ops.OpOverload, ...] = (
    # layers
    _A.linear.default,
    _A.conv1d.default,
    _A.conv2d.default,
    _A.layer_norm.default,
    _A.batch_norm.default,
    _A.embedding.default,
    _A.scaled_dot_product_attention.default,
    _A.matmul.default,
    _A.bmm.default,
    _A.mm.default,
    _A.addmm.default,
    _A.einsum.default,
    _A.max_pool2d.default,
    _A.avg_pool2d.default,
    _A.adaptive_avg_pool2d.default,
    _A.adaptive_avg_pool1d.default,
    _A.dropout.default,
    # element-wise
    _A.gelu.default,
    _A.relu.default,
    _A.hardtanh.default,
    _A.silu.default,
    _A.sigmoid.default,
    _A.tanh.default,
    _A.hardswish.default,
    _A.hardsigmoid.default,
    _A.leaky_relu.default,
    _A.elu.default,
    _A.exp.default,
    _A.sqrt.default,
    _A.rsqrt.default,
    _A.neg.default,
    _A.abs.default,
    _A.erf.default,
    _A.pow.Tensor_Scalar,
    _A.clamp.default,
    _A.add.Tensor,
    _A.add.Scalar,
    _A.sub.Tensor,
    _A.sub.Scalar,
    _A.rsub.Scalar,
    _A.mul.Tensor,
    _A.mul.Scalar,
    _A.div.Tensor,
    _A.div.Scalar,
    _A.where.self,
    _A.masked_fill.Scalar,
    _A.eq.Scalar,
    _A.eq.Tensor,
    _A.ne.Scalar,
    _A.lt.Scalar,
    _A.gt.Scalar,
    _A.logical_not.default,
    # reductions
    _A.softmax.int,
    _A._softmax.default,
    _A.log_softmax.int,
    _A._log_softmax.default,
    _A.mean.dim,
    _A.sum.dim_IntList,
    _A.amax.default,
    # views, copies and indexing
    _A.view.default,
    _A._unsafe_view.default,
    _A.reshape.default,
    _A.permute.default,
    _A.transpose.int,
    _A.swapaxes.default,
    _A.t.default,
    _A.unsqueeze.default,
    _A.squeeze.dim,
    _A.squeeze.dims,
    _A.expand.default,
    _A.flatten.using_ints,
    _A.unflatten.int,
    _A.contiguous.default,
    _A.clone.default,
    _A.alias.default,
    _A.detach.default,
    _A.lift_fresh_copy.default,
    _A.select.int,
    _A.slice.Tensor,
    _A.index.Tensor,
    _A.unbind.int,
    _A.split.Tensor,
    _A.split_with_sizes.default,
    _A.chunk.default,
    _A.cat.default,
    _A.stack.default,
    _A.roll.default,
    _A.pad.default,
    _A.constant_pad_nd.default,
    # factories, dtypes, shapes and checks
    _A.arange.default,
    _A.arange.start,
    _A.arange.start_step,
    _A.zeros_like.default,
    _A.ones_like.default,
    _A.to.dtype,
    _A.sym_size.int,
    _A.sym_numel.default,
    _A._assert_tensor_metadata.default,
    _A._assert_scalar.default,
)

# Functions a graph node may call inside the enclave, by stable name.
_FUNCTION_LIST: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("operator.add", operator.add),
    ("operator.sub", operator.sub),
    ("operator.mul", operator.mul),
    ("operator.truediv", operator.truediv),
    ("operator.floordiv", operator.floordiv),
    ("operator.neg", operator.neg),
    ("operator.getitem", operator.getitem),
    ("operator.matmul", operator.matmul),
    ("operator.iadd", operator.iadd),
    ("operator.imul", operator.imul),
    ("torch.add", torch.add),
    ("torch.sub", torch.sub),
    ("torch.mul", torch.mul),
    ("torch.div", torch.div),
    ("torch.matmul", torch.matmul),
    ("torch.cat", torch.cat),
    ("torch.stack", torch.stack),
    ("torch.flatten", torch.flatten),
    ("torch.reshape", torch.reshape),
    ("torch.relu", torch.relu),
    ("torch.sigmoid", torch.sigmoid),
    ("torch.tanh", torch.tanh),
    ("torch.softmax", torch.softmax),
    ("torch.log_softmax", torch.log_softmax),
    ("torch.mean", torch.mean),
    ("torch.sum", torch.sum),
    ("torch.transpose", torch.transpose),
    ("torch.permute", torch.permute),
    ("torch.squeeze", torch.squeeze),
    ("torch.unsqueeze", torch.unsqueeze),
    ("torch.chunk", torch.chunk),
    ("torch.split", torch.split),
    ("torch.clamp", torch.clamp),
    ("torch.exp", torch.exp),
    ("torch.abs", torch.abs),
    ("torch.max", torch.max),
    ("torch.amax", torch.amax),
    ("F.relu", F.relu),
    ("F.relu6", F.relu6),
    ("F.leaky_relu", F.leaky_relu),
    ("F.gelu", F.gelu),
    ("F.silu", F.silu),
    ("F.elu", F.elu),
    ("F.hardtanh", F.hardtanh),
    ("F.hardswish", F.hardswish),
    ("F.sigmoid", F.sigmoid),
    ("F.tanh", F.tanh),
    ("F.softmax", F.softmax),
    ("F.log_softmax", F.log_softmax),
    ("F.dropout", F.dropout),
    ("F.max_pool2d", F.max_pool2d),
    ("F.avg_pool2d", F.avg_pool2d),
    ("F.adaptive_avg_pool2d", F.adaptive_avg_pool2d),
    ("F.adaptive_max_pool2d", F.adaptive_max_pool2d),
    ("F.linear", F.linear),
    ("F.conv2d", F.conv2d),
    ("F.batch_norm", F.batch_norm),
    ("F.layer_norm", F.layer_norm),
    ("F.pad", F.pad),
    ("F.embedding", F.embedding),
    ("F.scaled_dot_product_attention", F.scaled_dot_product_attention),
    ("torch.bmm", torch.bmm),
    ("torch.einsum", torch.einsum),
    ("torch.swapaxes", torch.swapaxes),
    ("torch.swapdims", torch.swapdims),
    ("torch.roll", torch.roll),
    ("torch.arange", torch.arange),
    ("torch.zeros_like", torch.zeros_like),
    ("torch.ones_like", torch.ones_like),
    ("torch.where", torch.where),
    ("torch.sqrt", torch.sqrt),
    ("torch.rsqrt", torch.rsqrt),
    ("torch.unbind", torch.unbind),
    ("torch._assert", torch._assert),
    ("operator.eq", operator.eq),
    ("operator.ne", operator.ne),
    ("operator.lt", operator.lt),
    ("operator.le", operator.le),
    ("operator.gt", operator.gt),
    ("operator.ge", operator.ge),
    ("operator.pow", operator.pow),
    ("operator.mod", operator.mod),
    *((str(op), op) for op in ATEN_OPS),
)
_SAFE_ATTRIBUTES = frozenset({"shape", "ndim", "T", "mT", "device", "dtype"})


def _safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to harmless tensor attributes (``x.shape[0]`` in a traced forward)."""
    if name not in _SAFE_ATTRIBUTES:
        raise ProgramError(
            f"attribute {name!r} is not readable inside the enclave "
            f"(allowed: {sorted(_SAFE_ATTRIBUTES)})"
        )
    return getattr(obj, name)


# How the enclave runs some ops: a view as a reshape (the same values; the enclave's executors
# make contiguous outputs, whose strides can differ from those the graph was captured with).
_ENCLAVE_FORM: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {"aten.view.default": _A.reshape.default, "aten._unsafe_view.default": _A.reshape.default}
)
FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {**dict(_FUNCTION_LIST), **_ENCLAVE_FORM, "getattr": _safe_getattr}
)
_FUNCTION_NAMES: Mapping[Any, str] = MappingProxyType(
    {**{fn: name for name, fn in _FUNCTION_LIST}, getattr: "getattr"}
)

METHODS: frozenset[str] = frozenset(
    {
        "view",
        "reshape",
        "flatten",
        "size",
        "dim",
        "mean",
        "sum",
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "permute",
        "transpose",
        "contiguous",
        "squeeze",
        "unsqueeze",
        "add",
        "sub",
        "mul",
        "div",
        "matmul",
        "chunk",
        "split",
        "expand",
        "t",
        "clamp",
        "exp",
        "abs",
        "max",
        "amax",
        "float",
        "view_as",
        "reshape_as",
        "expand_as",
        "__getitem__",
        "add_",
        "mul_",
        "relu_",
        "to",
        "swapaxes",
        "swapdims",
        "roll",
        "masked_fill",
        "unbind",
        "bmm",
        "pow",
        "sqrt",
        "rsqrt",
        "neg",
        "eq",
        "ne",
        "gt",
        "lt",
        "type_as",
        "unflatten",
        "numel",
        "gelu",
        "long",
        "int",
        "bool",
    }
)


def to_dtype(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``x.to(dtype)`` as the enclave runs it: a dtype change only, on the enclave's device."""
    if len(args) > 1 or set(kwargs) - {"dtype", "non_blocking", "copy"}:
        raise ProgramError(
            f".to() inside the enclave takes one dtype (and non_blocking/copy), got "
            f"{len(args)} positional and {sorted(kwargs)}"
        )
    dtype = args[0] if args else kwargs.pop("dtype", None)
    kwargs.pop("dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise ProgramError(
            f".to({dtype!r}) inside the enclave: only a dtype change is allowed "
            "(the value stays on the enclave's device)"
        )
    return x.to(dtype, **kwargs)


_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        str(d).removeprefix("torch."): d
        for d in (
            torch.float32,
            torch.float64,
            torch.float16,
            torch.bfloat16,
            torch.int64,
            torch.int32,
            torch.int8,
            torch.uint8,
            torch.bool,
        )
    }
)


_MEMORY_FORMATS: Mapping[str, torch.memory_format] = MappingProxyType(
    {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format}
)


def dtype_by_name(name: str) -> torch.dtype:
    """The torch dtype of a vocabulary dtype name (``"float32"``...); ProgramError if unknown."""
    if name not in _DTYPES:
        raise ProgramError(
            f"unknown dtype {name!r} in a program description (known: {sorted(_DTYPES)})"
        )
    return _DTYPES[name]


def function_name(fn: Any) -> str | None:
    """The whitelist name of ``fn``, or None if the enclave cannot call it."""
    try:
        return _FUNCTION_NAMES.get(fn)
    except TypeError:  # unhashable target
        return None


def module_kind(m: nn.Module) -> ModuleKind | None:
    """The enclave description of ``m``'s exact type, or None if the enclave cannot run it."""
    kind = MODULE_KINDS.get(type(m).__name__)
    return kind if kind is not None and type(m) is kind.cls else None


def encode_arg(a: Any, node_ref: Callable[[Any], str | None]) -> Any:
    """Encode an fx argument as JSON; ``node_ref(a)`` names fx nodes."""
    ref = node_ref(a)
    if ref is not None:
        return {"$n": ref}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, tuple):
        return {"$t": [encode_arg(x, node_ref) for x in a]}
    if isinstance(a, list):
        return [encode_arg(x, node_ref) for x in a]
    if isinstance(a, dict):
        return {"$d": {str(k): encode_arg(v, node_ref) for k, v in a.items()}}
    if isinstance(a, slice):
        return {
            "$s": [
                encode_arg(a.start, node_ref),
                encode_arg(a.stop, node_ref),
                encode_arg(a.step, node_ref),
            ]
        }
    if a is Ellipsis:
        return {"$e": True}
    if isinstance(a, torch.dtype):
        return {"$dt": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):  # factories and checks name a device: the enclave uses its own
        return {"$dev": True}
    if a is torch.strided:
        return {"$lay": "strided"}
    if a is torch.contiguous_format or a is torch.preserve_format:
        return {"$mf": str(a).removeprefix("torch.")}
    raise PlacementError(
        f"argument {a!r} of type {type(a).__name__} cannot be sent to the enclave; "
        "place the node that uses it on the device (EnclaveMode.GPU)"
    )


def decode_arg(a: Any, lookup: Callable[[str], Any]) -> Any:
    """Inverse of :func:`encode_arg`; ``lookup(name)`` returns the value of a node reference."""
    if isinstance(a, list):
        return [decode_arg(x, lookup) for x in a]
    if not isinstance(a, dict):
        return a
    if len(a) != 1:
        raise ProgramError(f"malformed argument encoding {sorted(a)[:4]}")
    ((tag, v),) = a.items()
    if tag == "$n":
        return lookup(v)
    if tag == "$t":
        return tuple(decode_arg(x, lookup) for x in v)
    if tag == "$d":
        return {k: decode_arg(x, lookup) for k, x in v.items()}
    if tag == "$s":
        return slice(*(decode_arg(x, lookup) for x in v))
    if tag == "$e":
        return Ellipsis
    if tag == "$dt":
        if v not in _DTYPES:
            raise ProgramError(f"unknown dtype {v!r} in a segment description")
        return _DTYPES[v]
    if tag == "$dev":
        return torch.device("cpu")  # the enclave's own device
    if tag == "$lay" and v == "strided":
        return torch.strided
    if tag == "$mf" and v in _MEMORY_FORMATS:
        return _MEMORY_FORMATS[v]
    raise ProgramError(f"unknown argument tag {tag!r} in a segment description")


__all__ = [
    "ATEN_OPS",
    "FUNCTIONS",
    "METHODS",
    "MODULE_KINDS",
    "ModuleKind",
    "decode_arg",
    "dtype_by_name",
    "encode_arg",
    "function_name",
    "module_kind",
    "to_dtype",
]
