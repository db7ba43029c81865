"""The leakage table: per strategy, attack metrics, x black-box, TEE share and latency."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from taoism.errors import ConfigError
from taoism.security.cache import Cache
from taoism.security.experiment import AttackConfig
from taoism.security.models import dataset_for
from taoism.security.report import (
    aggregate,
    csv_rows,
    plot_table,
    references,
    timings,
    write_csv,
    write_json,
)
from taoism.security.report import out_dir as report_dir
from taoism.security.runner import check_common, execute

__all__ = ["BASELINES", "resolve_config", "run_attack_table"]

BASELINES = ("none", "all")


def resolve_config(
    dataset: str, config: AttackConfig | None, smoke: bool, epochs: int | None
) -> AttackConfig:
    """``config`` (default: the data set's preset), with the surrogate epochs fixed by ``epochs``."""
    cfg = config or AttackConfig.preset(dataset, smoke=smoke)
    if epochs is not None:
        cfg = AttackConfig(
            **{**cfg.to_dict(), "ms_epochs": (int(epochs),), "data_options": cfg.data_options}
        )
    return cfg


def run_attack_table(
    model: str,
    dataset: str,
    strategies: Sequence[str] | str | None = None,
    queries: Sequence[int] = (50,),
    seeds: Sequence[int] = (0,),
    *,
    jobs: int = 1,
    ray: str | None | bool = False,
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    epochs: int | None = None,
    data_root: str | os.PathLike | None = None,
    config: AttackConfig | None = None,
    smoke: bool = False,
    queries_per_class: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Attack ``model`` trained on ``dataset`` under each strategy; return (and write) the table.

    ``strategies``: strategy strings (see :mod:`taoism.strategies`); None or ``"all"`` alone means
    the six reference configurations. The baselines ``none`` (white-box) and ``all``
    (black-box) are always added. ``teeslice`` on a plain model M attacks the slices
    :func:`taoism.teeslice.sliced_victim` trains from M's victim over M's public model on the
    victim's private data (``config.teeslice_options``: the TeeSliceConfig), attacked from three
    starts (:func:`taoism.security.starts.teeslice_starts`, the best reported for MS and MIA); its
    row gives ``params_tee_pct`` / ``flops_tee_pct`` relative to the plain M, the sliced model's
    accuracy vs the plain victim (``accuracy_vs_victim``) and ``row["teeslice"]`` (test accuracies,
    proxies and TEE shares before/after pruning). Strategies that do not apply to the model (e.g.
    ``teeslice`` on a backbone TEESlice cannot slice) are listed under ``skipped``.
    ``queries``: model-stealing query budgets (``queries_per_class``, when given, replaces them
    by these multiples of the number of classes); ``seeds``: one experiment per seed (data split,
    public model, victim, queries, attack training). Each (strategy, queries, seed) is an
    independent job cached under ``cache_dir`` (default ``~/.cache/taoism``) by a hash of its
    full configuration; a rerun only computes what is missing.
    ``jobs``: local worker processes (spawn); ``ray``: False/None (off), True (local Ray) or a
    Ray address (the cache dir must then be shared by the workers).
    ``epochs``: fixes the surrogate's epochs (default: tuned over the grid). ``config``:
    every other knob (:class:`AttackConfig`; default :meth:`AttackConfig.preset` for the
    dataset, ``smoke=True`` for its small test version). ``data_root``: dataset directory.

    With ``out_dir``, writes ``attack_<model>_<dataset>.json``, ``.csv`` and ``.png`` there.
    Returns ``{"rows": [...], "jobs": [...], "skipped": {...}, "errors": [...], "cache": {...},
    "files": {...}, "wall_s": ..., ...}``; each row has, for one strategy and query budget, the
    mean/std over seeds of every metric in :data:`METRICS`, the per-seed ratio to black-box
    (``x_black_box``) for :data:`RATIO_METRICS`, ``params_tee_pct``, ``flops_tee_pct`` (from
    ``strategy_report``) and ``latency_ms`` (``sm.profile`` end-to-end median at batch 1).
    """
    from taoism.strategies import REFERENCE_STRATEGIES, expand_strategies

    t0 = time.perf_counter()
    check_common(model, dataset, seeds, jobs, ray)
    if strategies is None or (isinstance(strategies, str) and strategies.strip().lower() == "all"):
        strategies = list(REFERENCE_STRATEGIES)
    names = expand_strategies(strategies)
    names = ["none"] + [s for s in names if s not in BASELINES] + ["all"]
    cfg = resolve_config(dataset, config, smoke, epochs)
    cache = Cache(cache_dir)
    root = os.fspath(data_root) if data_root is not None else None
    qs = [int(q) for q in queries]
    if queries_per_class is not None:
        k = dataset_for(dataset, root, cache.root, cfg.data_options).num_classes
        qs = [int(q) * k for q in queries_per_class]
    if not qs or any(q < 1 for q in qs):
        raise ConfigError(f"queries must list positive ints, got {qs!r}")
    results, skipped, ds, models = execute(
        model,
        dataset,
        names,
        qs,
        list(seeds),
        jobs=jobs,
        ray=ray,
        cache=cache,
        progress=progress,
        data_root=root,
        config=cfg,
    )
    rows = aggregate(results, names, qs)
    hits = sum(1 for r in results if r.get("cache_hit"))
    out: dict[str, Any] = {
        "model": model,
        "dataset": ds.name,
        "strategies": names,
        "queries": qs,
        "seeds": list(seeds),
        "config": cfg.to_dict(),
        "rows": rows,
        "jobs": [r for r in results if "error" not in r],
        "errors": [r for r in results if "error" in r],
        "skipped": skipped,
        "cache": {
            "dir": str(cache.root),
            "job_hits": hits,
            "job_misses": sum(1 for r in results if "error" not in r) - hits,
        },
        "reference": references(results, qs, ds.num_classes),
        "timings": timings(models, results),
        "wall_s": time.perf_counter() - t0,
        "files": {},
    }
    _write_table(out, out_dir, model, ds.name, qs)
    return out


def _write_table(
    out: dict[str, Any], out_dir: str | os.PathLike | None, model: str, dataset: str, qs: list[int]
) -> None:
    d = report_dir(out_dir)
    if d is None:
        return
    stem = f"attack_{model}_{dataset}"
    cols, crows = csv_rows(out["rows"])
    paths = {"json": d / f"{stem}.json", "csv": d / f"{stem}.csv", "png": d / f"{stem}.png"}
    out["files"] = {k: str(v) for k, v in paths.items()}
    write_csv(paths["csv"], cols, crows)
    plot_table(paths["png"], out["rows"], qs, f"{model} / {dataset}")
    write_json(paths["json"], out)
