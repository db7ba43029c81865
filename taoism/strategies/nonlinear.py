"""Shield the non-linear layers (ShadowNet, S&P'23).

Every conv/linear layer runs on the device with obfuscated weights: ``C`` real output channels
plus noise channels (filters and biases drawn from ``U(-noise, noise)``) up to
``max(int(ratio * C), C + 1)`` channels, rows shuffled by a secret permutation. The enclave keeps
the real channels in their original order (a gather with the secret index) and runs everything
else: BN, activations, pooling, adds. In the reference configuration the first conv/linear layer
and the ``downsample`` convs run on the device as they are (unobfuscated); grouped convolutions
cannot grow their output channels independently and run in the enclave.
"""

from __future__ import annotations

import secrets
from typing import Any

import torch
import torch.nn as nn

from taoism.strategies._graph import (
    LINEAR_TYPES,
    CaptureOptions,
    ChannelSelect,
    added_path,
    finish,
    first_use_order,
    insert_after,
    module_calls,
    private_copy,
    trace,
)
from taoism.strategies.spec import NonLinear


def obfuscated_width(c: int, ratio: float) -> int:
    return max(int(ratio * c), c + 1)


def _obfuscate(
    mod: nn.Module, ratio: float, noise: float, gen: torch.Generator
) -> tuple[nn.Module, torch.Tensor]:
    """A wider copy of ``mod`` with shuffled real + noise rows, and the index of the real rows."""
    is_linear = isinstance(mod, nn.Linear)
    c = mod.out_features if is_linear else mod.out_channels
    wide = obfuscated_width(c, ratio)
    w = mod.weight.detach()
    noise_w = (
        torch.rand((wide - c, *w.shape[1:]), generator=gen, dtype=torch.float64) * 2 - 1
    ) * noise
    rows = torch.cat([w, noise_w.to(w.dtype)])
    perm = torch.randperm(wide, generator=gen)  # new row j holds old row perm[j]
    index = torch.argsort(perm)[:c]  # real channel i now sits at index[i]
    if is_linear:
        new: nn.Module = nn.Linear(
            mod.in_features, wide, bias=mod.bias is not None, dtype=w.dtype, device=w.device
        )
    else:
        cls = type(mod)
        new = cls(
            mod.in_channels,
            wide,
            mod.kernel_size,
            stride=mod.stride,
            padding=mod.padding,
            dilation=mod.dilation,
            groups=mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            dtype=w.dtype,
            device=w.device,
        )
    with torch.no_grad():
        new.weight.copy_(rows[perm])
        if mod.bias is not None:
            nb = (torch.rand(wide - c, generator=gen, dtype=torch.float64) * 2 - 1) * noise
            new.bias.copy_(torch.cat([mod.bias.detach(), nb.to(w.dtype)])[perm])
    return new.eval(), index


def plain_layers(layers: list[str]) -> list[str]:
    """The reference configuration's unobfuscated layers: the first one and the downsample convs."""
    out = layers[:1]
    out += [p for p in layers[1:] if "downsample" in p.split(".")]
    return out


def apply_nonlinear(
    model: nn.Module, s: NonLinear, opts: CaptureOptions = CaptureOptions()
) -> tuple[nn.Module, dict[str, Any]]:
    m = private_copy(model)
    gm = trace(m, opts, s.spec)
    layers = first_use_order(gm, LINEAR_TYPES)
    plain = plain_layers(layers) if s.plain_first_and_downsample else []
    seed = s.secret_seed if s.secret_seed is not None else secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    obfuscated, grouped = [], []
    for path in layers:
        if path in plain:
            continue
        mod = gm.get_submodule(path)
        if getattr(mod, "groups", 1) != 1:
            grouped.append(path)
            continue
        new, index = _obfuscate(mod, s.ratio, s.noise, gen)
        parent, _, leaf = path.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, new)
        gm.add_submodule(
            added_path("select", path), ChannelSelect(index, last=isinstance(mod, nn.Linear))
        )
        obfuscated.append(path)
    for node, path, _ in list(module_calls(gm)):
        if path in obfuscated:
            insert_after(gm, node, added_path("select", path))
    gm = finish(gm)
    gm.tsdp_info = {
        "strategy": s.spec,
        "obfuscated": obfuscated,
        "plain": plain,
        "enclave_grouped": grouped,
    }
    placement: dict[str, Any] = {"_default": "ENCLAVE"}
    for path in obfuscated + plain:
        placement[path] = "GPU"
    return gm, placement
