"""Model zoo: architectures defined in the package, randomly initialised (never downloaded).

>>> from taoism import zoo
>>> model = zoo.get_model("resnet18", dataset_shape="cifar")      # eval mode, seed 0
>>> y = model(zoo.example_input("resnet18", "cifar"))              # (1, 10)
>>> zoo.units(model)[:2]                                          # partition units, in order
[('conv1', 'bn1', 'relu'), ('layer1.0',)]

Dataset shapes (input CHW, default classes): ``cifar`` 3x32x32 / 10, ``imagenet``
3x224x224 / 1000, ``mnist`` 1x28x28 / 10, ``digits`` (sklearn) 1x8x8 / 10. ResNet, VGG,
AlexNet and TEESlice ResNets take ``cifar`` and ``imagenet``; ``small_cnn``,
``gap_resnet20`` (a GAP-head ResNet-20) and ``teeslice_small_cnn`` take ``mnist``, ``digits``
and ``cifar``. ``vit_tiny`` takes ``cifar`` and ``imagenet``; ``bert_tiny`` takes ``tokens``
(16 token ids from a vocabulary of 1000, plus an attention mask: :func:`example_inputs`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.zoo._weights import load_checked, resolve_state_dict
from taoism.zoo.gap import GapResNet, gap_resnet20
from taoism.zoo.plain import VGG, AlexNet, alexnet, vgg16_bn
from taoism.zoo.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from taoism.zoo.small import SmallCNN
from taoism.zoo.teeslice import (
    ProxyBlock,
    SliceGroup,
    TEESliceResNet,
    TEESliceSmallCNN,
    teeslice_resnet18,
    teeslice_resnet34,
    teeslice_resnet50,
    teeslice_small_cnn,
)
from taoism.zoo.transformer import TinyBERT, TinyViT, bert_tiny, vit_tiny

__all__ = [
    "list_models",
    "get_model",
    "input_shape",
    "example_input",
    "example_inputs",
    "units",
    "supported_shapes",
    "DATASET_SHAPES",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "VGG",
    "AlexNet",
    "SmallCNN",
    "GapResNet",
    "TEESliceResNet",
    "TEESliceSmallCNN",
    "SliceGroup",
    "ProxyBlock",
    "TinyViT",
    "TinyBERT",
]

DATASET_SHAPES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        "cifar": (3, 32, 32),
        "imagenet": (3, 224, 224),
        "mnist": (1, 28, 28),
        "digits": (1, 8, 8),
        "tokens": (16,),
    }
)
_DEFAULT_CLASSES: Mapping[str, int] = MappingProxyType(
    {"cifar": 10, "imagenet": 1000, "mnist": 10, "digits": 10, "tokens": 2}
)
_VOCAB = 1000  # bert_tiny's vocabulary

_RGB = ("cifar", "imagenet")


@dataclass(frozen=True)
class _Spec:
    build: Callable[[int, str], nn.Module]  # (num_classes, dataset_shape) -> model
    shapes: tuple[str, ...]


def _small(num_classes: int, shape: str) -> nn.Module:
    c, h, _ = DATASET_SHAPES[shape]
    return SmallCNN(num_classes, in_channels=c, input_size=h)


def _gap_resnet20(num_classes: int, shape: str) -> nn.Module:
    return gap_resnet20(num_classes, in_channels=DATASET_SHAPES[shape][0])


def _teeslice_small(num_classes: int, shape: str) -> nn.Module:
    c, h, _ = DATASET_SHAPES[shape]
    return teeslice_small_cnn(num_classes, in_channels=c, input_size=h)


_REGISTRY: Mapping[str, _Spec] = MappingProxyType(
    {
        "resnet18": _Spec(lambda n, s: resnet18(n, s), _RGB),
        "resnet34": _Spec(lambda n, s: resnet34(n, s), _RGB),
        "resnet50": _Spec(lambda n, s: resnet50(n, s), _RGB),
        "vgg16_bn": _Spec(lambda n, s: vgg16_bn(n, s), _RGB),
        "alexnet": _Spec(lambda n, s: alexnet(n, s), _RGB),
        "small_cnn": _Spec(_small, ("mnist", "digits", "cifar")),
        "gap_resnet20": _Spec(_gap_resnet20, ("mnist", "digits", "cifar")),
        "teeslice_resnet18": _Spec(lambda n, s: teeslice_resnet18(n, s), _RGB),
        "teeslice_resnet34": _Spec(lambda n, s: teeslice_resnet34(n, s), _RGB),
        "teeslice_resnet50": _Spec(lambda n, s: teeslice_resnet50(n, s), _RGB),
        "teeslice_small_cnn": _Spec(_teeslice_small, ("mnist", "digits", "cifar")),
        "vit_tiny": _Spec(lambda n, s: vit_tiny(n, DATASET_SHAPES[s][1]), _RGB),
        "bert_tiny": _Spec(lambda n, s: bert_tiny(n), ("tokens",)),
    }
)

# "ResNet-18", "resnet_18", "VGG16BN" ... -> registry name.
_ALIASES: Mapping[str, str] = MappingProxyType({k.replace("_", ""): k for k in _REGISTRY})


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return list(_REGISTRY)


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(
            f"model name must be a string, got {type(name).__name__}; use one of {list_models()}"
        )
    key = _ALIASES.get(name.strip().lower().replace("-", "").replace("_", ""))
    if key is None:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown model {name!r}; {hint}available models: {', '.join(_REGISTRY)} "
            "(see taoism.zoo.list_models())"
        )
    return key


def supported_shapes(name: str) -> tuple[str, ...]:
    """The dataset shapes model ``name`` can be built for."""
    return _REGISTRY[_resolve(name)].shapes


def _check_shape(key: str, dataset_shape: str | None) -> str:
    shapes = _REGISTRY[key].shapes
    if dataset_shape is None:  # "cifar" where the model takes it, else its first shape
        return "cifar" if "cifar" in shapes else shapes[0]
    if dataset_shape not in shapes:
        known = (
            ""
            if dataset_shape in DATASET_SHAPES
            else f" (known shapes: {', '.join(DATASET_SHAPES)})"
        )
        raise ConfigError(
            f"model {key!r} does not support dataset_shape={dataset_shape!r}{known}; "
            f"pass dataset_shape as one of: {', '.join(shapes)}"
        )
    return dataset_shape


def get_model(
    name: str,
    *,
    dataset_shape: str | None = None,
    num_classes: int | None = None,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    seed: int | None = 0,
) -> nn.Module:
    """Build zoo model ``name`` for ``dataset_shape`` (default: ``cifar``, or the model's only shape), in eval mode.

    ``num_classes`` defaults to the dataset's (10, or 1000 for imagenet). Weights are random
    (deterministic for a given ``seed``; ``seed=None`` draws from torch's global RNG; a given
    seed leaves the global RNG untouched) unless ``weights`` is given: a state_dict, or a path
    to a ``torch.save`` file holding a state_dict or a checkpoint dict with a ``state_dict`` /
    ``model_state_dict`` / ``model`` entry. A leading ``module.`` is stripped from keys.
    Missing, unexpected or mis-shaped keys raise :class:`~taoism.errors.ConfigError`.
    """
    key = _resolve(name)
    shape = _check_shape(key, dataset_shape)
    if num_classes is None:
        num_classes = _DEFAULT_CLASSES[shape]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    build = _REGISTRY[key].build
    if seed is None:
        model = build(num_classes, shape)
    else:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(num_classes, shape)
    if weights is not None:
        load_checked(
            model,
            resolve_state_dict(weights),
            what=f"model {key!r} ({shape}, {num_classes} classes)",
        )
    return model.eval()


def input_shape(name: str, dataset_shape: str | None = None) -> tuple[int, ...]:
    """The CHW input shape of model ``name`` built for ``dataset_shape``."""
    return DATASET_SHAPES[_check_shape(_resolve(name), dataset_shape)]


def example_input(
    name: str, dataset_shape: str | None = None, batch: int = 1, seed: int = 0
) -> torch.Tensor:
    """A deterministic input batch: standard normal ``(batch, C, H, W)``, or token ids."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive int, got {batch!r}")
    gen = torch.Generator().manual_seed(seed)
    dataset_shape = _check_shape(_resolve(name), dataset_shape)
    shape = input_shape(name, dataset_shape)
    if dataset_shape == "tokens":
        return torch.randint(0, _VOCAB, (batch, *shape), generator=gen)
    return torch.randn(batch, *shape, generator=gen)


def example_inputs(
    name: str, dataset_shape: str | None = None, batch: int = 1, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Every forward input of model ``name``: ``(x,)``, or ``(input_ids, attention_mask)``
    for token models (the mask pads the last quarter of every other sample)."""
    dataset_shape = _check_shape(_resolve(name), dataset_shape)
    x = example_input(name, dataset_shape, batch, seed)
    if dataset_shape != "tokens":
        return (x,)
    mask = torch.ones_like(x)
    mask[::2, -(x.shape[1] // 4) :] = 0
    return x, mask


def units(model: nn.Module) -> list[tuple[str, ...]]:
    """The model's partition units in execution order; each a tuple of qualified module names.

    Uses ``model.taoism_units()`` when defined (every zoo model does); otherwise one unit per
    top-level child. ResNet-18: [stem (conv1, bn1, relu[, maxpool]), layer1.0, ..., layer4.1,
    (avgpool, fc)] = 10 units.
    """
    fn = getattr(model, "taoism_units", None)
    if callable(fn):
        return [tuple(u) for u in fn()]
    return [(name,) for name, _ in model.named_children()]
