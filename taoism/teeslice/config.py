"""The TEESlice training configuration: every coefficient of the artifact, overridable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from taoism.errors import ConfigError

__all__ = ["TeeSliceConfig"]


@dataclass(frozen=True)
class TeeSliceConfig:
    """How :func:`taoism.teeslice.train` distils, trains and prunes (defaults: the artifact's).

    Loss: ``kd_weight * KD(student, teacher; temperature) + feature_weight * MSE(features)
    + flops_weight * expected_flops + ce_weight * CE(student, labels)``.
    Pruning: first drop the proxies whose gate is below ``prune_threshold`` (at most
    ``first_prune_fraction`` of them), then every ``prune_every`` epochs the
    ``prune_fraction`` with the lowest gates, while the validation accuracy stays
    >= ``keep_accuracy`` x the pre-prune accuracy (a step that breaks the rule is undone).
    """

    seed: int = 0  #: seeds every initialisation, split and shuffle
    max_proxies: int = 3  #: proxies per block (fed by the previous 1..max_proxies features)
    temperature: float = 4.0  #: softmax temperature of both distillations (KL)
    kd_weight: float = 1.0  #: weight of KD(student, teacher)
    feature_weight: float = 10.0  #: weight of MSE(student block outputs, teacher's)
    flops_weight: float = 0.3  #: weight of the gate-weighted proxy FLOPs (normalised to 1)
    ce_weight: float = 0.0  #: weight of cross-entropy on the labels (0 in the artifact)
    teacher_epochs: int = 10  #: epochs distilling the public model into the teacher
    teacher_lr: float = 1e-3  #: Adam learning rate of the teacher
    student_epochs: int = 10  #: epochs training proxies, gates and classifier before pruning
    lr: float = 5e-3  #: Adam learning rate of the student (1e-3 left it undertrained on digits)
    weight_decay: float = 0.0  #: Adam weight decay of teacher and student
    batch_size: int = 128  #: minibatch size everywhere
    val_fraction: float = 0.2  #: share of the training data held out to judge pruning
    prune: bool = True  #: run the iterative pruning at all
    prune_threshold: float = 0.1  #: first step: proxies with gate below this are dropped
    first_prune_fraction: float = 0.5  #: first step drops at most this share of the proxies
    prune_fraction: float = 0.05  #: later steps drop this share (at least one proxy)
    prune_every: int = 2  #: fine-tuning epochs after each pruning step
    max_prune_steps: int = 40  #: upper bound on the later pruning steps
    keep_accuracy: float = 0.99  #: a step must keep val accuracy >= this x pre-prune accuracy

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(
                f"TeeSliceConfig: {what}; pass a valid value (see taoism.teeslice.TeeSliceConfig)"
            )

        if not 1 <= self.max_proxies <= 3:
            raise bad(f"max_proxies must be 1, 2 or 3, got {self.max_proxies}")
        if self.temperature <= 0:
            raise bad(f"temperature must be > 0, got {self.temperature}")
        for name in ("kd_weight", "feature_weight", "flops_weight", "ce_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("teacher_epochs", "student_epochs", "prune_every", "max_prune_steps"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise bad(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.lr <= 0 or self.teacher_lr <= 0:
            raise bad("lr and teacher_lr must be > 0")
        for name in (
            "val_fraction",
            "prune_threshold",
            "first_prune_fraction",
            "prune_fraction",
            "keep_accuracy",
        ):
            if not 0 <= getattr(self, name) < 1 + (name == "keep_accuracy"):
                raise bad(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def key(self) -> dict[str, Any]:
        """Every field, for a content-addressed cache key."""
        return dataclasses.asdict(self)
