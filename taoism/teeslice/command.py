"""``taoism teeslice train``: public model, victim and TEESlice model on an offline data set."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taoism.errors import ConfigError
from taoism.security.cache import Cache, config_hash
from taoism.security.training import (
    accuracy,
    pretrain_rotation,
    reset_head,
    seeded,
    train_classifier,
)
from taoism.teeslice.config import TeeSliceConfig
from taoism.teeslice.train import SliceData, TeeSliceResult, train

__all__ = ["build_backbone", "main_teeslice_train", "run_teeslice"]


def build_backbone(model: str, shape: str, channels: int, num_classes: int, seed: int) -> nn.Module:
    """Zoo model ``model`` for a data set of ``shape``; ResNet/VGG/AlexNet on grayscale or
    small images are built in their CIFAR variant with ``channels`` input channels."""
    from taoism import zoo
    from taoism.zoo import plain, resnet

    key = zoo._resolve(model)
    if shape in zoo.supported_shapes(key):
        return zoo.get_model(key, dataset_shape=shape, num_classes=num_classes, seed=seed).train()
    builders = {
        "resnet18": resnet.resnet18,
        "resnet34": resnet.resnet34,
        "resnet50": resnet.resnet50,
        "vgg16_bn": plain.vgg16_bn,
        "alexnet": plain.alexnet,
    }
    if key not in builders:
        zoo.get_model(key, dataset_shape=shape)  # raises the zoo's own error
    with seeded(seed):
        return builders[key](num_classes, "cifar", in_channels=channels)


def _check_backbone(model: str, ds: Any) -> None:
    """ConfigError unless ``model`` takes ``ds``'s images and TEESlice can place proxies in it."""
    from taoism.teeslice.layout import backbone_layout

    net = build_backbone(model, ds.shape, ds.channels, ds.num_classes, 0).eval()
    try:
        with torch.no_grad():
            net(ds.x_train[:1])
    except RuntimeError as exc:
        raise ConfigError(
            f"teeslice: {model} cannot run on the {ds.name} images "
            f"{tuple(ds.x_train.shape[1:])}: {exc}. Use a data set with larger images "
            "(e.g. glyphs or cifar10) or a backbone with fewer down-sampling stages "
            "(resnet18, gap_resnet20)"
        ) from None
    backbone_layout(net)


def _check_learned(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, model: str, ds: Any, lr: float, epochs: int
) -> None:
    """ConfigError if the victim did not learn its own training set (under twice chance): every
    TEESlice figure would then compare against a broken model."""
    acc, chance = accuracy(net, x, y), 1.0 / ds.num_classes
    if not acc >= 2 * chance:  # also NaN
        raise ConfigError(
            f"teeslice: the {model} victim did not learn {ds.name}: {acc:.1%} on its own "
            f"training images (chance {chance:.1%}) after {epochs} epochs at lr={lr:g}; change "
            "the learning rate (--lr), train longer (--epochs) or pick a backbone with batch "
            "norm before slicing it"
        )


def _trained(
    model: str,
    ds: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    role: str,
    seed: int,
    epochs: int,
    lr: float,
    cache: Cache,
    progress: bool,
    task: str = "supervised",
) -> nn.Module:
    """``model`` trained on ``(x, y)`` (``task="rotation"``: rotation-pretrained, fresh head)."""
    if task not in ("supervised", "rotation"):
        raise ConfigError(f"public_task must be 'rotation' or 'supervised', got {task!r}")
    net = build_backbone(model, ds.shape, ds.channels, ds.num_classes, seed)
    key = config_hash(
        {
            "kind": f"teeslice-{role}",
            "model": model,
            "data": ds.fingerprint,
            "seed": seed,
            "epochs": epochs,
            "lr": lr,
            "n": len(x),
            "task": task,
        }
    )
    sd = cache.get_tensors(f"teeslice-{role}", key)
    if sd is None:
        if task == "rotation":
            pretrain_rotation(
                net,
                x,
                epochs=epochs,
                lr=lr,
                seed=seed,
                progress=progress,
                desc=f"{role} {model} (rotation)",
            )
            reset_head(net, seed)
        else:
            train_classifier(
                net,
                x,
                y,
                epochs=epochs,
                lr=lr,
                seed=seed,
                weight_decay=5e-4,
                progress=progress,
                desc=f"{role} {model}",
            )
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cache.put_tensors(f"teeslice-{role}", key, sd)
    net.load_state_dict(sd)
    return net.eval()


def run_teeslice(
    model: str,
    dataset: str,
    *,
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    train_size: int | None = None,
    public_epochs: int = 10,
    victim_epochs: int = 10,
    lr: float = 0.05,
    public_task: str = "rotation",
    config: TeeSliceConfig | None = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[TeeSliceResult, nn.Module, dict[str, Any]]:
    """Split ``dataset``'s training set in a public and a private half, train the public model
    (``public_task``: rotation pretraining without labels, as the security evaluation, or
    supervised) and the victim (``model``) on them, then TEESlice on the private half.

    Returns the TEESlice result, the victim and the figures (JSON-able)."""
    from taoism.data import load_dataset
    from taoism.security.experiment import torch_threads

    config = config or TeeSliceConfig(seed=seed)
    cache = Cache(cache_dir)
    ds = load_dataset(dataset, data_root)
    _check_backbone(model, ds)  # fail early, with a typed error
    with torch_threads(threads):
        start = time.perf_counter()
        with seeded(seed) as gen:
            perm = torch.randperm(len(ds.y_train), generator=gen)
        if train_size is not None:
            perm = perm[:train_size]
        pub, priv = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        public = _trained(
            model,
            ds,
            ds.x_train[pub],
            ds.y_train[pub],
            "public",
            seed + 1,
            public_epochs,
            lr,
            cache,
            progress,
            public_task,
        )
        victim = _trained(
            model,
            ds,
            ds.x_train[priv],
            ds.y_train[priv],
            "victim",
            seed + 2,
            victim_epochs,
            lr,
            cache,
            progress,
        )
        _check_learned(victim, ds.x_train[priv], ds.y_train[priv], model, ds, lr, victim_epochs)
        t0 = time.perf_counter()
        data = SliceData(ds.x_train[priv], ds.y_train[priv], ds.x_test, ds.y_test)
        result = train(victim, public, data, config, cache_dir=str(cache.root), progress=progress)
        wall = time.perf_counter() - t0
        out = {
            "model": model,
            "dataset": ds.name,
            "seed": seed,
            "config": dataclasses.asdict(config),
            "threads": torch.get_num_threads(),
            "public_epochs": public_epochs,
            "public_task": public_task,
            "victim_epochs": victim_epochs,
            "teeslice_wall_s": wall,
            "total_wall_s": time.perf_counter() - start,
            "cached": result.cached,
            **result.metrics,
        }
    return result, victim, out


def main_teeslice_train(
    model: str, dataset: str, *, json_out: str | os.PathLike | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``taoism teeslice train``: :func:`run_teeslice`, figures printed-ready and saved as JSON."""
    _, _, out = run_teeslice(model, dataset, **kwargs)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(out, indent=1))
    return out
