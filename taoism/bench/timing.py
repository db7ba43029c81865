"""Time a callable the same way every time: warm-up, repeats, device synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from taoism.bench.stats import Stat


def time_callable(
    fn: Callable[[], Any],
    *,
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str | None = None,
) -> Stat:
    """Median and spread of ``fn()``'s wall time; synchronises CUDA around each call."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return Stat.of(times)


def time_plain(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str,
    repeats: int = 20,
    warmup: int = 3,
) -> Stat:
    """Plain PyTorch baseline: ``model`` on ``device`` in eval mode (a private copy)."""
    import copy

    dev = torch.device(device)
    m = copy.deepcopy(model).to(dev).eval()
    xd = x.to(dev)
    return time_callable(lambda: m(xd), repeats=repeats, warmup=warmup, device=dev)
