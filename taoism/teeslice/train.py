"""TEESlice training as in the artifact: distil a teacher, train the sliced student, prune.

>>> from taoism.teeslice import TeeSliceConfig, train
>>> result = train(victim, public_backbone, data, TeeSliceConfig(student_epochs=5))
>>> result.model            # a SlicedNet; deploy with taoism.shield(..., strategy="teeslice")
>>> result.metrics          # accuracies, proxies and TEE share before/after pruning, wall times

``data`` has ``x_train``, ``y_train``, ``x_test``, ``y_test`` (e.g. a taoism.data ImageDataset):
the victim's private training data. Training reads only the victim's outputs on it (labels
judge pruning and report accuracy). Results are cached by content (configuration, the victim's
and public model's weights, the data), so a rerun returns the same model without training.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from taoism.errors import ConfigError
from taoism.security.cache import Cache, config_hash
from taoism.security.training import accuracy, classifier_head, predict_logits, seeded
from taoism.teeslice.config import TeeSliceConfig
from taoism.teeslice.cost import tee_share
from taoism.teeslice.layout import BackboneLayout, backbone_layout
from taoism.teeslice.losses import kd_loss, student_loss
from taoism.teeslice.prune import first_prune, next_prune
from taoism.teeslice.student import SlicedNet

__all__ = ["SliceData", "TeeSliceResult", "sliced_victim", "train"]

#: Bump when a change here changes what a cached sliced model would hold.
TEESLICE_CACHE_VERSION = 1


@dataclass(frozen=True)
class SliceData:
    """Private training data and a test set, as tensors (images NCHW, int64 labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class TeeSliceResult:
    """The trained sliced model, its figures, and whether it came from the cache."""

    model: SlicedNet
    metrics: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        items = sorted(part.items()) if isinstance(part, dict) else [("", part)]
        for k, t in items:
            t = t.detach().contiguous().cpu()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _set_classes(model: nn.Module, num_classes: int) -> None:
    name, head = classifier_head(model)
    if head.out_features != num_classes:
        parent, _, leaf = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model,
            leaf,
            nn.Linear(head.in_features, num_classes),
        )


def _plain_features(
    model: nn.Module, layout: BackboneLayout, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A plain (teacher) model's logits and block outputs, following ``layout``."""
    feats = []
    h = x
    for names in layout.blocks:
        for name in names:
            h = model.get_submodule(name)(h)
        feats.append(h)
    if layout.pool:
        h = model.get_submodule(layout.pool)(h)
    return model.get_submodule(layout.classifier)(torch.flatten(h, 1)), feats


def _epochs(
    n: int,
    epochs: int,
    batch: int,
    gen: torch.Generator,
    desc: str,
    progress: bool,
    step: Callable[[torch.Tensor], dict[str, float]],
) -> None:
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            if len(idx) >= 2:  # a batch of one breaks batch norm
                bar.set_postfix({k: f"{v:.3f}" for k, v in step(idx).items()})


def _distil_teacher(
    public: nn.Module,
    layout: BackboneLayout,
    x: torch.Tensor,
    v_logits: torch.Tensor,
    config: TeeSliceConfig,
    gen: torch.Generator,
    progress: bool,
) -> nn.Module:
    """A copy of the public model trained (all layers) to match the victim: KL at temperature T."""
    teacher = copy.deepcopy(public).requires_grad_(True)
    _set_classes(teacher, v_logits.shape[1])
    opt = torch.optim.Adam(
        teacher.parameters(), lr=config.teacher_lr, weight_decay=config.weight_decay
    )
    teacher.train()

    def step(idx: torch.Tensor) -> dict[str, float]:
        loss = kd_loss(
            _plain_features(teacher, layout, x[idx])[0], v_logits[idx], config.temperature
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"kd": float(loss.detach())}

    _epochs(
        len(x), config.teacher_epochs, config.batch_size, gen, "teeslice teacher", progress, step
    )
    return teacher.eval().requires_grad_(False)


def _fit(
    student: SlicedNet,
    teacher: nn.Module,
    layout: BackboneLayout,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    config: TeeSliceConfig,
    gen: torch.Generator,
    desc: str,
    progress: bool,
) -> None:
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    student.train()

    def step(idx: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            t_logits, t_feats = _plain_features(teacher, layout, x[idx])
        logits, feats = student.features(x[idx])
        loss, parts = student_loss(
            logits, feats, student.expected_flops(), t_logits, t_feats, y[idx], config
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    _epochs(len(x), epochs, config.batch_size, gen, desc, progress, step)
    student.eval()


def _prune(
    student: SlicedNet,
    fit: Callable[[SlicedNet, str], None],
    val_acc: Callable[[SlicedNet], float],
    config: TeeSliceConfig,
) -> tuple[SlicedNet, list[dict[str, Any]]]:
    """The artifact's iterative pruning; returns the last model that kept the accuracy rule."""
    base = val_acc(student)
    floor = config.keep_accuracy * base
    history: list[dict[str, Any]] = [
        {"step": 0, "proxies": len(student.proxy_list()), "val_accuracy": base}
    ]
    for step in range(1, config.max_prune_steps + 2):
        drop = (
            first_prune(student, config.prune_threshold, config.first_prune_fraction)
            if step == 1
            else next_prune(student, config.prune_fraction)
        )
        if not student.proxy_list():
            break
        trial = copy.deepcopy(student)
        trial.remove_proxies(drop)
        if drop:
            fit(trial, f"teeslice prune step {step}")
        acc = val_acc(trial)
        kept = acc >= floor
        history.append(
            {
                "step": step,
                "dropped": len(drop),
                "proxies": len(trial.proxy_list()),
                "val_accuracy": acc,
                "kept": kept,
            }
        )
        if not kept:
            break
        student = trial
    return student, history


def _cache_key(victim: nn.Module, public: nn.Module, data: Any, config: TeeSliceConfig) -> str:
    return config_hash(
        {
            "kind": "teeslice",
            "version": TEESLICE_CACHE_VERSION,
            "config": config.key(),
            "victim": [type(victim).__name__, _digest(victim.state_dict())],
            "public": [type(public).__name__, _digest(public.state_dict())],
            "data": _digest(data.x_train, data.y_train, data.x_test, data.y_test),
        }
    )


def train(
    victim: nn.Module,
    public_backbone: nn.Module,
    data: Any,
    config: TeeSliceConfig = TeeSliceConfig(),
    *,
    cache_dir: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> TeeSliceResult:
    """Train a TEESlice sliced model of ``victim`` over a frozen copy of ``public_backbone``."""
    for name in ("x_train", "y_train", "x_test", "y_test"):
        if not torch.is_tensor(getattr(data, name, None)):
            raise ConfigError(
                f"teeslice.train: data.{name} must be a tensor; pass a taoism.data "
                "ImageDataset or a taoism.teeslice.SliceData"
            )
    layout = backbone_layout(public_backbone)  # fails early on an unsupported backbone
    cache = Cache(cache_dir) if use_cache else None
    key = _cache_key(victim, public_backbone, data, config)
    x, y = data.x_train.float(), data.y_train.long()
    input_shape = tuple(x.shape[1:])
    v_logits = predict_logits(victim, x)
    num_classes = int(v_logits.shape[1])

    def fresh() -> SlicedNet:
        return SlicedNet(
            copy.deepcopy(public_backbone), input_shape, num_classes, config.max_proxies
        )

    if cache is not None:
        sd, info = cache.get_tensors("teeslice", key), cache.get_json("teeslice", key)
        if sd is not None and info is not None:
            model = fresh()
            model.restrict(info["structure"])
            model.load_state_dict(sd)
            return TeeSliceResult(model.eval(), info["metrics"], cached=True)

    times: dict[str, float] = {}
    with seeded(config.seed) as gen:
        perm = torch.randperm(len(x), generator=gen)
        n_val = int(round(config.val_fraction * len(x)))
        tr, va = perm[n_val:], perm[:n_val]
        if not n_val:
            va = tr
        xt, yt, vt = x[tr], y[tr], v_logits[tr]
        t0 = time.perf_counter()
        teacher = _distil_teacher(public_backbone, layout, xt, vt, config, gen, progress)
        times["teacher_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        student = fresh()
        student.head.classifier.load_state_dict(
            teacher.get_submodule(layout.classifier).state_dict()
        )
        _fit(
            student,
            teacher,
            layout,
            xt,
            yt,
            config.student_epochs,
            config,
            gen,
            "teeslice student",
            progress,
        )
        times["student_s"] = time.perf_counter() - t0
        before = {
            "test_accuracy": accuracy(student, data.x_test, data.y_test),
            **tee_share(student),
        }
        t0 = time.perf_counter()
        history: list[dict[str, Any]] = []
        if config.prune:
            student, history = _prune(
                student,
                lambda m, d: _fit(
                    m, teacher, layout, xt, yt, config.prune_every, config, gen, d, progress
                ),
                lambda m: accuracy(m, x[va], y[va]),
                config,
            )
        times["prune_s"] = time.perf_counter() - t0
    after = {"test_accuracy": accuracy(student, data.x_test, data.y_test), **tee_share(student)}
    metrics = {
        "victim_test_accuracy": accuracy(victim, data.x_test, data.y_test),
        "teacher_test_accuracy": accuracy(teacher, data.x_test, data.y_test),
        "before_prune": before,
        "after_prune": after,
        "prune_history": history,
        "times": times,
        "train_size": len(tr),
        "val_size": n_val,
    }
    if cache is not None:
        cache.put_tensors(
            "teeslice", key, {k: v.detach().clone() for k, v in student.state_dict().items()}
        )
        cache.put_json("teeslice", key, {"structure": student.structure(), "metrics": metrics})
    return TeeSliceResult(student.eval(), metrics)


def sliced_victim(
    victim: nn.Module,
    public_backbone: nn.Module,
    data: Any,
    config: TeeSliceConfig = TeeSliceConfig(),
    *,
    cache_dir: str | None = None,
    progress: bool = False,
) -> SlicedNet:
    """The trained (cached) TEESlice model of ``victim``, ready for ``strategy="teeslice"``."""
    return train(
        victim, public_backbone, data, config, cache_dir=cache_dir, progress=progress
    ).model
