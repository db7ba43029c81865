"""What a sliced model puts in the TEE: parameters and FLOPs outside the public backbone."""

from __future__ import annotations

from typing import Any

import torch

from taoism.teeslice.student import SlicedNet

__all__ = ["tee_share"]


def tee_share(model: SlicedNet) -> dict[str, Any]:
    """Params and per-sample FLOPs in the TEE (slices, merges, head) vs the whole sliced model."""
    from taoism.capture import capture

    was = model.training
    try:
        cap = capture(model.eval(), torch.zeros(2, *model.input_shape))
    finally:
        model.train(was)
    flops = tee_flops = 0
    for info in cap.nodes.values():
        if info.op in ("placeholder", "output"):
            continue
        flops += info.flops
        where = info.target if info.op == "call_module" else info.module_path
        if not str(where).startswith("backbone"):
            tee_flops += info.flops
    params = sum(p.numel() for p in model.parameters())
    tee_params = sum(
        p.numel() for n in model.private_modules() for p in model.get_submodule(n).parameters()
    )
    return {
        "proxies": len(model.proxy_list()),
        "params": params,
        "params_tee": tee_params,
        "params_tee_pct": 100.0 * tee_params / max(params, 1),
        "flops": flops,
        "flops_tee": tee_flops,
        "flops_tee_pct": 100.0 * tee_flops / max(flops, 1),
    }
