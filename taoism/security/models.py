"""The trained models of one experiment seed: public model, victim and the attacker's shadow.

Each is trained once per (model, data set, seed, configuration) and cached under its config
hash. Data: :func:`splits_for` (samples of one distribution, or the glyph set's font groups).

* **public** model: on a data set that carries its own public data (``glyphs``: another script
  in other fonts), supervised on it, then its classifier is replaced by a fresh head of the
  victim's size; otherwise pretrained on the public half of the training split (rotation or
  supervised, ``AttackConfig.public_task``). A sliced (TEESlice) model takes its plain
  backbone's public model as its backbone.
* **victim**: starts from the public model with a fresh head (fresh private slices for a sliced
  model) and is fine-tuned on target-train.
* **shadow** (membership inference): the attacker's own model, trained the victim's way from
  the public model on shadow-train, never from the surrogate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from taoism.data import AttackSplits, ImageDataset, attack_splits, group_splits, load_dataset
from taoism.data.datasets import canonical_name
from taoism.errors import ConfigError
from taoism.security.cache import Cache, config_hash
from taoism.security.training import (
    accuracy,
    classifier_head,
    pretrain_rotation,
    reset_head,
    seeded,
    train_classifier,
)

__all__ = [
    "build",
    "dataset_for",
    "is_sliced",
    "linear_probe",
    "prepare_models",
    "shadow_state",
    "sliced_counterpart",
    "splits_for",
    "subseed",
    "torch_threads",
]

State = dict[str, torch.Tensor]


@lru_cache(maxsize=2)
def _dataset(
    name: str, root: str | None, cache_root: str | None, options: tuple[tuple[str, Any], ...]
) -> ImageDataset:
    # Read-only use: every caller indexes (copies) the tensors, never writes into them.
    if name == "glyphs":
        return load_dataset(name, root, cache_dir=cache_root, **dict(options))
    return load_dataset(name, root, **dict(options))


def dataset_for(
    name: str,
    root: str | os.PathLike | None,
    cache_root: str | os.PathLike | None = None,
    options: tuple[tuple[str, Any], ...] = (),
) -> ImageDataset:
    """The data set ``name`` (memoised per process); glyph renderings are cached in ``cache_root``."""
    return _dataset(
        canonical_name(name),
        os.fspath(root) if root is not None else None,
        os.fspath(cache_root) if cache_root is not None else None,
        tuple(options),
    )


def splits_for(ds: ImageDataset, seed: int, config: Any) -> AttackSplits:
    """The experiment's disjoint splits of ``ds``'s training set for ``seed``."""
    if "groups" in ds.meta:
        return group_splits(ds.meta["groups"], seed, split_size=config.split_size)
    return attack_splits(
        len(ds.y_train), seed, split_size=config.split_size, public_size=config.public_size
    )


def build(model: str, ds: ImageDataset, seed: int = 0, num_classes: int | None = None) -> nn.Module:
    """Zoo model ``model`` for ``ds``'s shape and classes, initialised from ``seed``."""
    from taoism.zoo import get_model

    return get_model(
        model, dataset_shape=ds.shape, num_classes=num_classes or ds.num_classes, seed=seed
    )


def subseed(seed: int, tag: str) -> int:
    """A per-purpose seed derived from the experiment seed (stable across runs)."""
    return int(config_hash({"seed": seed, "tag": tag}, length=12), 16) % (2**31 - 1)


def is_sliced(net: nn.Module) -> bool:
    """Whether ``net`` is a TEESlice model (public backbone, private slices)."""
    return callable(getattr(net, "public_modules", None)) and callable(
        getattr(net, "private_modules", None)
    )


def plain_backbone(model: str) -> str:
    """``teeslice_resnet18`` -> ``resnet18``: the plain architecture of a sliced model's backbone."""
    key = model.strip().lower().replace("-", "").replace("_", "")
    if not key.startswith("teeslice"):
        raise ConfigError(
            f"model {model!r} is sliced but not named teeslice_<backbone>; cannot "
            "tell which plain architecture to pretrain as its public backbone"
        )
    from taoism.zoo import _resolve

    return _resolve(key[len("teeslice") :])


def sliced_counterpart(model: str) -> str | None:
    """``small_cnn`` -> ``teeslice_small_cnn``: the zoo's TEESlice model over plain ``model``
    (None when the zoo has none, or ``model`` is itself sliced or unknown)."""
    from taoism.zoo import _resolve, list_models

    try:
        key = _resolve(model)
    except ConfigError:
        return None
    if key.startswith("teeslice_"):
        return None
    name = f"teeslice_{key}"
    return name if name in list_models() else None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _copy(net: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _train_public(model: str, ds: ImageDataset, seed: int, config: Any, progress: bool) -> State:
    net = build(model, ds, subseed(seed, "public-init"))
    if "public" in ds.meta:  # its own public data: other classes in other fonts
        pub = ds.meta["public"]
        pnet = build(model, ds, subseed(seed, "public-init"), num_classes=int(pub["num_classes"]))
        train_classifier(
            pnet,
            pub["x"],
            pub["y"],
            epochs=config.public_epochs,
            lr=config.public_lr,
            batch_size=config.public_batch,
            weight_decay=5e-4,
            seed=subseed(seed, "public"),
            progress=progress,
            desc=f"public model (public classes, seed {seed})",
        )
        head, _ = classifier_head(net)
        net.load_state_dict(
            {k: v for k, v in pnet.state_dict().items() if not k.startswith(head + ".")},
            strict=False,
        )
    else:
        sp = splits_for(ds, seed, config)
        xp = ds.x_train[sp.public]
        if config.public_task == "rotation":
            pretrain_rotation(
                net,
                xp,
                epochs=config.public_epochs,
                lr=config.public_lr,
                batch_size=config.public_batch,
                seed=subseed(seed, "public"),
                progress=progress,
                desc=f"public model (rotation, seed {seed})",
            )
        else:
            train_classifier(
                net,
                xp,
                ds.y_train[sp.public],
                epochs=config.public_epochs,
                lr=config.public_lr,
                batch_size=config.public_batch,
                weight_decay=5e-4,
                seed=subseed(seed, "public"),
                progress=progress,
                desc=f"public model (supervised, seed {seed})",
            )
    reset_head(net, subseed(seed, "public-head"))
    return _copy(net)


def public_state(
    model: str, ds: ImageDataset, seed: int, config: Any, cache: Cache, *, progress: bool = False
) -> State:
    """The public model's state dict (trained, or read from the cache)."""
    base = {"model": model, "dataset": ds.name, "data": ds.fingerprint, "seed": seed}
    pkey = config_hash({"kind": "public", **base, **config.public_key()})
    sd = cache.get_tensors("public", pkey)
    if sd is None:
        net = build(model, ds, subseed(seed, "public-init"))
        if is_sliced(net):
            net.load_backbone(
                public_state(plain_backbone(model), ds, seed, config, cache, progress=progress)
            )
            sd = _copy(net)
        else:
            sd = _train_public(model, ds, seed, config, progress)
        cache.put_tensors("public", pkey, sd)
    return sd


def _fresh_private(net: nn.Module, seed: int, tag: str) -> None:
    """A fresh head (or, for a sliced model, fresh private slices and head) from ``seed``."""
    if is_sliced(net):
        with seeded(subseed(seed, tag + "-slices")):
            for name in net.private_modules():
                for m in net.get_submodule(name).modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
    else:
        reset_head(net, subseed(seed, tag + "-head"))


def _fine_tune(
    model: str,
    ds: ImageDataset,
    public_sd: State,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    tag: str,
    config: Any,
    progress: bool,
    epochs: int,
    lr: float,
) -> nn.Module:
    net = build(model, ds)
    net.load_state_dict(public_sd)
    _fresh_private(net, seed, tag)
    train_classifier(
        net,
        x,
        y,
        epochs=epochs,
        lr=lr,
        batch_size=config.victim_batch,
        weight_decay=config.victim_weight_decay,
        seed=subseed(seed, tag),
        progress=progress,
        desc=f"{tag} (seed {seed})",
    )
    return net


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    _, head = classifier_head(net)
    feats: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().flatten(1)))
    try:
        net.eval()
        with torch.inference_mode():
            for i in range(0, len(x), 256):  # 256: faster than larger batches on one core
                net(x[i : i + 256])
    finally:
        hook.remove()
    return torch.cat(feats)


def linear_probe(
    net: nn.Module, ds: ImageDataset, train_idx: torch.Tensor, *, seed: int, epochs: int = 100
) -> float:
    """Test accuracy of a linear classifier on ``net``'s frozen penultimate features."""
    with torch.inference_mode():
        f_tr, f_te = _features(net, ds.x_train[train_idx]), _features(net, ds.x_test)
    mu, sd = f_tr.mean(0), f_tr.std(0).clamp_min(1e-6)
    f_tr, f_te = (f_tr - mu) / sd, (f_te - mu) / sd
    with seeded(seed):
        lin = nn.Linear(f_tr.shape[1], ds.num_classes)
    train_classifier(
        lin,
        f_tr.clone(),
        ds.y_train[train_idx],
        epochs=epochs,
        lr=0.05,
        batch_size=256,
        weight_decay=1e-4,
        seed=seed,
        desc="linear probe",
    )
    return accuracy(lin, f_te, ds.y_test)


def prepare_models(
    model: str, ds: ImageDataset, seed: int, config: Any, cache: Cache, *, progress: bool = False
) -> tuple[State, State, dict[str, Any]]:
    """The public model's and the victim's state dicts (trained, or read from the cache) and
    the victim's figures (accuracy, train/test gap, the public model's linear-probe value)."""
    with torch_threads(config.threads):
        sp = splits_for(ds, seed, config)
        base = {"model": model, "dataset": ds.name, "data": ds.fingerprint, "seed": seed}
        pub = public_state(model, ds, seed, config, cache, progress=progress)
        vkey = config_hash({"kind": "victim", **base, **config.victim_key()})
        victim_sd, info = cache.get_tensors("victim", vkey), cache.get_json("victim", vkey)
        if victim_sd is None or info is None:
            xt, yt = ds.x_train[sp.target_train], ds.y_train[sp.target_train]
            net = _fine_tune(
                model,
                ds,
                pub,
                xt,
                yt,
                seed,
                "victim",
                config,
                progress,
                config.victim_epochs,
                config.victim_lr,
            )
            test_acc, train_acc = accuracy(net, ds.x_test, ds.y_test), accuracy(net, xt, yt)
            info = {
                "victim_test_accuracy": test_acc,
                "victim_train_accuracy": train_acc,
                "victim_train_test_gap": train_acc - test_acc,
                "victim_nonmember_accuracy": accuracy(
                    net, ds.x_train[sp.target_test], ds.y_train[sp.target_test]
                ),
                "members_per_class": len(yt) / ds.num_classes,
                "splits": sp.sizes(),
                "chance": 1.0 / ds.num_classes,
            }
            if not is_sliced(net):
                pnet, rnet = build(model, ds), build(model, ds, subseed(seed, "random-init"))
                pnet.load_state_dict(pub)
                info["public_probe_accuracy"] = linear_probe(
                    pnet, ds, sp.target_train, seed=subseed(seed, "probe")
                )
                info["random_probe_accuracy"] = linear_probe(
                    rnet, ds, sp.target_train, seed=subseed(seed, "probe")
                )
            victim_sd = _copy(net)
            cache.put_tensors("victim", vkey, victim_sd)
            cache.put_json("victim", vkey, info)
    return pub, victim_sd, info


def shadow_state(
    model: str, ds: ImageDataset, seed: int, config: Any, cache: Cache, *, progress: bool = False
) -> State:
    """The attacker's shadow model: the victim's recipe from the public model on shadow-train."""
    base = {"model": model, "dataset": ds.name, "data": ds.fingerprint, "seed": seed}
    key = config_hash(
        {
            "kind": "shadow",
            **base,
            **config.victim_key(),
            "shadow": [config.shadow_epochs, config.shadow_lr],
        }
    )
    sd = cache.get_tensors("shadow", key)
    if sd is None:
        with torch_threads(config.threads):
            sp = splits_for(ds, seed, config)
            pub = public_state(model, ds, seed, config, cache, progress=progress)
            net = _fine_tune(
                model,
                ds,
                pub,
                ds.x_train[sp.shadow_train],
                ds.y_train[sp.shadow_train],
                seed,
                "shadow",
                config,
                progress,
                config.shadow_epochs if config.shadow_epochs is not None else config.victim_epochs,
                config.shadow_lr if config.shadow_lr is not None else config.victim_lr,
            )
            sd = _copy(net)
        cache.put_tensors("shadow", key, sd)
    return sd
