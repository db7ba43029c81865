"""What a deployed strategy shields and costs, and what the untrusted host can read.

Both functions read the deployed :class:`~taoism.runtime.ShieldedModel`: the tensors come from
``sm.host_state_dict()`` (exactly what the host holds) and the structure from ``sm.plan``; the
original model is used only to name parameters and to classify how the host's copy relates to
each original tensor.

Definitions (all relative to the ORIGINAL model):

* ``params_tee``: parameter entries the host does not hold in any form: tensors absent from the
  host whose module runs in the enclave, plus entries the host holds zeroed (magnitude). Morphed
  (SOTER) and obfuscated (ShadowNet) tensors are on the device, so they do not count.
* ``flops_tee``: the original model's FLOPs the enclave performs: every enclave node that is part
  of the original computation, and for a magnitude split layer the FLOPs its shielded entries
  carry (each weight entry of a conv/linear does one multiply-add per output position of its
  channel, each bias entry one add; BN's scale and shift entries one op each per element). The enclave's
  extra work (dense private layers beyond that share, rescaling, channel selection, merge adds)
  is ``flops_overhead``; ``flops_enclave_executed`` is everything the enclave actually runs.
* crossings and bytes: ``sm.plan.totals()`` (tensors crossing per inference, either direction;
  plaintext bytes at the example batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from taoism.placement import EnclaveMode
from taoism.strategies._graph import BN_TYPES, LINEAR_TYPES, mangle, parse_added

STATUSES = ("plaintext", "zeroed", "morphed", "obfuscated", "absent")


@dataclass(frozen=True)
class ExposedParam:
    """What the untrusted host holds for one original parameter or buffer.

    ``status``: ``plaintext`` (an exact copy), ``zeroed`` (same tensor with ``zeroed`` shielded
    entries set to 0), ``morphed`` (same shape, transformed values, e.g. scaled by a secret),
    ``obfuscated`` (different shape: real rows shuffled among noise rows), ``absent`` (the host
    holds nothing). ``tensor`` is exactly the host's tensor (None when absent).
    """

    status: str
    tensor: torch.Tensor | None
    kind: str = "param"  # "param" or "buffer"
    numel: int = 0  # elements of the original tensor
    zeroed: int = 0  # entries zeroed on the host (status "zeroed")
    in_enclave: bool = False  # absent because it lives in the enclave (False: unused by forward)


def _original_tensors(original: nn.Module) -> Iterable[tuple[str, torch.Tensor, str]]:
    for name, p in original.named_parameters():
        yield name, p.detach(), "param"
    for name, b in original.named_buffers():
        yield name, b.detach(), "buffer"


def _structure(sm: Any, original: nn.Module) -> tuple[dict[str, set[str]], set[str]]:
    """Roles of the modules a strategy added, per original module; the enclave's targets."""
    by_mangled = {mangle(n): n for n, _ in original.named_modules() if n}
    roles: dict[str, set[str]] = {}
    enclave_targets: set[str] = set()
    for layer in sm.plan.layers:
        info = layer.info
        added = parse_added(info.module_path or "") or (
            parse_added(info.target) if info.op in ("call_module", "get_attr") else None
        )
        if added is not None and added[1] in by_mangled:
            roles.setdefault(by_mangled[added[1]], set()).add(added[0])
        if layer.placement is EnclaveMode.ENCLAVE and info.op in ("call_module", "get_attr"):
            enclave_targets.add(info.target)
    return roles, enclave_targets


def _in(targets: set[str], name: str) -> bool:
    """Whether ``name`` (a tensor path) is, or belongs to a module, among ``targets``."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in targets for i in range(1, len(parts) + 1))


def attacker_view(sm: Any, original: nn.Module) -> dict[str, ExposedParam]:
    """Per original parameter/buffer name, what the deployed model's host holds for it.

    Tensors come from ``sm.host_state_dict()``; nothing is taken from ``original`` but the names
    and the comparison that decides the status.
    """
    host = sm.host_state_dict()
    roles, enclave_targets = _structure(sm, original)
    out: dict[str, ExposedParam] = {}
    for name, orig, kind in _original_tensors(original):
        module = name.rpartition(".")[0]
        r = roles.get(module, set())
        h = host.get(name)
        if h is None:
            out[name] = ExposedParam(
                "absent", None, kind, orig.numel(), in_enclave=_in(enclave_targets, name)
            )
            continue
        hc = h.detach().cpu()
        o = orig.cpu()
        if "select" in r or hc.shape != o.shape:
            status, zeroed = "obfuscated", 0
        elif "scale" in r:
            status, zeroed = "morphed", 0
        elif hc.dtype == o.dtype and torch.equal(hc, o):
            status, zeroed = "plaintext", 0
        else:
            mask = (hc == 0) & (o != 0)
            if bool(mask.any()) and torch.equal(hc[~mask], o[~mask]):
                status, zeroed = "zeroed", int(mask.sum())
            else:
                status, zeroed = "morphed", 0
        out[name] = ExposedParam(status, h, kind, orig.numel(), zeroed)
    return out


def _original_flops(sm: Any, original: nn.Module) -> tuple[int, dict[str, tuple[int, int]]]:
    """Per-sample FLOPs of the original model: the total, and per called module path
    ``(flops, output elements per sample)`` summed over its calls."""
    from taoism.capture import capture

    batch = max(int(sm.plan.batch), 1)
    examples = sm.example_inputs(batch)
    was_training = original.training
    try:
        cap = capture(original, examples)
    finally:
        original.train(was_training)
    total = 0
    per_module: dict[str, tuple[int, int]] = {}
    for info in cap.nodes.values():
        if info.op in ("placeholder", "output"):
            continue
        total += info.flops
        if info.op == "call_module":
            numel = sum(math.prod(s) for s in info.out_shapes[:1]) // batch
            f, n = per_module.get(info.target, (0, 0))
            per_module[info.target] = (f + info.flops, n + numel)
    return total, per_module


def _tensor_flops(
    mod: nn.Module | None, pname: str, numel: int, module_numel: int, flops: int, out_numel: int
) -> float:
    """The FLOPs one parameter tensor of a layer carries (the layer's FLOPs split over its
    tensors: a conv/linear bias adds once per output element, the weight does the rest; BN's
    scale and shift carry half each; otherwise in proportion to the entries)."""
    if isinstance(mod, LINEAR_TYPES):
        bias_flops = out_numel if getattr(mod, "bias", None) is not None else 0
        return float(bias_flops if pname == "bias" else flops - bias_flops)
    if isinstance(mod, BN_TYPES):
        return flops / 2.0
    return flops * numel / module_numel if module_numel else 0.0


def strategy_report(sm: Any, original: nn.Module, strategy: Any = None) -> dict[str, Any]:
    """Params and FLOPs in the TEE, boundary traffic, and what the device holds.

    ``original`` is the unprotected model ``sm`` was built from; ``strategy`` (optional) is
    echoed as a label. See the module docstring for the definitions.
    """
    view = attacker_view(sm, original)
    roles, _ = _structure(sm, original)
    params = {n: p for n, p in original.named_parameters()}
    params_total = sum(p.numel() for p in params.values())
    per_module_params: dict[str, int] = {}
    holds: dict[str, dict[str, int]] = {s: {"tensors": 0, "params": 0} for s in STATUSES}
    holds["zeroed"]["entries"] = 0
    params_tee = params_unused = 0
    per_param: dict[str, dict[str, Any]] = {}
    for name, e in view.items():
        if e.kind != "param":
            continue
        mod = name.rpartition(".")[0]
        per_module_params[mod] = per_module_params.get(mod, 0) + e.numel
        holds[e.status]["tensors"] += 1
        holds[e.status]["params"] += e.numel
        if e.status == "absent":
            if e.in_enclave:
                params_tee += e.numel
            else:
                params_unused += e.numel
        elif e.status == "zeroed":
            holds["zeroed"]["entries"] += e.zeroed
            params_tee += e.zeroed
        per_param[name] = {
            "status": e.status,
            "numel": e.numel,
            "zeroed": e.zeroed,
            "host_shape": list(e.tensor.shape) if e.tensor is not None else None,
        }
    buffers: dict[str, int] = {s: 0 for s in STATUSES}
    for e in view.values():
        if e.kind == "buffer":
            buffers[e.status] += 1

    flops_total, flops_by_module = _original_flops(sm, original)
    flops_tee = flops_overhead = 0.0
    for layer in sm.plan.layers:
        if layer.placement is not EnclaveMode.ENCLAVE:
            continue
        info = layer.info
        if parse_added(info.module_path or "") is None and parse_added(info.target) is None:
            flops_tee += info.flops  # part of the original computation
        else:
            flops_overhead += info.flops
    # Magnitude: credit each split layer with the FLOPs its shielded entries carry (per tensor:
    # its FLOPs x zeroed / entries); the rest of the dense private layer's work is overhead.
    modules = dict(original.named_modules())
    mag_credit = 0.0
    for name, e in view.items():
        mod = name.rpartition(".")[0]
        if e.kind != "param" or e.status != "zeroed" or "mag" not in roles.get(mod, ()):
            continue
        f, out_numel = flops_by_module.get(mod, (0, 0))
        tf = _tensor_flops(
            modules.get(mod),
            name.rpartition(".")[2],
            e.numel,
            per_module_params.get(mod, 0),
            f,
            out_numel,
        )
        mag_credit += tf * e.zeroed / e.numel
    flops_tee += mag_credit
    flops_overhead = max(0.0, flops_overhead - mag_credit)
    t = sm.plan.totals()

    def pct(a: float, b: float) -> float:
        return 100.0 * a / b if b else 0.0

    return {
        "strategy": str(strategy) if strategy is not None else None,
        "params_total": params_total,
        "params_tee": int(params_tee),
        "params_tee_pct": pct(params_tee, params_total),
        "params_unused": int(params_unused),
        "flops_total": int(flops_total),
        "flops_tee": int(round(flops_tee)),
        "flops_tee_pct": pct(flops_tee, flops_total),
        "flops_overhead": int(round(flops_overhead)),
        "flops_enclave_executed": int(t["flops_enclave"]),
        "flops_enclave_executed_pct": pct(t["flops_enclave"], flops_total),
        "flops_deployed": int(t["flops"]),
        "crossings": int(t["crossings"]),
        "bytes_crossing": int(t["bytes_crossing"]),
        "batch": int(t["batch"]),
        "segments": int(t["segments"]),
        "enclave_segments": int(t["enclave_segments"]),
        "device_holds": holds,
        "buffers": buffers,
        "per_param": per_param,
    }


__all__ = ["ExposedParam", "STATUSES", "attacker_view", "strategy_report"]
