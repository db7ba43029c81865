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
import dataclasses
import hashlib
import math
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
TEESLICE_CACHE_VERSION = 3


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


#: The teacher's logits and block outputs over the training data are computed once per run
#: when they take at most this many bytes (the teacher is fixed while the student trains).
TEACHER_CACHE_BYTES = 1 << 30


def _teacher_outputs(
    teacher: nn.Module, layout: BackboneLayout, x: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The fixed teacher's logits and block outputs for every row of ``x`` (eval mode), or None
    when they would exceed :data:`TEACHER_CACHE_BYTES` (then each step computes its own)."""
    with torch.no_grad():
        logits, feats = _plain_features(teacher, layout, x[:2])
        per_row = (logits[0].numel() + sum(f[0].numel() for f in feats)) * logits.element_size()
        if per_row * len(x) > TEACHER_CACHE_BYTES:
            return None
        parts = [
            _plain_features(teacher, layout, x[i : i + batch]) for i in range(0, len(x), batch)
        ]
    return torch.cat([p[0] for p in parts]), [
        torch.cat([p[1][b] for p in parts]) for b in range(len(feats))
    ]


def _lr_at(config: TeeSliceConfig, base: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) of a phase of ``epochs`` (``lr_schedule``)."""
    if config.lr_schedule == "constant" or epochs <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _optimizer(
    model: nn.Module, kind: str, lr: float, config: TeeSliceConfig
) -> torch.optim.Optimizer:
    """``kind`` ("sgd" / "adam") over the trainable parameters; no weight decay on the gates."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in named if not n.endswith("alphas")],
            "weight_decay": config.weight_decay,
        },
        {
            "params": [p for n, p in named if n.endswith("alphas")],
            "weight_decay": 0.0,
            "lr_scale": config.alpha_lr_scale,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.Adam(groups, lr=lr)


def _epochs(
    model: nn.Module,
    n: int,
    epochs: int,
    lr: float,
    kind: str,
    config: TeeSliceConfig,
    gen: torch.Generator,
    desc: str,
    progress: bool,
    step: Callable[[torch.Tensor, torch.optim.Optimizer], dict[str, float]],
    on_interval: Callable[[int], bool] | None = None,
) -> None:
    """``epochs`` epochs of minibatch ``step``s over ``n`` samples at the scheduled learning
    rate; every ``config.prune_every`` epochs ``on_interval(epoch)``, which returns whether it
    changed the model's parameters (the optimizer is then rebuilt)."""
    opt = _optimizer(model, kind, lr, config)
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, lr, epoch, epochs) * group.get("lr_scale", 1.0)
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) >= 2:  # a batch of one breaks batch norm
                bar.set_postfix({k: f"{v:.3f}" for k, v in step(idx, opt).items()})
        every = max(config.prune_every, 1)
        if on_interval is not None and (epoch + 1) % every == 0:
            if on_interval(epoch + 1):
                opt = _optimizer(model, kind, lr, config)
            model.train()
    model.eval()


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

    def step(idx: torch.Tensor, opt: torch.optim.Optimizer) -> dict[str, float]:
        loss = kd_loss(
            _plain_features(teacher, layout, x[idx])[0], v_logits[idx], config.temperature
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"kd": float(loss.detach())}

    _epochs(
        teacher,
        len(x),
        config.teacher_epochs,
        config.teacher_lr,
        config.teacher_optimizer,
        config,
        gen,
        "teeslice teacher",
        progress,
        step,
    )
    return teacher.eval().requires_grad_(False)


def _fit(
    student: SlicedNet,
    teacher: nn.Module,
    layout: BackboneLayout,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    flops_weight: float,
    config: TeeSliceConfig,
    gen: torch.Generator,
    desc: str,
    progress: bool,
    on_interval: Callable[[int], bool] | None = None,
    fixed: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
) -> None:
    """Train the student's slices, gates and head against the teacher (the artifact's loss).

    One student pass per step: with ``feature_detach`` the block-local features come from the
    same pass as the logits (:meth:`SlicedNet.features` with ``local=True`` returns both).
    ``fixed``: the teacher's outputs on every row of ``x`` (:func:`_teacher_outputs`), if known."""
    loss_config = dataclasses.replace(config, flops_weight=flops_weight)

    def step(idx: torch.Tensor, opt: torch.optim.Optimizer) -> dict[str, float]:
        if fixed is not None:
            t_logits, t_feats = fixed[0][idx], [f[idx] for f in fixed[1]]
        else:
            with torch.no_grad():
                t_logits, t_feats = _plain_features(teacher, layout, x[idx])
        logits, feats = student.features(x[idx], local=config.feature_detach)
        loss, parts = student_loss(
            logits,
            feats,
            student.expected_flops(config.flops_norm),
            t_logits,
            t_feats,
            y[idx],
            loss_config,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    _epochs(
        student,
        len(x),
        epochs,
        lr,
        config.optimizer,
        config,
        gen,
        desc,
        progress,
        step,
        on_interval,
    )


def _prune(
    student: SlicedNet,
    fit: Callable[[SlicedNet, Callable[[int], bool]], None],
    val_acc: Callable[[SlicedNet], float],
    config: TeeSliceConfig,
) -> tuple[SlicedNet, list[dict[str, Any]]]:
    """The artifact's iterative pruning (``nettailor_iterative.py``), on a copy of ``student``.

    First prune, then one fine-tuning run (``fit(model, on_interval)``); at each interval the
    model is evaluated and, if it keeps the rule, remembered and pruned further. Returns the
    more accurate of the last remembered model and the final one (the unpruned student if the
    rule never held) and one history entry per evaluation.
    """
    base = val_acc(student)
    floor = config.keep_accuracy * base
    history: list[dict[str, Any]] = [
        {"step": 0, "epoch": 0, "proxies": len(student.proxy_list()), "val_accuracy": base}
    ]
    model = copy.deepcopy(student)
    drop = first_prune(
        model, config.prune_threshold, config.first_prune_fraction, config.first_prune_max
    )
    model.remove_proxies(drop)
    kept: dict[str, Any] = {}  # the last model that kept the rule, and its accuracy
    steps = [len(drop)]  # proxies dropped by each step so far

    def record(epoch: int, acc: float) -> None:
        fresh = history[-1]["step"] != len(steps)  # first evaluation since the last step
        entry = {"step": len(steps), "epoch": epoch, "dropped": steps[-1] if fresh else 0}
        entry.update({"proxies": len(model.proxy_list()), "val_accuracy": acc})
        history.append({**entry, "kept": acc >= floor})

    def on_interval(epoch: int) -> bool:
        acc = val_acc(model)
        ok = acc >= floor
        record(epoch, acc)
        if not ok:
            return False
        kept.update(model=copy.deepcopy(model), accuracy=acc)
        last = epoch >= config.prune_epochs  # no epoch left to fine-tune a new step
        if last or len(steps) > config.max_prune_steps or not model.proxy_list():
            return False
        drop = next_prune(model, config.prune_fraction)
        model.remove_proxies(drop)
        steps.append(len(drop))
        return True

    fit(model, on_interval)
    final = val_acc(model)
    if history[-1]["epoch"] != config.prune_epochs or len(history) == 1:
        record(config.prune_epochs, final)
    if not kept:
        return (model if final >= floor else student), history
    return (model if final >= kept["accuracy"] else kept["model"]), history


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
        net = SlicedNet(
            copy.deepcopy(public_backbone),
            input_shape,
            num_classes,
            config.max_proxies,
            merge_relu=config.merge_relu,
            alpha_init=config.alpha_init,
            proxy_pool=config.proxy_pool,
        )
        net.backbone_bn_train = config.backbone_bn == "private"
        return net

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
        fixed = (
            _teacher_outputs(teacher, layout, xt)
            if config.student_epochs or (config.prune and config.prune_epochs)
            else None
        )
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
            config.lr,
            config.flops_weight,
            config,
            gen,
            "teeslice student",
            progress,
            fixed=fixed,
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
                lambda m, hook: _fit(
                    m,
                    teacher,
                    layout,
                    xt,
                    yt,
                    config.prune_epochs,
                    config.prune_lr,
                    config.prune_flops_weight,
                    config,
                    gen,
                    "teeslice pruning",
                    progress,
                    hook,
                    fixed,
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
