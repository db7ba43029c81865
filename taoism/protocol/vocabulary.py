"""The op vocabulary: what the enclave can execute, and how graph arguments are encoded as JSON.

The host describes each enclave segment as JSON (graph nodes, module configs) plus raw weight
tensors; the enclave rebuilds it only from the whitelists below, so nothing that crosses the
boundary is ever unpickled or evaluated as code.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from taoism.errors import PlacementError, ProgramError


@dataclass(frozen=True)
class ModuleKind:
    """How to describe a module type as JSON and rebuild it inside the enclave."""

    cls: type[nn.Module]
    fields: tuple[str, ...]  # constructor keyword arguments, read from attributes of the same name

    def config(self, m: nn.Module) -> dict[str, Any]:
        """The JSON config of module ``m`` (its constructor arguments)."""
        cfg: dict[str, Any] = {}
        for f in self.fields:
            if f == "bias" and not isinstance(getattr(m, "bias", None), bool):
                cfg[f] = getattr(m, "bias", None) is not None
            else:
                cfg[f] = _to_json(getattr(m, f))
        return cfg

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        """A fresh module of this kind from its JSON config."""
        unknown = set(cfg) - set(self.fields)
        if unknown:
            raise ProgramError(f"enclave module {self.cls.__name__}: unexpected config keys {sorted(unknown)}")
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


_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
         "bias", "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")

MODULE_KINDS: Mapping[str, ModuleKind] = MappingProxyType({
    k.cls.__name__: k for k in (
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
        ModuleKind(nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
        ModuleKind(nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
        ModuleKind(nn.AdaptiveAvgPool1d, ("output_size",)),
        ModuleKind(nn.AdaptiveAvgPool2d, ("output_size",)),
        ModuleKind(nn.AdaptiveMaxPool2d, ("output_size",)),
        ModuleKind(nn.Flatten, ("start_dim", "end_dim")),
        ModuleKind(nn.Dropout, ("p",)),
        ModuleKind(nn.Identity, ()),
    )
})

# Functions a graph node may call inside the enclave, by stable name.
_FUNCTION_LIST: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("operator.add", operator.add), ("operator.sub", operator.sub), ("operator.mul", operator.mul),
    ("operator.truediv", operator.truediv), ("operator.floordiv", operator.floordiv),
    ("operator.neg", operator.neg), ("operator.getitem", operator.getitem),
    ("operator.matmul", operator.matmul), ("operator.iadd", operator.iadd),
    ("operator.imul", operator.imul),
    ("torch.add", torch.add), ("torch.sub", torch.sub), ("torch.mul", torch.mul),
    ("torch.div", torch.div), ("torch.matmul", torch.matmul), ("torch.cat", torch.cat),
    ("torch.stack", torch.stack), ("torch.flatten", torch.flatten), ("torch.reshape", torch.reshape),
    ("torch.relu", torch.relu), ("torch.sigmoid", torch.sigmoid), ("torch.tanh", torch.tanh),
    ("torch.softmax", torch.softmax), ("torch.log_softmax", torch.log_softmax),
    ("torch.mean", torch.mean), ("torch.sum", torch.sum), ("torch.transpose", torch.transpose),
    ("torch.permute", torch.permute), ("torch.squeeze", torch.squeeze),
    ("torch.unsqueeze", torch.unsqueeze), ("torch.chunk", torch.chunk), ("torch.split", torch.split),
    ("torch.clamp", torch.clamp), ("torch.exp", torch.exp), ("torch.abs", torch.abs),
    ("torch.max", torch.max), ("torch.amax", torch.amax),
    ("F.relu", F.relu), ("F.relu6", F.relu6), ("F.leaky_relu", F.leaky_relu), ("F.gelu", F.gelu),
    ("F.silu", F.silu), ("F.elu", F.elu), ("F.hardtanh", F.hardtanh), ("F.hardswish", F.hardswish),
    ("F.sigmoid", F.sigmoid), ("F.tanh", F.tanh),
    ("F.softmax", F.softmax), ("F.log_softmax", F.log_softmax), ("F.dropout", F.dropout),
    ("F.max_pool2d", F.max_pool2d), ("F.avg_pool2d", F.avg_pool2d),
    ("F.adaptive_avg_pool2d", F.adaptive_avg_pool2d), ("F.adaptive_max_pool2d", F.adaptive_max_pool2d),
    ("F.linear", F.linear), ("F.conv2d", F.conv2d), ("F.batch_norm", F.batch_norm),
    ("F.layer_norm", F.layer_norm), ("F.pad", F.pad),
)
_SAFE_ATTRIBUTES = frozenset({"shape", "ndim", "T", "mT"})


def _safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to harmless tensor attributes (``x.shape[0]`` in a traced forward)."""
    if name not in _SAFE_ATTRIBUTES:
        raise ProgramError(f"attribute {name!r} is not readable inside the enclave "
                         f"(allowed: {sorted(_SAFE_ATTRIBUTES)})")
    return getattr(obj, name)


FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {**dict(_FUNCTION_LIST), "getattr": _safe_getattr})
_FUNCTION_NAMES: Mapping[Any, str] = MappingProxyType(
    {**{fn: name for name, fn in _FUNCTION_LIST}, getattr: "getattr"})

METHODS: frozenset[str] = frozenset({
    "view", "reshape", "flatten", "size", "dim", "mean", "sum", "relu", "sigmoid", "tanh",
    "softmax", "log_softmax", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "add",
    "sub", "mul", "div", "matmul", "chunk", "split", "expand", "t", "clamp", "exp", "abs", "max",
    "amax", "float", "view_as", "reshape_as", "expand_as", "__getitem__", "add_", "mul_", "relu_",
})

_DTYPES: Mapping[str, torch.dtype] = MappingProxyType({
    str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.float16,
                                               torch.bfloat16, torch.int64, torch.int32,
                                               torch.int8, torch.uint8, torch.bool)})


def dtype_by_name(name: str) -> torch.dtype:
    """The torch dtype of a vocabulary dtype name (``"float32"``...); ProgramError if unknown."""
    if name not in _DTYPES:
        raise ProgramError(f"unknown dtype {name!r} in a program description (known: {sorted(_DTYPES)})")
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
        return {"$s": [encode_arg(a.start, node_ref), encode_arg(a.stop, node_ref),
                       encode_arg(a.step, node_ref)]}
    if a is Ellipsis:
        return {"$e": True}
    if isinstance(a, torch.dtype):
        return {"$dt": str(a).removeprefix("torch.")}
    raise PlacementError(f"argument {a!r} of type {type(a).__name__} cannot be sent to the enclave; "
                         "place the node that uses it on the device (EnclaveMode.GPU)")


def decode_arg(a: Any, lookup: Callable[[str], Any]) -> Any:
    """Inverse of :func:`encode_arg`; ``lookup(name)`` returns the value of a node reference."""
    if isinstance(a, list):
        return [decode_arg(x, lookup) for x in a]
    if not isinstance(a, dict):
        return a
    if len(a) != 1:
        raise ProgramError(f"malformed argument encoding {sorted(a)[:4]}")
    (tag, v), = a.items()
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
    raise ProgramError(f"unknown argument tag {tag!r} in a segment description")


__all__ = ["FUNCTIONS", "METHODS", "MODULE_KINDS", "ModuleKind", "decode_arg", "dtype_by_name",
           "encode_arg", "function_name", "module_kind"]
