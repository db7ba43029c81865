"""The two leakage attacks of the S&P'24 evaluation: model stealing and membership inference.

Pure PyTorch on plain modules: the deployment enters only through the attacker view (see
:mod:`taoism.security.views`) and the oracle's labels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taoism.errors import ConfigError
from taoism.security.training import classifier_head, predict_logits
from taoism.security.views import Reconstruction, reconstruct_state

__all__ = [
    "agreement",
    "align_output_rows",
    "build_surrogate",
    "confidence_scores",
    "membership_inference",
    "pgd",
    "shadow_threshold",
    "threshold_attack",
    "transfer_attack",
]


# -- model stealing ----------------------------------------------------------------------------


def build_surrogate(
    template: nn.Module, view: Mapping[str, Any], public_state: Mapping[str, torch.Tensor]
) -> tuple[nn.Module, Reconstruction]:
    """A copy of ``template``'s architecture initialised from the attacker view (de-obfuscated),
    with every shielded tensor taken from the public model."""
    surrogate = copy.deepcopy(template)
    rec = reconstruct_state(view, public_state, surrogate.state_dict())
    surrogate.load_state_dict(rec.state, strict=True)
    return surrogate.eval(), rec


def align_output_rows(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> list[int] | None:
    """Permute the classifier head's rows so the model's top-1 best agrees with ``labels``.

    Used when the head was obfuscated (ShadowNet): matching its rows to a public head that never
    saw the task cannot recover the class order, but the oracle's labels on the queries can
    (a maximum-agreement assignment between predicted and oracle classes). Returns the
    permutation applied (``new row c = old row perm[c]``), or None when nothing changed.
    """
    _, head = classifier_head(model)
    k = head.out_features
    pred = predict_logits(model, x).argmax(1)
    conf = torch.zeros(k, k, dtype=torch.float64)  # conf[oracle class, predicted row]
    conf.index_put_((labels, pred), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover
        return None
    cls, rows = linear_sum_assignment(-conf.numpy())
    perm = torch.empty(k, dtype=torch.long)
    perm[torch.as_tensor(cls)] = torch.as_tensor(rows)
    if torch.equal(perm, torch.arange(k)) or float(conf[torch.arange(k), perm].sum()) <= float(
        conf.trace()
    ):
        return None
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        if head.bias is not None:
            head.bias.copy_(head.bias[perm])
    return perm.tolist()


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal entries (top-1 agreement of two label vectors)."""
    return float((a == b).double().mean()) if len(a) else float("nan")


# -- adversarial transfer ----------------------------------------------------------------------


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: torch.Tensor,
    alpha: torch.Tensor,
    steps: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Untargeted L-inf PGD (no random start) against ``model``; ``eps``/``alpha``/``lo``/``hi``
    are per-channel tensors in the input's (normalised) units."""
    was = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            x0, yb = x[i : i + batch_size], y[i : i + batch_size]
            xa = x0.clone()
            for _ in range(steps):
                xa.requires_grad_(True)
                loss = F.cross_entropy(model(xa), yb)
                (g,) = torch.autograd.grad(loss, xa)
                with torch.no_grad():
                    xa = xa + alpha * g.sign()
                    xa = torch.max(torch.min(xa, x0 + eps), x0 - eps)
                    xa = torch.max(torch.min(xa, hi), lo)
            out.append(xa.detach())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was)
    return torch.cat(out) if out else x.clone()


def transfer_attack(
    surrogate: nn.Module,
    victim: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: torch.Tensor,
    alpha: torch.Tensor,
    steps: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    max_samples: int | None = None,
    victim_pred: torch.Tensor | None = None,
) -> dict[str, float]:
    """PGD on the surrogate, tested on the victim, over test samples the victim gets right.

    Returns ``adv_success`` (fraction the victim misclassifies after the attack) and
    ``adv_surrogate_success`` (the same on the surrogate: the white-box strength).
    ``victim_pred``: the victim's top-1 labels on ``x`` when the caller already has them.
    """
    if victim_pred is None:
        victim_pred = predict_logits(victim, x).argmax(1)
    ok = victim_pred == y
    xs, ys = x[ok], y[ok]
    if max_samples is not None:
        xs, ys = xs[:max_samples], ys[:max_samples]
    if len(ys) == 0:
        return {
            "adv_success": float("nan"),
            "adv_surrogate_success": float("nan"),
            "adv_samples": 0,
        }
    xa = pgd(surrogate, xs, ys, eps=eps, alpha=alpha, steps=steps, lo=lo, hi=hi)
    return {
        "adv_success": float((predict_logits(victim, xa).argmax(1) != ys).double().mean()),
        "adv_surrogate_success": float(
            (predict_logits(surrogate, xa).argmax(1) != ys).double().mean()
        ),
        "adv_samples": int(len(ys)),
    }


# -- membership inference ----------------------------------------------------------------------


def confidence_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The softmax probability the model gives each sample's true label."""
    return _true_label_confidence(predict_logits(model, x), y)


def _true_label_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(1).gather(1, y.view(-1, 1)).squeeze(1)


def shadow_threshold(
    shadow: nn.Module,
    shadow_in: tuple[torch.Tensor, torch.Tensor],
    shadow_out: tuple[torch.Tensor, torch.Tensor],
) -> float:
    """The confidence threshold calibrated on the attacker's shadow model (members >= it)."""
    return threshold_attack(
        confidence_scores(shadow, *shadow_in), confidence_scores(shadow, *shadow_out)
    )


def threshold_attack(members: torch.Tensor, non_members: torch.Tensor) -> float:
    """The confidence threshold that best separates ``members`` (>=) from ``non_members``.

    Balanced accuracy is maximised over every candidate cut (midpoints of the sorted scores).
    """
    s = torch.cat([members, non_members]).double()
    lab = torch.cat([torch.ones(len(members)), torch.zeros(len(non_members))]).double()
    order = torch.argsort(s, descending=True, stable=True)
    s, lab = s[order], lab[order]
    tp = torch.cumsum(lab, 0)  # members predicted with threshold = s[i]
    fp = torch.cumsum(1 - lab, 0)
    n_in, n_out = max(len(members), 1), max(len(non_members), 1)
    bal = 0.5 * (tp / n_in + (n_out - fp) / n_out)
    # Only cut between distinct scores.
    distinct = torch.ones_like(s, dtype=torch.bool)
    distinct[:-1] = s[:-1] != s[1:]
    bal = torch.where(distinct, bal, torch.full_like(bal, -1.0))
    i = int(torch.argmax(bal))
    if float(bal[i]) <= 0.5:  # no cut helps: predict everything non-member
        return float("inf")
    nxt = float(s[i + 1]) if i + 1 < len(s) else float(s[i]) - 1.0
    return 0.5 * (float(s[i]) + nxt)


def _auc(members: torch.Tensor, non_members: torch.Tensor) -> float:
    """ROC AUC of ``score >= t`` as a membership test (ties count one half)."""
    if len(members) == 0 or len(non_members) == 0:
        return float("nan")
    s = torch.cat([members, non_members]).double()
    ranks = torch.empty_like(s)
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    # average ranks over ties
    _, inv, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inv]
    n1, n0 = len(members), len(non_members)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def membership_inference(
    surrogate: nn.Module,
    x_in: torch.Tensor,
    y_in: torch.Tensor,
    x_out: torch.Tensor,
    y_out: torch.Tensor,
    shadow: nn.Module | None,
    shadow_in: tuple[torch.Tensor, torch.Tensor] | None,
    shadow_out: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    tau: float | None = None,
) -> dict[str, Any]:
    """Confidence-threshold MIA calibrated on the attacker's own ``shadow`` model.

    The shadow model is trained on its own (the victim's recipe on the attacker's
    ``shadow_in``, see :func:`taoism.security.models.shadow_state`), never from the surrogate.
    The threshold on true-label confidence that best separates its members (``shadow_in``)
    from its non-members (``shadow_out``) is applied to the surrogate's confidences on the
    target's members (``x_in``) and non-members (``x_out``). Also reports the surrogate's
    generalisation gap and confidence gap there. ``tau``: that threshold when the caller has
    already calibrated it (:func:`shadow_threshold`; then the shadow arguments may be None).
    """
    if tau is None:
        if shadow is None or shadow_in is None or shadow_out is None:
            raise ConfigError("membership_inference needs the shadow model and data, or tau")
        tau = shadow_threshold(shadow, shadow_in, shadow_out)
    n = min(len(y_in), len(y_out))
    x_in, y_in, x_out, y_out = x_in[:n], y_in[:n], x_out[:n], y_out[:n]
    logit_in, logit_out = predict_logits(surrogate, x_in), predict_logits(surrogate, x_out)
    s_in, s_out = _true_label_confidence(logit_in, y_in), _true_label_confidence(logit_out, y_out)
    acc_in = float((s_in >= tau).double().mean())
    acc_out = float((s_out < tau).double().mean())
    tr = float((logit_in.argmax(1) == y_in).double().mean())
    te = float((logit_out.argmax(1) == y_out).double().mean())
    return {
        "mia_accuracy": 0.5 * (acc_in + acc_out),
        "mia_auc": _auc(s_in, s_out),
        "mia_threshold": tau,
        "mia_tpr": acc_in,
        "mia_tnr": acc_out,
        "generalization_gap": tr - te,
        "confidence_gap": float(s_in.mean() - s_out.mean()),
        "mia_samples": int(2 * n),
    }
