"""Grouping of sequential layers into partition units."""

from __future__ import annotations

from torch import nn

_COMPUTE = (nn.Conv2d, nn.Linear)


def group_sequential(
    seq: nn.Sequential,
    prefix: str,
    lead: tuple[str, ...] = (),
    dropout_leads: bool = False,
) -> list[tuple[str, ...]]:
    """Split ``seq`` into units, each holding exactly one conv/linear layer.

    A unit starts at each Conv2d/Linear and takes the layers after it (BN, ReLU, pooling,
    dropout) up to the next conv/linear. Layers before the first conv/linear, preceded by
    ``lead`` (e.g. an ``avgpool`` run before the classifier), join the first unit. With
    ``dropout_leads`` a Dropout directly before a conv/linear joins that layer's unit
    (torchvision AlexNet's classifier: Dropout, Linear, ReLU, ...).
    """
    children = list(seq.named_children())
    units: list[list[str]] = []
    pending: list[str] = list(lead)
    for i, (name, mod) in enumerate(children):
        qual = f"{prefix}.{name}"
        leads = (
            dropout_leads
            and isinstance(mod, nn.Dropout)
            and i + 1 < len(children)
            and isinstance(children[i + 1][1], _COMPUTE)
        )
        if isinstance(mod, _COMPUTE):
            units.append([*pending, qual])
            pending = []
        elif units and not leads:
            units[-1].append(qual)
        else:
            pending.append(qual)
    if pending:
        units.append(pending)
    return [tuple(u) for u in units]
