"""The TEESlice training configuration: every coefficient of the artifact, overridable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from taoism.errors import ConfigError

__all__ = ["TeeSliceConfig"]


@dataclass(frozen=True)
class TeeSliceConfig:
    """How :func:`taoism.teeslice.train` distils, trains and prunes.

    Defaults are the artifact's (``nettailor_cifar10.py`` and the scripts it calls), except the
    training lengths and learning rates, which are sized for the small offline data sets on a
    2-core CPU and were chosen by measurement (BENCHMARKS.md, "TEESlice training").

    Loss: ``kd_weight * KD(student, teacher; temperature) + feature_weight * MSE(features)
    + flops_weight * expected_flops + ce_weight * CE(student, labels)``; with
    ``feature_detach`` each block's feature is recomputed from detached inputs (block-local, as
    the artifact). Student architecture: ``merge_relu``, ``alpha_init``, ``proxy_pool`` (see
    :class:`taoism.teeslice.SlicedNet`).
    Pruning (a fine-tuning phase of ``prune_epochs`` epochs at ``prune_lr``, the FLOPs term
    weighted ``prune_flops_weight``): first drop every proxy whose gate is below
    ``prune_threshold`` and at least the ``first_prune_fraction`` with the lowest gates (at
    most ``first_prune_max`` of them, when every gate is below the threshold); then every
    ``prune_every`` epochs, if the validation accuracy is >= ``keep_accuracy`` x the
    pre-prune accuracy, remember the model and drop the ``prune_fraction`` with the lowest
    gates (at least one). At the end the more accurate of the last remembered model and the
    fine-tuned one is returned (the unpruned model if the rule never held).
    """

    seed: int = 0  #: seeds every initialisation, split and shuffle
    max_proxies: int = 3  #: proxies per block (fed by the previous 1..max_proxies features)
    temperature: float = 4.0  #: softmax temperature of both distillations (KL)
    kd_weight: float = 1.0  #: weight of KD(student, teacher)
    feature_weight: float = 10.0  #: weight of MSE(student block outputs, teacher's)
    flops_weight: float = 0.3  #: weight of the gate-weighted proxy FLOPs (normalised to 1)
    ce_weight: float = 0.0  #: weight of cross-entropy on the labels (0 in the artifact)
    flops_norm: str = "backbone"  #: FLOPs term over the backbone's FLOPs (artifact) or "proxies"
    feature_detach: bool = True  #: block-local feature loss (inputs detached), as the artifact
    merge_relu: bool = True  #: ReLU after each block's gated merge (the artifact's)
    alpha_init: tuple[float, float] = (2.0, -2.0)  #: initial gate logits: (block, each proxy)
    proxy_pool: str = "max"  #: proxy downsampling: "max" (artifact: max pool) or "stride"
    #: the frozen backbone's batch-norm statistics while the student trains: "public" (kept:
    #: the device-side backbone stays the public model) or "private" (the artifact's
    #: ``model.train()``: they follow the student's features on the private data, and the
    #: deployed backbone then carries statistics of the private data outside the enclave)
    backbone_bn: str = "public"
    teacher_epochs: int = 20  #: epochs distilling the public model into the teacher (artifact 20)
    teacher_lr: float = 5e-3  #: Adam learning rate of the teacher (1e-3 left it 4 points short)
    teacher_optimizer: str = "adam"  #: "adam" or "sgd" (artifact: SGD 0.01, momentum 0.5)
    student_epochs: int = 40  #: epochs training proxies, gates and classifier (artifact 40)
    optimizer: str = "sgd"  #: student optimizer: "sgd" (artifact, with momentum) or "adam"
    lr: float = 0.1  #: student learning rate (artifact: SGD 0.1, cosine)
    momentum: float = 0.9  #: SGD momentum (student and, with "sgd", teacher)
    alpha_lr_scale: float = 1.0  #: gate logits learn at this x the student's lr (artifact: 1)
    lr_schedule: str = "cosine"  #: "cosine" (annealed to 0 over each phase) or "constant"
    weight_decay: float = 5e-4  #: weight decay of teacher and student (never on the gates)
    batch_size: int = 64  #: minibatch size everywhere (artifact 64)
    val_fraction: float = 0.2  #: share of the training data held out to judge pruning
    prune: bool = True  #: run the iterative pruning at all
    prune_epochs: int = 20  #: epochs of the pruning / fine-tuning phase (artifact 20)
    prune_lr: float = 0.01  #: learning rate of the pruning phase (artifact 0.01)
    prune_flops_weight: float = 0.0  #: FLOPs-term weight while pruning (artifact 0)
    prune_threshold: float = 0.1  #: first step: proxies with gate below this are dropped
    first_prune_fraction: float = 0.5  #: first step drops at least this share of the proxies
    first_prune_max: float = 0.8  #: ... and at most this share when every gate is below threshold
    prune_fraction: float = 0.05  #: later steps drop this share (at least one proxy)
    prune_every: int = 2  #: fine-tuning epochs between pruning steps
    max_prune_steps: int = 40  #: upper bound on the later pruning steps
    keep_accuracy: float = 0.99  #: a step must keep val accuracy >= this x pre-prune accuracy

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(
                f"TeeSliceConfig: {what}; pass a valid value (see taoism.teeslice.TeeSliceConfig)"
            )

        for name, allowed in (
            ("optimizer", ("sgd", "adam")),
            ("teacher_optimizer", ("sgd", "adam")),
            ("lr_schedule", ("cosine", "constant")),
            ("proxy_pool", ("max", "stride")),
            ("backbone_bn", ("public", "private")),
            ("flops_norm", ("backbone", "proxies")),
        ):
            if getattr(self, name) not in allowed:
                raise bad(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if len(tuple(self.alpha_init)) != 2:
            raise bad(f"alpha_init must be (block, proxy) logits, got {self.alpha_init!r}")
        object.__setattr__(self, "alpha_init", tuple(float(a) for a in self.alpha_init))
        if self.alpha_lr_scale <= 0:
            raise bad(f"alpha_lr_scale must be > 0, got {self.alpha_lr_scale}")
        if not 0 <= self.momentum < 1:
            raise bad(f"momentum must be in [0, 1), got {self.momentum}")
        if not 1 <= self.max_proxies <= 3:
            raise bad(f"max_proxies must be 1, 2 or 3, got {self.max_proxies}")
        if self.temperature <= 0:
            raise bad(f"temperature must be > 0, got {self.temperature}")
        for name in (
            "kd_weight",
            "feature_weight",
            "flops_weight",
            "ce_weight",
            "weight_decay",
            "prune_flops_weight",
        ):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "teacher_epochs",
            "student_epochs",
            "prune_every",
            "max_prune_steps",
            "prune_epochs",
        ):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise bad(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.lr <= 0 or self.teacher_lr <= 0 or self.prune_lr <= 0:
            raise bad("lr, teacher_lr and prune_lr must be > 0")
        for name in (
            "val_fraction",
            "prune_threshold",
            "first_prune_fraction",
            "first_prune_max",
            "prune_fraction",
            "keep_accuracy",
        ):
            if not 0 <= getattr(self, name) < 1 + (name == "keep_accuracy"):
                raise bad(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def key(self) -> dict[str, Any]:
        """Every field, for a content-addressed cache key."""
        return dataclasses.asdict(self)
