"""The TEESlice student loss: distillation, feature matching and expected FLOPs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from taoism.teeslice.config import TeeSliceConfig

__all__ = ["feature_loss", "kd_loss", "student_loss"]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
        )
        * t
        * t
    )


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of ``MSE(student block output, teacher block output)``."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher, strict=True)]).mean()


def student_loss(
    logits: torch.Tensor,
    feats: Sequence[torch.Tensor],
    expected_flops: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_feats: Sequence[torch.Tensor],
    labels: torch.Tensor,
    config: TeeSliceConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the terms, and each (unweighted) term's value."""
    parts = {
        "kd": kd_loss(logits, teacher_logits, config.temperature),
        "feature": feature_loss(feats, teacher_feats),
        "flops": expected_flops,
        "ce": F.cross_entropy(logits, labels),
    }
    weights = {
        "kd": config.kd_weight,
        "feature": config.feature_weight,
        "flops": config.flops_weight,
        "ce": config.ce_weight,
    }
    total = sum(weights[k] * v for k, v in parts.items() if weights[k])
    if not torch.is_tensor(total):  # every weight zero
        total = logits.sum() * 0.0
    return total, {k: float(v.detach()) for k, v in parts.items()}
