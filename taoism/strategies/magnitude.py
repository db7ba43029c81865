"""Shield large-magnitude weights ("Magnitude", TDSC'22).

The top-``r`` fraction of every conv/BN/linear parameter (weights and biases, ranked together
by ``|w|``) is shielded. The device runs every layer with those entries zeroed, at the layer's
original module path. For each layer with a shielded entry the enclave holds a parallel layer of
the same type carrying only the shielded entries and adds its output to the device's:

    conv/linear:  W = W_pub + W_priv, b = b_pub + b_priv  ->  f(x; W, b) = f(x; W_pub, b_pub) + f(x; W_priv, b_priv)
    batch norm:   gamma = g_pub + g_priv, beta = b_pub + b_priv, same running statistics
                  -> BN(x) = BN_pub(x) + BN_priv(x)   (BN_priv has beta 0 if no beta entry is shielded)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from taoism.errors import ConfigError
from taoism.strategies._graph import (
    BN_TYPES,
    LINEAR_TYPES,
    CaptureOptions,
    ShieldedShare,
    added_path,
    finish,
    insert_after,
    module_calls,
    private_copy,
    trace,
)
from taoism.strategies.spec import Magnitude

RANKED_TYPES = LINEAR_TYPES + BN_TYPES


def ranked_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every weight/bias of a conv/BN/linear module, in named_modules order."""
    out = []
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        if not isinstance(mod, RANKED_TYPES):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            out.append((f"{mname}.{pname}" if mname else pname, p.detach()))
    return out


def shield_masks(model: nn.Module, r: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Boolean mask per ranked parameter: True where the entry is among the top-``r`` by ``|w|``.

    Exactly ``round(r * N)`` entries are True over the ``N`` ranked entries; entries tied with
    the threshold are picked in the order of a permutation drawn with ``seed``.
    """
    params = ranked_parameters(model)
    if not params:
        return {}
    flat = torch.cat([p.reshape(-1).abs().to(torch.float64) for _, p in params])
    n = flat.numel()
    k = int(round(r * n))
    chosen = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        threshold = torch.topk(flat, k, largest=True, sorted=False).values.min()
        above = flat > threshold
        chosen |= above
        need = k - int(above.sum())
        if need > 0:
            ties = torch.nonzero(flat == threshold).reshape(-1)
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(ties.numel(), generator=gen)
            chosen[ties[order[:need]]] = True
    masks: dict[str, torch.Tensor] = {}
    off = 0
    for name, p in params:
        masks[name] = chosen[off : off + p.numel()].reshape(p.shape)
        off += p.numel()
    return masks


def _private_part(mod: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A module of the same type holding only the shielded entries (zeros elsewhere)."""
    priv = copy.deepcopy(mod)
    with torch.no_grad():
        for pname, p in priv.named_parameters(recurse=False):
            p.mul_(masks[pname].to(p.dtype))
    if (
        isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))
        and mod.bias is not None
        and not bool(masks["bias"].any())
    ):
        priv.register_parameter("bias", None)  # nothing shielded in the bias: no zero vector
    return priv.eval()


def apply_magnitude(
    model: nn.Module, s: Magnitude, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    m = private_copy(model)
    gm = trace(m, opts, s.spec)
    masks = shield_masks(m, s.r, s.seed)  # ranked over the whole model, in its module order
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, mask in masks.items():
        mname, _, pname = name.rpartition(".")
        by_module.setdefault(mname, {})[pname] = mask
    split: dict[str, str] = {}  # original module path -> path of its enclave share
    for node, path, mod in list(module_calls(gm)):
        pm = by_module.get(path)
        if pm is None or not any(bool(v.any()) for v in pm.values()):
            continue
        if path not in split:
            priv = _private_part(mod, pm)
            with torch.no_grad():
                for pname, p in mod.named_parameters(recurse=False):
                    p.masked_fill_(pm[pname], 0.0)  # the device's copy: shielded entries zeroed
            split[path] = added_path("mag", path)
            gm.add_submodule(split[path], ShieldedShare(priv))
        if len(node.args) != 1 or node.kwargs:
            raise ConfigError(
                f"magnitude: module {path!r} is called with {len(node.args)} "
                "positional args and kwargs; the split supports single-input calls only"
            )
        insert_after(gm, node, split[path], with_input=True)
    gm = finish(gm)
    gm.tsdp_info = {  # type: ignore[assignment]
        "strategy": s.spec,
        "split": dict(split),
        "shielded": {k: int(v.sum()) for k, v in masks.items()},
        "ranked": sum(v.numel() for v in masks.values()),
        "k": sum(int(v.sum()) for v in masks.values()),
        "r": s.r,
    }
    placement: dict[str, Any] = {"_default": "GPU"}
    if split:
        placement["_tsdp"] = "ENCLAVE"
    return gm, placement
