"""The TEESlice victim of the evaluation: slices trained by :mod:`taoism.teeslice` (as published).

For the ``teeslice`` row of a plain model M the deployed model is what
``taoism.teeslice.sliced_victim(victim, public, data, config)`` returns (called here as
``taoism.teeslice.train``, the same cached training, for its figures): M's public model as the frozen
backbone, gated proxy slices and a private head distilled from M's victim on the victim's own
private data (target-train), pruned by the artifact's rule. The attacker's MIA shadow is made
the same way from its own shadow model on shadow-train (the victim's recipe, never the
surrogate). The training is cached by content under the experiment's cache directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from taoism.data import ImageDataset
from taoism.errors import ConfigError
from taoism.security.cache import Cache
from taoism.security.models import (
    build,
    prepare_models,
    public_state,
    shadow_state,
    splits_for,
    subseed,
    torch_threads,
)
from taoism.security.training import seeded

if TYPE_CHECKING:
    from taoism.teeslice import SlicedNet

__all__ = ["attacker_sliced", "sliced_model", "teeslice_applies", "trains_slices"]

ROLES = ("victim", "shadow")


def trains_slices(model: str, strategy: str) -> bool:
    """Whether ``strategy`` on ``model`` deploys slices trained by :mod:`taoism.teeslice`: the
    ``teeslice`` row of a plain model (a sliced zoo model, ``teeslice_*``, is deployed as is)."""
    from taoism.zoo import _resolve

    return strategy == "teeslice" and not _resolve(model).startswith("teeslice_")


def teeslice_applies(model: str, ds: ImageDataset) -> str | None:
    """None when TEESlice can slice plain ``model`` on ``ds``, else the reason it cannot."""
    from taoism.teeslice import backbone_layout

    try:
        backbone_layout(build(model, ds))
    except ConfigError as exc:
        return str(exc)
    return None


def sliced_model(
    model: str,
    ds: ImageDataset,
    seed: int,
    config: Any,
    cache: Cache,
    *,
    role: str = "victim",
    progress: bool = False,
) -> tuple[SlicedNet, dict[str, Any]]:
    """The TEESlice model of plain ``model``'s victim (or the attacker's shadow) and its figures."""
    from taoism.teeslice import SliceData, train

    if role not in ROLES:
        raise ConfigError(f"sliced_model: role must be one of {ROLES}, got {role!r}")
    with torch_threads(config.threads):
        sp = splits_for(ds, seed, config)
        pub_sd = public_state(model, ds, seed, config, cache, progress=progress)
        if role == "victim":
            plain_sd, idx = (
                prepare_models(model, ds, seed, config, cache, progress=progress)[1],
                sp.target_train,
            )
        else:
            plain_sd, idx = (
                shadow_state(model, ds, seed, config, cache, progress=progress),
                sp.shadow_train,
            )
        public, plain = build(model, ds), build(model, ds)
        public.load_state_dict(pub_sd)
        plain.load_state_dict(plain_sd)
        data = SliceData(ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test)
        result = train(
            plain.eval(),
            public.eval(),
            data,
            config.teeslice_config(subseed(seed, f"teeslice-{role}")),
            cache_dir=str(cache.root),
            progress=progress,
        )
    m = result.metrics
    info = {
        "victim_test_accuracy": m["victim_test_accuracy"],
        "sliced_test_accuracy": m["after_prune"]["test_accuracy"],
        "accuracy_vs_victim": m["after_prune"]["test_accuracy"] - m["victim_test_accuracy"],
        "teacher_test_accuracy": m["teacher_test_accuracy"],
        "before_prune": m["before_prune"],
        "after_prune": m["after_prune"],
        "prune_steps": len(m["prune_history"]) - 1 if m["prune_history"] else 0,
        "train_size": m["train_size"],
        "val_size": m["val_size"],
        "times": m["times"],
        "cached": result.cached,
    }
    return result.model.eval(), info


def attacker_sliced(
    model: str, ds: ImageDataset, like: SlicedNet, seed: int, public_sd: dict[str, torch.Tensor]
) -> SlicedNet:
    """A fresh sliced model of ``like``'s structure (the attacker knows the architecture): plain
    ``model``'s public weights as the backbone, slices and head from the attacker's own seed."""
    from taoism.teeslice import SlicedNet

    plain = build(model, ds, subseed(seed, "attacker-init"))
    plain.load_state_dict(public_sd)
    with seeded(subseed(seed, "attacker-slices")):
        c, h, w = like.input_shape
        net = SlicedNet(plain, (c, h, w), int(ds.num_classes), like.max_proxies)
    net.restrict(like.structure())
    return net.eval()
