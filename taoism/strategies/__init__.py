"""The six TEE-shielded DNN partition (TSDP) strategies, on any traceable model.

Each strategy is a model rewrite plus a placement::

    from taoism.strategies import apply_strategy, strategy_report, attacker_view
    model2, placement = apply_strategy(model, "magnitude:0.01")   # model is not modified
    with taoism.shield(model, x, strategy="magnitude:0.01") as sm:   # the same, deployed
        y = sm(x)                                                 # == model(x)
        print(strategy_report(sm, model))
        view = attacker_view(sm, model)                           # what the host can read

Strategies (string form, dataclass form):

========================  ===================  ==================================================
``none``                  :class:`NoShield`     everything on the device (white-box)
``all``                   :class:`BlackBox`     everything in the enclave (black-box)
``deep:K``                :class:`Deep`         last K units in the enclave (DarkneTZ)
``shallow:K``             :class:`Shallow`      first K units in the enclave (Serdab)
``magnitude:R``           :class:`Magnitude`    top-R |w| entries in the enclave, zeroed on device
``intermediate:THETA``    :class:`Intermediate` THETA of conv/linear layers offloaded, morphed (SOTER)
``nonlinear[:RATIO]``     :class:`NonLinear`    conv/linear obfuscated on device (ShadowNet)
``teeslice``              :class:`TEESlice`     sliced model: backbone on device, slices in enclave
========================  ===================  ==================================================

Units for deep/shallow come from ``taoism.zoo.units(model)`` unless the dataclass is given
``units=``; for models outside the zoo they are the top-level children in the order the forward
uses them, except that a container of repeated blocks gives one unit per block. For a
transformer the units are its blocks: the embedding, each encoder layer, then the head (and
any other top-level module, e.g. a final norm, as a unit of its own). So ``deep:K`` shields the
last K of them (``deep:1`` = the head), ``shallow:K`` the first K (``shallow:1`` = the
embedding: token/patch embeddings and, for BERT, its LayerNorm). ``magnitude:R`` ranks the
weights of every conv/BN/linear layer, so in a transformer the attention projections, MLP
layers and head (embedding tables and LayerNorms are not ranked). ``intermediate:THETA``
offloads THETA of the conv/linear layers (the Q/K/V, output and MLP projections) morphed, and
keeps attention scores, softmax, LayerNorm, GELU and the residual adds in the enclave.
``nonlinear`` obfuscates those same linear layers on the device and keeps every non-linear op
(softmax, LayerNorm, GELU, the mask) in the enclave. Rewriting strategies need a torch.fx
graph (``leaf_modules`` keeps an untraceable submodule whole); ``none``, ``all``, ``deep`` and
``shallow`` also work on models captured with torch.export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from taoism.strategies._graph import CaptureOptions
from taoism.strategies.intermediate import apply_intermediate
from taoism.strategies.layerwise import apply_all, apply_layerwise, apply_none, apply_teeslice
from taoism.strategies.magnitude import apply_magnitude, shield_masks
from taoism.strategies.nonlinear import apply_nonlinear
from taoism.strategies.report import ExposedParam, attacker_view, strategy_report
from taoism.strategies.spec import (
    BASELINE_STRATEGIES,
    REFERENCE_STRATEGIES,
    VALID_FORMS,
    BlackBox,
    Deep,
    Intermediate,
    Magnitude,
    NonLinear,
    NoShield,
    Shallow,
    Strategy,
    StrategyLike,
    TEESlice,
    expand_strategies,
    parse_strategy,
)

_APPLY: dict[type, Callable[..., tuple[nn.Module, Any]]] = {
    NoShield: apply_none,
    BlackBox: apply_all,
    Deep: apply_layerwise,
    Shallow: apply_layerwise,
    Magnitude: apply_magnitude,
    Intermediate: apply_intermediate,
    NonLinear: apply_nonlinear,
    TEESlice: apply_teeslice,
}


def apply_strategy(
    model: nn.Module,
    strategy: StrategyLike,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture: str = "auto",
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rewrite a private copy of ``model`` for ``strategy`` and return it with its placement.

    The model is captured as :func:`taoism.shield` captures it (``leaf_modules``, ``capture``;
    ``example_inputs`` let layer-wise strategies fall back to torch.export).

    The returned model computes the same function as ``model`` in eval mode (up to float
    rounding), is torch.fx traceable, and keeps every device-side module at its original path;
    modules a strategy adds live under ``_tsdp.*`` and are placed in the enclave. ``model``
    itself is never modified.
    """
    s = parse_strategy(strategy)
    fn = _APPLY.get(type(s))
    if fn is None:  # a user subclass of Strategy
        from taoism.errors import ConfigError

        raise ConfigError(f"no rewrite is registered for strategy type {type(s).__name__}")
    out, placement = fn(model, s, CaptureOptions.of(leaf_modules, capture, example_inputs))
    return out, placement


__all__ = [
    "BASELINE_STRATEGIES",
    "REFERENCE_STRATEGIES",
    "VALID_FORMS",
    "BlackBox",
    "Deep",
    "ExposedParam",
    "Intermediate",
    "Magnitude",
    "NoShield",
    "NonLinear",
    "Shallow",
    "Strategy",
    "StrategyLike",
    "TEESlice",
    "apply_strategy",
    "attacker_view",
    "expand_strategies",
    "parse_strategy",
    "shield_masks",
    "strategy_report",
]
