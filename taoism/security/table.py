"""The leakage table (per strategy: attack metrics, x black-box, TEE share, latency) and the
sweet-spot sweep, with sequential, process-pool or Ray execution of independent cached jobs."""

from __future__ import annotations

import csv
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from taoism.errors import ConfigError, TaoismError
from taoism.security.cache import Cache
from taoism.security.experiment import (AttackConfig, JobSpec, dataset_for, prepare_models, run_job,
                                        sliced_counterpart)

__all__ = [
    "METRICS",
    "RATIO_METRICS",
    "format_table",
    "run_attack_table",
    "sweep",
]

#: Metrics aggregated per row (mean and std over seeds).
METRICS = ("ms_accuracy", "fidelity", "adv_success", "mia_accuracy", "mia_auc",
           "generalization_gap", "confidence_gap", "surrogate_init_accuracy", "victim_accuracy")
#: Metrics also reported relative to the black-box baseline (strategy / "all", per seed).
RATIO_METRICS = ("ms_accuracy", "fidelity", "adv_success", "mia_accuracy", "mia_auc")

BASELINES = ("none", "all")


# -- execution ---------------------------------------------------------------------------------

def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _prepare_worker(model: str, dataset: str, data_root: str | None, seed: int,
                    config: AttackConfig, cache_root: str, progress: bool) -> bool:
    ds = dataset_for(dataset, data_root)
    prepare_models(model, ds, seed, config, Cache(cache_root), progress=progress)
    return True


def _job_worker(spec: JobSpec, cache_root: str, progress: bool) -> dict[str, Any]:
    try:
        return run_job(spec, Cache(cache_root), progress=progress)
    except TaoismError as exc:
        return {"job": spec.to_json(), "error": f"{type(exc).__name__}: {exc}"}


def _ray_module(ray: str | bool) -> Any:
    try:
        import ray as ray_mod
    except ImportError:
        raise ConfigError("ray= needs Ray, which is not installed: pip install 'taoism[ray]' "
                          "(or leave ray=False and use jobs=N for local processes)") from None
    if not ray_mod.is_initialized():
        ray_mod.init(address=ray if isinstance(ray, str) else None)
    return ray_mod


def _run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]], *, jobs: int,
             ray: str | bool | None, desc: str, progress: bool) -> list[Any]:
    """Run ``fn(*args)`` for every call (results in call order)."""
    if not calls:
        return []
    bar = tqdm(total=len(calls), desc=desc, disable=not progress, dynamic_ncols=True)
    out: list[Any] = [None] * len(calls)
    try:
        if ray:
            ray_mod = _ray_module(ray)
            remotes = {fn: ray_mod.remote(fn) for fn, _ in calls}
            refs = [remotes[fn].remote(*args) for fn, args in calls]
            pending = list(refs)
            while pending:
                done, pending = ray_mod.wait(pending, num_returns=1)
                bar.update(len(done))
            out = ray_mod.get(refs)
        elif jobs > 1:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(threads,)) as pool:
                futs = {pool.submit(fn, *args): i for i, (fn, args) in enumerate(calls)}
                for fut in as_completed(futs):
                    out[futs[fut]] = fut.result()
                    bar.update(1)
        else:
            for i, (fn, args) in enumerate(calls):
                out[i] = fn(*args)
                bar.update(1)
    finally:
        bar.close()
    return out


def _check_common(model: str, dataset: str, seeds: Sequence[int], jobs: int,
                  ray: str | bool | None) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an int >= 1, got {jobs!r}")
    if not seeds:
        raise ConfigError("seeds must list at least one int")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"seeds must be ints, got {s!r}")
    if ray not in (None, False, True) and not isinstance(ray, str):
        raise ConfigError(f"ray must be False/None (off), True (local Ray) or an address string, got {ray!r}")
    if ray and jobs > 1:
        raise ConfigError("give either jobs=N (local processes) or ray=..., not both")


def _applicable(model: str, shape: str, num_classes: int, strategies: Iterable[str]) -> dict[str, str]:
    """Strategies that cannot be applied to ``model`` -> the reason."""
    from taoism.strategies import apply_strategy
    from taoism.zoo import get_model

    net = get_model(model, dataset_shape=shape, num_classes=num_classes, seed=0)
    skipped = {}
    for s in strategies:
        try:
            apply_strategy(net, s)
        except ConfigError as exc:
            skipped[s] = str(exc)
    return skipped


def _execute(model: str, dataset: str, strategies: list[str], queries: list[int], seeds: list[int],
             *, jobs: int, ray: str | bool | None, cache: Cache, progress: bool, data_root: str | None,
             config: AttackConfig) -> tuple[list[dict[str, Any]], dict[str, str], Any]:
    ds = dataset_for(dataset, data_root)
    # ``teeslice`` partitions before training, so it needs a sliced model: on a plain model M
    # whose sliced version teeslice_M is in the zoo, the teeslice row attacks a teeslice_M
    # victim (backbone = M's public model, frozen; slices + fc trained on the private data).
    sliced = sliced_counterpart(model) if "teeslice" in strategies else None
    skipped = _applicable(model, ds.shape, ds.num_classes,
                          [s for s in strategies if not (sliced and s == "teeslice")])
    if sliced:
        skipped.update(_applicable(sliced, ds.shape, ds.num_classes, ["teeslice"]))
    use_sliced = sliced is not None and "teeslice" not in skipped

    def model_for(strategy: str) -> str:
        return sliced if use_sliced and strategy == "teeslice" else model

    root = str(cache.root)
    # Phase 1: the public model and the victim of every seed (shared by all of that seed's jobs);
    # the sliced victims after the plain ones, as they reuse the plain public models.
    for m in [model] + ([sliced] if use_sliced else []):
        _run_all([(_prepare_worker, (m, dataset, data_root, s, config, root, progress and jobs == 1 and not ray))
                  for s in seeds], jobs=min(jobs, len(seeds)), ray=ray, desc="models", progress=progress)
    # Phase 2: one job per (strategy, queries, seed).
    specs = [JobSpec(model_for(s), ds.name, s, seed, q, config, data_root, ds.fingerprint)
             for s in strategies if s not in skipped for q in queries for seed in seeds]
    results = _run_all([(_job_worker, (spec, root, False)) for spec in specs], jobs=jobs, ray=ray,
                       desc=f"attacks ({model}, {ds.name})", progress=progress)
    if use_sliced:
        _relative_to_plain(results, model, sliced, ds)
    return results, skipped, ds


def _relative_to_plain(results: list[dict[str, Any]], model: str, sliced: str, ds: Any) -> None:
    """Express the sliced jobs' TEE shares relative to the plain ``model`` (in place).

    The plain model's totals come from its ``none`` job of the same seed and query budget
    (the same deployment accounting); the sliced model's own percentages are kept as
    ``*_pct_sliced``.
    """
    from taoism.zoo import get_model

    plain_totals: dict[tuple[int, int], dict[str, Any]] = {}
    for r in results:
        if "error" not in r and r["job"]["model"] == model and r["job"]["strategy"] == "none":
            plain_totals[(r["job"]["seed"], r["job"]["queries"])] = r["report"]
    n_plain = sum(p.numel() for p in get_model(model, dataset_shape=ds.shape,
                                               num_classes=ds.num_classes).parameters())
    for r in results:
        if "error" in r or r["job"]["model"] != sliced:
            continue
        rep = r["report"]
        ref = plain_totals.get((r["job"]["seed"], r["job"]["queries"]), {})
        p_total = ref.get("params_total", n_plain)
        f_total = ref.get("flops_total")
        rep["params_tee_pct_sliced"] = rep.get("params_tee_pct")
        rep["flops_tee_pct_sliced"] = rep.get("flops_tee_pct")
        rep["params_tee_pct"] = 100.0 * rep["params_tee"] / p_total if p_total else None
        rep["flops_tee_pct"] = 100.0 * rep["flops_tee"] / f_total if f_total else None
        rep["relative_to"] = {"model": model, "params_total": p_total, "flops_total": f_total}
        rep["sliced_model"] = sliced


# -- aggregation -------------------------------------------------------------------------------

def _stats(xs: list[float]) -> dict[str, Any]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def _aggregate(results: list[dict[str, Any]], strategies: list[str], queries: list[int]) -> list[dict[str, Any]]:
    by: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in results:
        if "error" in r:
            continue
        j = r["job"]
        by[(j["strategy"], j["queries"], j["seed"])] = r
    rows = []
    for s in strategies:
        for q in queries:
            runs = sorted((k[2], v) for k, v in by.items() if k[0] == s and k[1] == q)
            if not runs:
                continue
            row: dict[str, Any] = {"strategy": s, "queries": q, "seeds": [seed for seed, _ in runs],
                                   "metrics": {}, "x_black_box": {}}
            for m in METRICS:
                row["metrics"][m] = _stats([r["metrics"].get(m) for _, r in runs])
            for m in RATIO_METRICS:
                ratios = []
                for seed, r in runs:
                    bb = by.get(("all", q, seed))
                    if bb is None:
                        continue
                    a, b = r["metrics"].get(m), bb["metrics"].get(m)
                    if a is not None and b is not None and b > 0 and not math.isnan(a) and not math.isnan(b):
                        ratios.append(a / b)
                row["x_black_box"][m] = _stats(ratios)
            rep = runs[0][1]["report"]
            row["params_tee_pct"] = rep.get("params_tee_pct")
            row["flops_tee_pct"] = rep.get("flops_tee_pct")
            row["params_tee"] = rep.get("params_tee")
            row["flops_tee"] = rep.get("flops_tee")
            row["latency_ms"] = _stats([r["latency_ms"]["median"] for _, r in runs])
            row["model"] = runs[0][1]["job"]["model"]
            rows.append(row)
    return rows


# -- output ------------------------------------------------------------------------------------

def _csv_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    cols = ["strategy", "queries", "n_seeds", "params_tee_pct", "flops_tee_pct",
            "latency_ms_mean", "latency_ms_std"]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
        if m in RATIO_METRICS:
            cols += [f"{m}_x_bb_mean", f"{m}_x_bb_std"]
    out = []
    for r in rows:
        d = {"strategy": r["strategy"], "queries": r["queries"], "n_seeds": len(r["seeds"]),
             "params_tee_pct": r["params_tee_pct"], "flops_tee_pct": r["flops_tee_pct"],
             "latency_ms_mean": r["latency_ms"]["mean"], "latency_ms_std": r["latency_ms"]["std"]}
        for m in METRICS:
            d[f"{m}_mean"], d[f"{m}_std"] = r["metrics"][m]["mean"], r["metrics"][m]["std"]
            if m in RATIO_METRICS:
                d[f"{m}_x_bb_mean"] = r["x_black_box"][m]["mean"]
                d[f"{m}_x_bb_std"] = r["x_black_box"][m]["std"]
        out.append(d)
    return cols, out


def _write_csv(path: Path, cols: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _write_json(path: Path, obj: Any) -> None:
    import json

    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str))


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("writing the plot needs matplotlib: pip install 'taoism[plot]'") from exc
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # no pyplot, no global backend switch
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _plot_table(path: Path, rows: list[dict[str, Any]], queries: list[int], title: str) -> None:
    panels = (("ms_accuracy", "model-stealing accuracy"), ("mia_accuracy", "membership-inference accuracy"))
    fig, axes = _figure(len(panels), len(queries), (5.0 * len(queries), 4.0 * len(panels)))
    for c, q in enumerate(queries):
        qrows = [r for r in rows if r["queries"] == q]
        for rr, (m, label) in enumerate(panels):
            ax = axes[rr][c]
            for r in qrows:
                st = r["metrics"][m]
                if st["mean"] is None or r["flops_tee_pct"] is None:
                    continue
                ax.errorbar([r["flops_tee_pct"]], [100 * st["mean"]], yerr=[100 * (st["std"] or 0)],
                            fmt="o", capsize=3, label=r["strategy"])
                ax.annotate(r["strategy"], (r["flops_tee_pct"], 100 * st["mean"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            bb = next((r for r in qrows if r["strategy"] == "all"), None)
            if bb is not None and bb["metrics"][m]["mean"] is not None:
                ax.axhline(100 * bb["metrics"][m]["mean"], ls="--", lw=0.8, color="gray", label="black-box")
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(-0.2, 130)
            ax.set_xlabel("% of FLOPs in the TEE")
            ax.set_ylabel(f"{label} (%)")
            ax.set_title(f"{title}, {q} queries", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][c].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _out_dir(out_dir: str | os.PathLike | None) -> Path | None:
    if out_dir is None:
        return None
    p = Path(out_dir).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def format_table(result: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`run_attack_table`'s rows."""
    head = (f"{'strategy':<18} {'q':>5} {'%par':>6} {'%FLOP':>6} {'lat ms':>7} {'MS acc':>13} {'xBB':>5} "
            f"{'fidelity':>13} {'adv':>13} {'MIA acc':>13} {'xBB':>5} {'gen gap':>7} {'conf gap':>8}")
    lines = [head]

    def pm(st: dict[str, Any]) -> str:
        return "-" if st["mean"] is None else f"{100 * st['mean']:5.1f}+-{100 * st['std']:4.1f}"

    def x(st: dict[str, Any]) -> str:
        return "-" if st["mean"] is None else f"{st['mean']:.2f}"

    for r in result["rows"]:
        m, xb = r["metrics"], r["x_black_box"]
        lines.append(
            f"{r['strategy']:<18} {r['queries']:>5} {r['params_tee_pct'] or 0:6.2f} {r['flops_tee_pct'] or 0:6.2f} "
            f"{r['latency_ms']['mean'] or 0:7.2f} {pm(m['ms_accuracy']):>13} {x(xb['ms_accuracy']):>5} "
            f"{pm(m['fidelity']):>13} {pm(m['adv_success']):>13} {pm(m['mia_accuracy']):>13} "
            f"{x(xb['mia_accuracy']):>5} {100 * (m['generalization_gap']['mean'] or 0):7.1f} "
            f"{100 * (m['confidence_gap']['mean'] or 0):8.1f}")
    for s, why in result.get("skipped", {}).items():
        lines.append(f"skipped {s}: {why}")
    for e in result.get("errors", []):
        lines.append(f"failed {e['job']['strategy']} q={e['job']['queries']} seed={e['job']['seed']}: {e['error']}")
    return "\n".join(lines)


# -- public API --------------------------------------------------------------------------------

def run_attack_table(model: str, dataset: str, strategies: Sequence[str] | str | None = None,
                     queries: Sequence[int] = (50,), seeds: Sequence[int] = (0,), *, jobs: int = 1,
                     ray: str | None | bool = False, cache_dir: str | os.PathLike | None = None,
                     out_dir: str | os.PathLike | None = None, progress: bool = True,
                     epochs: int | None = None, data_root: str | os.PathLike | None = None,
                     config: AttackConfig | None = None, smoke: bool = False) -> dict[str, Any]:
    """Attack ``model`` trained on ``dataset`` under each strategy; return (and write) the table.

    ``strategies``: strategy strings (see :mod:`taoism.strategies`); None or ``"all"`` alone means
    the six reference configurations. The baselines ``none`` (white-box) and ``all``
    (black-box) are always added. ``teeslice`` on a plain model M whose sliced version
    ``teeslice_M`` is in the zoo (e.g. ``small_cnn``) attacks a ``teeslice_M`` victim (M's public
    model as its frozen backbone, private slices and head trained on the private data); its row
    (``row["model"]`` says which victim) gives ``params_tee_pct`` / ``flops_tee_pct`` relative to
    the plain M. Strategies that do not apply to the model (e.g. ``teeslice`` on a plain model
    without a sliced version) are listed under ``skipped``.
    ``queries``: model-stealing query budgets; ``seeds``: one experiment per seed (data split,
    public model, victim, queries, attack training). Each (strategy, queries, seed) is an
    independent job cached under ``cache_dir`` (default ``~/.cache/taoism``) by a hash of its
    full configuration; a rerun only computes what is missing.
    ``jobs``: local worker processes (spawn); ``ray``: False/None (off), True (local Ray) or a
    Ray address (the cache dir must then be shared by the workers).
    ``epochs``: model-stealing fine-tuning epochs (default 10, the paper's). ``config``:
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
    _check_common(model, dataset, seeds, jobs, ray)
    if strategies is None or (isinstance(strategies, str) and strategies.strip().lower() == "all"):
        strategies = list(REFERENCE_STRATEGIES)
    names = expand_strategies(strategies)
    names = ["none"] + [s for s in names if s not in BASELINES] + ["all"]
    qs = [int(q) for q in queries]
    if not qs or any(q < 1 for q in qs):
        raise ConfigError(f"queries must list positive ints, got {list(queries)!r}")
    cfg = config or AttackConfig.preset(dataset, smoke=smoke)
    if epochs is not None:
        cfg = AttackConfig(**{**cfg.to_dict(), "ms_epochs": int(epochs)})
    cache = Cache(cache_dir)
    root = os.fspath(data_root) if data_root is not None else None
    results, skipped, ds = _execute(model, dataset, names, qs, list(seeds), jobs=jobs, ray=ray,
                                    cache=cache, progress=progress, data_root=root, config=cfg)
    rows = _aggregate(results, names, qs)
    hits = sum(1 for r in results if r.get("cache_hit"))
    out: dict[str, Any] = {
        "model": model, "dataset": ds.name, "strategies": names, "queries": qs, "seeds": list(seeds),
        "config": cfg.to_dict(), "rows": rows,
        "jobs": [r for r in results if "error" not in r],
        "errors": [r for r in results if "error" in r],
        "skipped": skipped,
        "cache": {"dir": str(cache.root), "job_hits": hits,
                  "job_misses": sum(1 for r in results if "error" not in r) - hits},
        "wall_s": time.perf_counter() - t0,
        "files": {},
    }
    d = _out_dir(out_dir)
    if d is not None:
        stem = f"attack_{model}_{ds.name}"
        cols, crows = _csv_rows(rows)
        paths = {"json": d / f"{stem}.json", "csv": d / f"{stem}.csv", "png": d / f"{stem}.png"}
        out["files"] = {k: str(v) for k, v in paths.items()}
        _write_csv(paths["csv"], cols, crows)
        _plot_table(paths["png"], rows, qs, f"{model} / {ds.name}")
        _write_json(paths["json"], out)
    return out


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
    raise ConfigError(f"sweep: unknown strategy family {family!r}; use deep, shallow, magnitude, "
                      "intermediate (or pass configs={family: [...]})")


def sweep(model: str, dataset: str,
          strategies: Sequence[str] = ("deep", "shallow", "magnitude", "intermediate"),
          queries: int = 50, seeds: Sequence[int] = (0,), *, configs: dict[str, list[str]] | None = None,
          metric: str = "ms_accuracy", threshold: float = 1.05, jobs: int = 1,
          ray: str | None | bool = False, cache_dir: str | os.PathLike | None = None,
          out_dir: str | os.PathLike | None = None, progress: bool = True, epochs: int | None = None,
          data_root: str | os.PathLike | None = None, config: AttackConfig | None = None,
          smoke: bool = False) -> dict[str, Any]:
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
    from taoism.zoo import get_model, units

    t0 = time.perf_counter()
    _check_common(model, dataset, seeds, jobs, ray)
    if metric not in METRICS:
        raise ConfigError(f"sweep: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not (isinstance(threshold, (int, float)) and threshold >= 1.0):
        raise ConfigError(f"sweep: threshold must be a number >= 1, got {threshold!r}")
    cfg = config or AttackConfig.preset(dataset, smoke=smoke)
    if epochs is not None:
        cfg = AttackConfig(**{**cfg.to_dict(), "ms_epochs": int(epochs)})
    ds = dataset_for(dataset, data_root)
    net = get_model(model, dataset_shape=ds.shape, num_classes=ds.num_classes, seed=0)
    n_units = len(units(net))
    import torch.nn as nn

    n_layers = sum(1 for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    fams = {f: list((configs or {}).get(f) or _sweep_configs(f, n_units, n_layers)) for f in strategies}
    names = ["all"] + [c for f in fams.values() for c in f]
    names = list(dict.fromkeys(names))
    cache = Cache(cache_dir)
    root = os.fspath(data_root) if data_root is not None else None
    results, skipped, ds = _execute(model, dataset, names, [int(queries)], list(seeds), jobs=jobs,
                                    ray=ray, cache=cache, progress=progress, data_root=root, config=cfg)
    rows = {r["strategy"]: r for r in _aggregate(results, names, [int(queries)])}
    bb = rows.get("all")
    if bb is None or bb["metrics"][metric]["mean"] is None:
        raise TaoismError("sweep: the black-box baseline failed; see the errors in the job results")
    bb_val = bb["metrics"][metric]["mean"]
    families: dict[str, Any] = {}
    for fam, cs in fams.items():
        pts, c_star = [], None
        for c in cs:
            r = rows.get(c)
            if r is None:
                pts.append({"config": c, "skipped": skipped.get(c, "failed")})
                continue
            v = r["metrics"][metric]["mean"]
            ok = v is not None and v <= threshold * bb_val
            pts.append({"config": c, metric: r["metrics"][metric], "x_black_box": r["x_black_box"].get(metric),
                        "flops_tee_pct": r["flops_tee_pct"], "params_tee_pct": r["params_tee_pct"],
                        "latency_ms": r["latency_ms"], "within_threshold": ok})
            if ok and c_star is None:
                c_star = r
        families[fam] = {
            "points": pts,
            "c_star": c_star["strategy"] if c_star else None,
            "c_star_flops_tee_pct": c_star["flops_tee_pct"] if c_star else 100.0,
            "c_star_params_tee_pct": c_star["params_tee_pct"] if c_star else 100.0,
        }
    hits = sum(1 for r in results if r.get("cache_hit"))
    out = {"model": model, "dataset": ds.name, "queries": int(queries), "seeds": list(seeds),
           "metric": metric, "threshold": threshold, "black_box": bb["metrics"][metric],
           "families": families, "config": cfg.to_dict(),
           "errors": [r for r in results if "error" in r], "skipped": skipped,
           "cache": {"dir": str(cache.root), "job_hits": hits,
                     "job_misses": sum(1 for r in results if "error" not in r) - hits},
           "wall_s": time.perf_counter() - t0, "files": {}}
    d = _out_dir(out_dir)
    if d is not None:
        stem = f"sweep_{model}_{ds.name}"
        paths = {"json": d / f"{stem}.json", "csv": d / f"{stem}.csv", "png": d / f"{stem}.png"}
        out["files"] = {k: str(v) for k, v in paths.items()}
        cols = ["family", "config", "flops_tee_pct", "params_tee_pct", f"{metric}_mean", f"{metric}_std",
                "x_black_box", "within_threshold", "is_c_star"]
        crows = []
        for fam, f in families.items():
            for p in f["points"]:
                if "skipped" in p:
                    continue
                crows.append({"family": fam, "config": p["config"], "flops_tee_pct": p["flops_tee_pct"],
                              "params_tee_pct": p["params_tee_pct"], f"{metric}_mean": p[metric]["mean"],
                              f"{metric}_std": p[metric]["std"],
                              "x_black_box": (p["x_black_box"] or {}).get("mean"),
                              "within_threshold": p["within_threshold"],
                              "is_c_star": p["config"] == f["c_star"]})
        _write_csv(paths["csv"], cols, crows)
        fig, axes = _figure(1, 1, (6.5, 4.5))
        ax = axes[0][0]
        for fam, f in families.items():
            xs = [p["flops_tee_pct"] for p in f["points"] if "skipped" not in p]
            ys = [100 * p[metric]["mean"] for p in f["points"] if "skipped" not in p]
            ax.plot(xs, ys, "o-", label=f"{fam} (C* {f['c_star'] or 'none'}: {f['c_star_flops_tee_pct']:.1f}% FLOPs)")
        ax.axhline(100 * bb_val, ls="--", color="gray", lw=0.8, label="black-box")
        ax.axhline(100 * bb_val * threshold, ls=":", color="gray", lw=0.8, label=f"{threshold}x black-box")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(-0.2, 130)
        ax.set_xlabel("% of FLOPs in the TEE")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"sweet spot: {model} / {ds.name}, {queries} queries", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(paths["png"], dpi=120)
        _write_json(paths["json"], out)
    return out
