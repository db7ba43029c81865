"""Disjoint splits of a training set for the leakage experiments.

The training split is permuted with ``seed`` and cut into:

* ``public`` (the first ``public_fraction``, default half): the data the *public* model is
  pretrained on. It stands in for the ImageNet-pretrained weights of the paper: both the victim
  and the attacker know the public model; no private sample ever reaches it.
* the private rest, cut into four equal parts (the paper's four-way membership split):

  - ``target_train``: the victim's private fine-tuning data (the MIA *members*);
  - ``target_test``: private data the victim never trains on (the MIA *non-members*);
  - ``shadow_train`` / ``shadow_test``: the attacker's own data from the same distribution;
    the attacker labels its model-stealing queries with the victim from ``shadow_train`` and
    trains and calibrates its shadow model on ``shadow_train`` vs ``shadow_test``.

The official test split is left alone and measures accuracy, fidelity and adversarial transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taoism.errors import ConfigError

__all__ = ["SPLIT_NAMES", "AttackSplits", "attack_splits", "group_splits"]

SPLIT_NAMES = ("public", "target_train", "target_test", "shadow_train", "shadow_test")


@dataclass(frozen=True, eq=False)
class AttackSplits:
    """Index tensors (int64, into the training split), pairwise disjoint."""

    public: torch.Tensor
    target_train: torch.Tensor
    target_test: torch.Tensor
    shadow_train: torch.Tensor
    shadow_test: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {k: int(getattr(self, k).numel()) for k in SPLIT_NAMES}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; splits: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


def attack_splits(
    n_train: int,
    seed: int,
    *,
    public_fraction: float = 0.5,
    split_size: int | None = None,
    public_size: int | None = None,
) -> AttackSplits:
    """Split ``range(n_train)`` into public / target-train / target-test / shadow-train / shadow-test.

    ``split_size`` caps each of the four private parts and ``public_size`` the public part
    (None: use all available). The result depends only on the arguments.
    """
    if not 0.0 < public_fraction < 1.0:
        raise ConfigError(f"public_fraction must lie in (0, 1), got {public_fraction!r}")
    n_pub = int(round(n_train * public_fraction))
    quarter = (n_train - n_pub) // 4
    if n_pub < 1 or quarter < 2:
        raise ConfigError(
            f"a training set of {n_train} samples is too small for a public part and "
            "four private parts of at least 2 samples each"
        )
    for nm, v in (("split_size", split_size), ("public_size", public_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
            raise ConfigError(f"{nm} must be an int >= 2 or None, got {v!r}")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(seed)))
    public = perm[:n_pub][: public_size or n_pub]
    q = min(quarter, split_size or quarter)
    rest = perm[n_pub:]
    parts = [rest[i * quarter : i * quarter + q] for i in range(4)]
    return AttackSplits(public.clone(), *(p.clone() for p in parts))


def group_splits(
    groups: dict[str, torch.Tensor], seed: int, *, split_size: int | None = None
) -> AttackSplits:
    """Splits for a data set whose training samples come in disjoint source groups (glyph fonts).

    ``groups["private"]`` (the victim's fonts) is halved into target-train / target-test and
    ``groups["attacker"]`` (the attacker's fonts) into shadow-train / shadow-test, at random
    (``seed``); ``split_size`` caps each part. ``public`` is empty: such a data set carries its
    public data separately (another script in other fonts).
    """
    if set(groups) != {"private", "attacker"}:
        raise ConfigError(
            f"group_splits needs 'private' and 'attacker' groups, got {sorted(groups)}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for name in ("private", "attacker"):
        idx = groups[name][torch.randperm(len(groups[name]), generator=gen)]
        half = len(idx) // 2
        if half < 2:
            raise ConfigError(f"group_splits: the {name} group has {len(idx)} samples; need >= 4")
        q = min(half, split_size or half)
        parts += [idx[:q].clone(), idx[half : half + q].clone()]
    return AttackSplits(torch.zeros(0, dtype=torch.long), *parts)
