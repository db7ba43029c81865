"""Shield intermediate layers (SOTER, ATC'22).

A ``theta`` fraction of the conv/linear layers is offloaded to the device, the last one always,
the rest drawn with a seeded RNG. Each offloaded layer is morphed: its weight and bias are
multiplied by a secret scalar ``s ~ U(low, high)`` (one per layer), so the device computes
``s * f(x)``; the enclave multiplies the result by ``1/s``. Every other node (the remaining
conv/linear layers, BN, activations, pooling, adds) runs in the enclave.
"""

from __future__ import annotations

import random
import secrets
from typing import Any

import torch
import torch.nn as nn

from taoism.strategies._graph import (
    LINEAR_TYPES,
    CaptureOptions,
    Rescale,
    added_path,
    finish,
    first_use_order,
    insert_after,
    module_calls,
    private_copy,
    trace,
)
from taoism.strategies.spec import Intermediate


def choose_offloaded(layers: list[str], theta: float, seed: int) -> list[str]:
    """The layers offloaded: ``max(1, round(theta * n))`` of them, always including the last."""
    if not layers:
        return []
    n_off = min(len(layers), max(1, int(round(theta * len(layers)))))
    rng = random.Random(seed)
    others = rng.sample(layers[:-1], n_off - 1)
    chosen = set(others) | {layers[-1]}
    return [p for p in layers if p in chosen]


def apply_intermediate(
    model: nn.Module, s: Intermediate, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    m = private_copy(model)
    gm = trace(m, opts, s.spec)
    layers = first_use_order(gm, LINEAR_TYPES)
    offloaded = choose_offloaded(layers, s.theta, s.seed)
    secret = random.Random(s.secret_seed if s.secret_seed is not None else secrets.randbits(128))
    scales: dict[str, float] = {}
    for path in offloaded:
        mod = gm.get_submodule(path)
        scale = float(torch.tensor(secret.uniform(s.low, s.high), dtype=torch.float32))
        with torch.no_grad():
            mod.weight.mul_(scale)
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(scale)  # s * (W x + b): one rescale undoes both
        scales[path] = scale
        gm.add_submodule(added_path("scale", path), Rescale(1.0 / scale))
    for node, path, _ in list(module_calls(gm)):
        if path in scales:
            insert_after(gm, node, added_path("scale", path))
    gm = finish(gm)
    gm.tsdp_info = {"strategy": s.spec, "layers": layers, "offloaded": offloaded}
    placement: dict[str, Any] = {"_default": "ENCLAVE"}
    for path in offloaded:
        placement[path] = "GPU"
    return gm, placement
