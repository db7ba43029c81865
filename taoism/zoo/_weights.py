"""Loading state_dicts and checkpoint files into zoo models, with clear errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taoism.errors import ConfigError

__all__ = ["WeightsLike", "resolve_state_dict", "load_checked"]

WeightsLike = str | os.PathLike | Mapping[str, Any]

# Checkpoint dicts wrap the state_dict under one of these keys (checked in this order).
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_STRIP_PREFIXES = ("module.",)
_MAX_LISTED = 10


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(
            f"weights file {str(path)!r} does not exist; pass a path to a file saved with torch.save"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a config problem
        raise ConfigError(
            f"cannot load weights file {str(path)!r} with torch.load(weights_only=True): {exc}; "
            "save only tensors and plain containers, e.g. torch.save(model.state_dict(), path)"
        ) from exc


def resolve_state_dict(weights: WeightsLike) -> dict[str, torch.Tensor]:
    """Turn a state_dict, a checkpoint dict or a path to either into a flat state_dict.

    A checkpoint dict is unwrapped through its ``state_dict`` / ``model_state_dict`` /
    ``model`` entry; a leading ``module.`` (DataParallel/DDP) is stripped from every key.
    """
    source = "the given dict"
    obj: Any = weights
    if isinstance(weights, (str, os.PathLike)):
        source = f"weights file {os.fspath(weights)!r}"
        obj = _read(Path(weights))
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"{source} holds a {type(obj).__name__}, not a state_dict; "
            "pass model.state_dict() or a checkpoint dict with a 'state_dict' key"
        )
    for key in _CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"{source} is not a state_dict: entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"wrap the state_dict under one of the keys {list(_CHECKPOINT_KEYS)}"
            )
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def load_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model"
) -> None:
    """Load ``state_dict`` into ``model`` strictly; raise ConfigError naming every mismatch.

    A missing ``num_batches_tracked`` buffer (older checkpoints) is tolerated.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(v.shape)} vs {what} {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches ({len(wrong_shape)}): {_listing(wrong_shape)}")
        raise ConfigError(
            f"weights do not match the {what}: "
            + "; ".join(parts)
            + ". Check the model name and dataset_shape, pass num_classes matching the "
            "checkpoint's classifier, and make sure the keys use the zoo's (torchvision) names"
        )
    try:
        model.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise ConfigError(f"cannot load weights into the {what}: {exc}") from exc
