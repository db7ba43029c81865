"""The attacker's surrogate training, tuned honestly on its own held-out queries.

Every row of the table gets the same learning-rate x epochs grid (:class:`AttackGrid`); the
paper's per-layer rates (classifier head 0.1, tensors replaced from the public model 0.01,
exposed tensors 0.001) are one more point on the learning-rate axis. The attacker holds out
``val_fraction`` of its labelled queries, trains on the rest with each learning rate (SGD with
momentum, constant rate, so every epoch count of the grid is read off one run), picks the
(rate, epochs) with the best held-out agreement with the oracle, and retrains from its start on
all queries with that setting. The untrained start is a candidate too (epochs 0). When the best
point lies on an edge of the grid, the grid is widened past that edge (one more rate beyond the
smallest or largest, or twice the largest epoch count) up to ``widen`` times, so a chosen point
on an edge means the widened grid still found nothing better inside. No test data is ever used
to choose.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from taoism.errors import ConfigError
from taoism.security.training import classifier_head, predict_logits, seeded

__all__ = ["PAPER_RATES", "AttackGrid", "fit_surrogate", "grid_edges"]

#: The paper's per-layer rates: (head, replaced from the public model, exposed by the host).
PAPER_RATES = (0.1, 0.01, 0.001)
PAPER = "paper"
#: The untrained start's "rate" in a tuning record (epochs 0).
START = "start"


@dataclass(frozen=True)
class AttackGrid:
    """The attacker's tuning grid; ``paper_point`` adds the per-layer rates as one point.

    ``early_stop``: a rate's run stops at the first epoch count of the grid whose held-out
    accuracy is no better than the best earlier one of that run (patience: one grid point); its later
    epoch counts are then not tried (they are missing from the tuning record). ``keep``:
    successive halving (Jamieson & Talwalkar, 2016): after the first epoch count only the
    ``keep`` rates with the best held-out accuracy (then loss) train on (None: all do).
    ``widen``: how many times the grid may be widened past an edge the best point lies on (a
    rate one grid step beyond the smallest / largest, or twice the largest epoch count).
    """

    lrs: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01, 0.03)
    epochs: tuple[int, ...] = (5, 10, 20, 40)
    paper_point: bool = True
    val_fraction: float = 0.2
    batch_size: int = 16
    momentum: float = 0.9
    early_stop: bool = False
    keep: int | None = None
    widen: int = 2

    def __post_init__(self) -> None:
        if not self.lrs or any(lr <= 0 for lr in self.lrs) or list(self.lrs) != sorted(self.lrs):
            raise ConfigError(f"AttackGrid.lrs must be increasing positive rates, got {self.lrs!r}")
        if (
            not self.epochs
            or any(e < 1 for e in self.epochs)
            or list(self.epochs) != sorted(set(self.epochs))
        ):
            raise ConfigError(
                f"AttackGrid.epochs must be increasing ints >= 1, got {self.epochs!r}"
            )
        if self.keep is not None and (
            isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1
        ):
            raise ConfigError(f"AttackGrid.keep must be an int >= 1 or None, got {self.keep!r}")
        if isinstance(self.widen, bool) or not isinstance(self.widen, int) or self.widen < 0:
            raise ConfigError(f"AttackGrid.widen must be an int >= 0, got {self.widen!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"AttackGrid.val_fraction must lie in (0, 1), got {self.val_fraction!r}"
            )


def _groups(model: nn.Module, lr: float | str, statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)  # everything the attacker holds is trainable (no inherited freeze)
    if lr != PAPER:
        return [{"params": list(params.values()), "lr": float(lr)}]
    head, _ = classifier_head(model)
    by_rate: dict[float, list[nn.Parameter]] = {}
    for name, p in params.items():
        if name.startswith(head + "."):
            rate = PAPER_RATES[0]
        elif statuses.get(name) == "plaintext":
            rate = PAPER_RATES[2]
        else:
            rate = PAPER_RATES[1]
        by_rate.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": r} for r, ps in sorted(by_rate.items())]


class _Run:
    """One learning rate's training run, resumable: ``advance(e)`` trains up to epoch ``e``.

    Its shuffling generator and torch's CPU RNG state travel with the run, so a run trained in
    pieces is the same as one trained in one go (the runs of a grid interleave).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        lr: float | str,
        grid: AttackGrid,
        seed: int,
        statuses: Mapping[str, str],
    ) -> None:
        self.model, self.x, self.y, self.grid = model, x, y, grid
        self.opt = torch.optim.SGD(_groups(model, lr, statuses), momentum=grid.momentum)
        with seeded(seed) as gen:
            self.gen, self.rng = gen, torch.get_rng_state()
        self.epoch = 0
        self.record: dict[int, tuple[float, float]] = {}

    def advance(self, to: int) -> None:
        n, bs = len(self.x), min(self.grid.batch_size, max(len(self.x), 1))
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            for _ in range(self.epoch, to):
                self.model.train()
                order = torch.randperm(n, generator=self.gen)
                for i in range(0, n, bs):
                    idx = order[i : i + bs]
                    if len(idx) < 2 and n >= 2:
                        continue
                    loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
            self.rng = torch.get_rng_state()
        self.epoch = max(self.epoch, to)
        self.model.eval()

    def check(self, val: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Record held-out (accuracy, loss) at the current epoch; whether the accuracy is no
        better than the best earlier record of this run (no improvement)."""
        acc, loss = _held_out(self.model, val)
        worse = bool(self.record) and acc <= max(a for a, _ in self.record.values())
        self.record[self.epoch] = (acc, loss)
        return worse


def _held_out(model: nn.Module, val: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """``model``'s (accuracy, cross-entropy) on the held-out queries."""
    logits = predict_logits(model, val[0])
    return float((logits.argmax(1) == val[1]).float().mean()), float(
        F.cross_entropy(logits, val[1])
    )


def _grid_runs(
    start: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rates: list[float | str],
    grid: AttackGrid,
    seed: int,
    statuses: Mapping[str, str],
    val: tuple[torch.Tensor, torch.Tensor],
) -> dict[float | str, _Run]:
    """Every rate's run (a copy of ``start`` each) with its held-out (accuracy, loss) per epoch
    count of the grid, with the grid's early stopping and successive halving."""
    runs = [_Run(copy.deepcopy(start), x, y, lr, grid, seed, statuses) for lr in rates]
    active = list(range(len(runs)))
    for k, ep in enumerate(grid.epochs):
        stopped = set()
        for i in active:
            runs[i].advance(ep)
            if runs[i].check(val) and grid.early_stop:
                stopped.add(i)
        if k == 0 and grid.keep is not None:  # successive halving: the best `keep` go on
            rank = sorted(active, key=lambda i: (-runs[i].record[ep][0], runs[i].record[ep][1], i))
            stopped |= set(rank[grid.keep :])
        active = [i for i in active if i not in stopped]
    return dict(zip(rates, runs, strict=True))


def _edges(
    lr: float | str, epochs: int, lrs: list[float], grid_epochs: list[int]
) -> dict[str, bool]:
    return {
        "lr": lr not in (PAPER, START) and len(lrs) > 1 and float(lr) in (lrs[0], lrs[-1]),
        "epochs": len(grid_epochs) > 1 and int(epochs) == grid_epochs[-1],
    }


def _choose(
    runs: Mapping[float | str, _Run],
    start_record: tuple[float, float],
    lrs: list[float],
    epochs: list[int],
) -> tuple[float | str, int, float, float]:
    """The best (rate, epochs, accuracy, loss): highest held-out accuracy; among equally accurate
    points an interior one, then the lower held-out loss, fewer epochs, the earlier rate.

    Rate and epochs trade off along a ridge (rate x steps), so a small held-out set ties many
    points; a chosen point on an edge therefore means no interior point was as good."""
    order = [*lrs, *(r for r in runs if r not in lrs)]
    best = (-start_record[0], False, start_record[1], 0, -1)
    for i, lr in enumerate(order):
        for ep, (acc, loss) in runs[lr].record.items():
            cand = (-acc, any(_edges(lr, ep, lrs, epochs).values()), loss, ep, i)
            if cand < best:
                best = cand
    lr_star = START if best[4] < 0 else order[best[4]]
    return lr_star, best[3], -best[0], best[2]


def _beyond(lrs: list[float], low: bool) -> float:
    """A rate one grid step past the smallest (``low``) or the largest rate."""
    ratio = lrs[1] / lrs[0] if low else lrs[-1] / lrs[-2]
    return float(f"{(lrs[0] / ratio if low else lrs[-1] * ratio):.3g}")


def fit_surrogate(
    start: nn.Module,
    xq: torch.Tensor,
    yq: torch.Tensor,
    statuses: Mapping[str, str],
    grid: AttackGrid,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Choose (rate, epochs) on a held-out part of the queries, then train ``start`` on all of them.

    Returns the trained surrogate (a copy; ``start`` is left as is) and the tuning record:
    ``lr`` (a rate, ``"paper"``, or ``"start"`` with ``epochs`` 0 for the untrained start),
    ``epochs``, ``val_accuracy``, ``val_loss``, the whole ``grid`` (held-out accuracy and loss per
    rate and epoch count) and the widened grid's axes ``grid_lrs`` / ``grid_epochs``.
    """
    n = len(yq)
    n_val = max(1, int(round(grid.val_fraction * n)))
    if n - n_val < 2:
        raise ConfigError(
            f"fit_surrogate: {n} queries leave too few to train after holding out {n_val}"
        )
    with seeded(seed) as gen:
        perm = torch.randperm(n, generator=gen)
    tr, va = perm[n_val:], perm[:n_val]
    val = (xq[va], yq[va])
    rates: list[float | str] = [*grid.lrs, *([PAPER] if grid.paper_point else [])]
    runs = _grid_runs(start, xq[tr], yq[tr], rates, grid, seed, statuses, val)
    start_record = _held_out(start, val)  # the untrained start is a candidate too
    lrs, epochs = list(grid.lrs), list(grid.epochs)
    for widened in range(grid.widen + 1):
        lr_star, ep_star, acc, loss = _choose(runs, start_record, lrs, epochs)
        edge = _edges(lr_star, ep_star, lrs, epochs)
        if widened == grid.widen or not any(edge.values()):
            break
        if edge["epochs"]:  # every run that reached the largest count trains on to twice it
            epochs.append(2 * epochs[-1])
            for run in runs.values():
                if epochs[-2] in run.record:
                    run.advance(epochs[-1])
                    run.check(val)
        if edge["lr"]:  # one more rate past the edge, over the whole (widened) epoch axis
            low = float(lr_star) == lrs[0]
            new = _beyond(lrs, low)
            if low:
                lrs.insert(0, new)
            else:
                lrs.append(new)
            run = _Run(copy.deepcopy(start), xq[tr], yq[tr], new, grid, seed, statuses)
            for ep in epochs:
                run.advance(ep)
                if run.check(val) and grid.early_stop:
                    break
            runs[new] = run
    final = copy.deepcopy(start)
    if lr_star != START:
        _Run(final, xq, yq, lr_star, grid, seed, statuses).advance(ep_star)
    final.eval()
    table = {str(lr): run.record for lr, run in runs.items()}
    table[START] = {0: start_record}
    return final, {
        "lr": lr_star,
        "epochs": ep_star,
        "val_accuracy": acc,
        "val_loss": loss,
        "val_samples": n_val,
        "grid_lrs": lrs,
        "grid_epochs": epochs,
        "grid": {
            lr: {str(ep): {"accuracy": a, "loss": b} for ep, (a, b) in res.items()}
            for lr, res in table.items()
        },
    }


def grid_edges(tuning: Mapping[str, Any], grid: AttackGrid) -> dict[str, bool]:
    """Whether the chosen setting lies on an edge of the (widened) grid.

    ``lr``: the chosen rate is the smallest or the largest (never for the paper point or the
    untrained start); ``epochs``: the chosen count is the largest (the smallest is a legitimate
    early stop). The axes are the record's ``grid_lrs`` / ``grid_epochs`` when it has them (the
    grid after widening), else ``grid``'s.
    """
    lrs = [float(v) for v in tuning.get("grid_lrs", grid.lrs)]
    epochs = [int(v) for v in tuning.get("grid_epochs", grid.epochs)]
    return _edges(tuning["lr"], tuning["epochs"], lrs, epochs)
