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

Units for deep/shallow come from ``taoism.zoo.units(model)`` (top-level children for models
outside the zoo) unless the dataclass is given ``units=``.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from taoism.strategies.intermediate import apply_intermediate
from taoism.strategies.layerwise import apply_all, apply_layerwise, apply_none, apply_teeslice
from taoism.strategies.magnitude import apply_magnitude, shield_masks
from taoism.strategies.nonlinear import apply_nonlinear
from taoism.strategies.report import ExposedParam, attacker_view, strategy_report
from taoism.strategies.spec import (BASELINE_STRATEGIES, REFERENCE_STRATEGIES, VALID_FORMS,
                                    BlackBox, Deep, Intermediate, Magnitude, NonLinear, NoShield,
                                    Shallow, Strategy, StrategyLike, TEESlice, expand_strategies,
                                    parse_strategy)

_APPLY = {
    NoShield: apply_none,
    BlackBox: apply_all,
    Deep: apply_layerwise,
    Shallow: apply_layerwise,
    Magnitude: apply_magnitude,
    Intermediate: apply_intermediate,
    NonLinear: apply_nonlinear,
    TEESlice: apply_teeslice,
}


def apply_strategy(model: nn.Module, strategy: StrategyLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rewrite a private copy of ``model`` for ``strategy`` and return it with its placement.

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
    out, placement = fn(model, s)
    return out, placement


__all__ = [
    "BASELINE_STRATEGIES", "REFERENCE_STRATEGIES", "VALID_FORMS", "BlackBox", "Deep", "ExposedParam",
    "Intermediate", "Magnitude", "NoShield", "NonLinear", "Shallow", "Strategy", "StrategyLike",
    "TEESlice", "apply_strategy", "attacker_view", "expand_strategies", "parse_strategy",
    "shield_masks", "strategy_report",
]
