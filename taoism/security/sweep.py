"""The sweet-spot sweep: each strategy family over its configurations, and its C*."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from taoism.errors import ConfigError, TaoismError
from taoism.security.cache import Cache
from taoism.security.experiment import AttackConfig
from taoism.security.models import dataset_for
from taoism.security.report import (
    METRICS,
    aggregate,
    figure,
    flops_axes,
    timings,
    write_csv,
    write_json,
)
from taoism.security.report import out_dir as report_dir
from taoism.security.runner import check_common, execute
from taoism.security.table import resolve_config

__all__ = ["sweep"]


def _sweep_configs(family: str, n_units: int, n_layers: int) -> list[str]:
    """A family's configurations, ordered from least to most shielded."""
    if family in ("deep", "shallow"):
        return [f"{family}:{k}" for k in range(0, n_units + 1)]
    if family == "magnitude":
        return [f"magnitude:{r:g}" for r in (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)]
    if family == "intermediate":
        # theta = fraction of conv/linear layers offloaded (morphed) to the device: fewer = more
        # shielded. One configuration per distinct number of offloaded layers.
        seen, out = set(), []
        for i in range(n_layers, 0, -1):
            theta = i / n_layers
            if i not in seen:
                seen.add(i)
                out.append(f"intermediate:{theta:g}")
        return out
    raise ConfigError(
        f"sweep: unknown strategy family {family!r}; use deep, shallow, magnitude, "
        "intermediate (or pass configs={family: [...]})"
    )


def sweep(
    model: str,
    dataset: str,
    strategies: Sequence[str] = ("deep", "shallow", "magnitude", "intermediate"),
    queries: int = 50,
    seeds: Sequence[int] = (0,),
    *,
    configs: dict[str, list[str]] | None = None,
    metric: str = "ms_accuracy",
    threshold: float = 1.05,
    jobs: int = 1,
    ray: str | None | bool = False,
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    epochs: int | None = None,
    data_root: str | os.PathLike | None = None,
    config: AttackConfig | None = None,
    smoke: bool = False,
) -> dict[str, Any]:
    """Walk each strategy family over its configurations and find its sweet spot C*.

    Configurations go from least to most shielded (``deep:0..K``, ``shallow:0..K``,
    ``magnitude:0..1``, ``intermediate`` from all layers offloaded down to one); ``configs``
    overrides them per family. C* is the first configuration whose mean ``metric`` over
    ``seeds`` is within ``threshold`` x the black-box value (<=); ``flops_tee_pct`` at C* is
    reported (100 when no configuration qualifies: only the black-box deployment protects).
    Jobs are shared with :func:`run_attack_table` through the cache.
    Returns ``{"families": {family: {"points": [...], "c_star": ..., "c_star_flops_tee_pct": ...}},
    "black_box": {...}, ...}`` and, with ``out_dir``, writes ``sweep_<model>_<dataset>.json/.csv/.png``.
    """
    t0 = time.perf_counter()
    check_common(model, dataset, seeds, jobs, ray)
    if metric not in METRICS:
        raise ConfigError(f"sweep: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not (isinstance(threshold, (int, float)) and threshold >= 1.0):
        raise ConfigError(f"sweep: threshold must be a number >= 1, got {threshold!r}")
    cfg = resolve_config(dataset, config, smoke, epochs)
    cache = Cache(cache_dir)
    root = os.fspath(data_root) if data_root is not None else None
    ds = dataset_for(dataset, root, cache.root, cfg.data_options)
    fams = _families(model, ds, strategies, configs)
    names = list(dict.fromkeys(["all"] + [c for f in fams.values() for c in f]))
    results, skipped, ds, models = execute(
        model,
        dataset,
        names,
        [int(queries)],
        list(seeds),
        jobs=jobs,
        ray=ray,
        cache=cache,
        progress=progress,
        data_root=root,
        config=cfg,
    )
    rows = {r["strategy"]: r for r in aggregate(results, names, [int(queries)])}
    bb = rows.get("all")
    if bb is None or bb["metrics"][metric]["mean"] is None:
        raise TaoismError("sweep: the black-box baseline failed; see the errors in the job results")
    bb_val = bb["metrics"][metric]["mean"]
    families = {
        fam: _sweet_spot(cs, rows, skipped, metric, threshold * bb_val) for fam, cs in fams.items()
    }
    hits = sum(1 for r in results if r.get("cache_hit"))
    out = {
        "model": model,
        "dataset": ds.name,
        "queries": int(queries),
        "seeds": list(seeds),
        "metric": metric,
        "threshold": threshold,
        "black_box": bb["metrics"][metric],
        "families": families,
        "config": cfg.to_dict(),
        "errors": [r for r in results if "error" in r],
        "skipped": skipped,
        "cache": {
            "dir": str(cache.root),
            "job_hits": hits,
            "job_misses": sum(1 for r in results if "error" not in r) - hits,
        },
        "timings": timings(models, results),
        "wall_s": time.perf_counter() - t0,
        "files": {},
    }
    _write_sweep(out, out_dir, model, ds.name, queries, bb_val)
    return out


def _families(
    model: str, ds: Any, strategies: Sequence[str], configs: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    from taoism.zoo import get_model, units

    net = get_model(model, dataset_shape=ds.shape, num_classes=ds.num_classes, seed=0)
    n_units = len(units(net))
    n_layers = sum(1 for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    return {
        f: list((configs or {}).get(f) or _sweep_configs(f, n_units, n_layers)) for f in strategies
    }


def _sweet_spot(
    cs: list[str], rows: dict[str, Any], skipped: dict[str, str], metric: str, limit: float
) -> dict[str, Any]:
    """One family's points and its C*: the first configuration whose mean metric is <= ``limit``."""
    pts, c_star = [], None
    for c in cs:
        r = rows.get(c)
        if r is None:
            pts.append({"config": c, "skipped": skipped.get(c, "failed")})
            continue
        v = r["metrics"][metric]["mean"]
        ok = v is not None and v <= limit
        pts.append(
            {
                "config": c,
                metric: r["metrics"][metric],
                "x_black_box": r["x_black_box"].get(metric),
                "flops_tee_pct": r["flops_tee_pct"],
                "params_tee_pct": r["params_tee_pct"],
                "latency_ms": r["latency_ms"],
                "within_threshold": ok,
            }
        )
        if ok and c_star is None:
            c_star = r
    return {
        "points": pts,
        "c_star": c_star["strategy"] if c_star else None,
        "c_star_flops_tee_pct": c_star["flops_tee_pct"] if c_star else 100.0,
        "c_star_params_tee_pct": c_star["params_tee_pct"] if c_star else 100.0,
    }


def _write_sweep(
    out: dict[str, Any],
    out_dir: str | os.PathLike | None,
    model: str,
    dataset: str,
    queries: int,
    bb_val: float,
) -> None:
    d = report_dir(out_dir)
    if d is None:
        return
    metric, threshold, families = out["metric"], out["threshold"], out["families"]
    stem = f"sweep_{model}_{dataset}"
    paths = {"json": d / f"{stem}.json", "csv": d / f"{stem}.csv", "png": d / f"{stem}.png"}
    out["files"] = {k: str(v) for k, v in paths.items()}
    cols = [
        "family",
        "config",
        "flops_tee_pct",
        "params_tee_pct",
        f"{metric}_mean",
        f"{metric}_std",
        "x_black_box",
        "within_threshold",
        "is_c_star",
    ]
    crows = [
        {
            "family": fam,
            "config": p["config"],
            "flops_tee_pct": p["flops_tee_pct"],
            "params_tee_pct": p["params_tee_pct"],
            f"{metric}_mean": p[metric]["mean"],
            f"{metric}_std": p[metric]["std"],
            "x_black_box": (p["x_black_box"] or {}).get("mean"),
            "within_threshold": p["within_threshold"],
            "is_c_star": p["config"] == f["c_star"],
        }
        for fam, f in families.items()
        for p in f["points"]
        if "skipped" not in p
    ]
    write_csv(paths["csv"], cols, crows)
    fig, axes = figure(1, 1, (6.5, 4.5))
    ax = axes[0][0]
    for fam, f in families.items():
        xs = [p["flops_tee_pct"] for p in f["points"] if "skipped" not in p]
        ys = [100 * p[metric]["mean"] for p in f["points"] if "skipped" not in p]
        ax.plot(
            xs,
            ys,
            "o-",
            label=f"{fam} (C* {f['c_star'] or 'none'}: {f['c_star_flops_tee_pct']:.1f}% FLOPs)",
        )
    ax.axhline(100 * bb_val, ls="--", color="gray", lw=0.8, label="black-box")
    ax.axhline(
        100 * bb_val * threshold, ls=":", color="gray", lw=0.8, label=f"{threshold}x black-box"
    )
    flops_axes(ax, f"{metric} (%)", f"sweet spot: {model} / {dataset}, {queries} queries")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    write_json(paths["json"], out)
