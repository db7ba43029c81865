"""Execution of the independent, cached attack jobs: in process, in local processes or on Ray."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from taoism.errors import ConfigError, TaoismError
from taoism.security.cache import Cache
from taoism.security.experiment import AttackConfig, JobSpec, run_job
from taoism.security.models import dataset_for, prepare_models, public_state, shadow_state
from taoism.security.sliced import sliced_model, teeslice_applies, trains_slices

__all__ = ["check_common", "execute", "run_all", "run_graph"]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _model_worker(
    kind: str,
    model: str,
    dataset: str,
    data_root: str | None,
    seed: int,
    config: AttackConfig,
    cache_root: str,
    progress: bool,
) -> dict[str, Any]:
    """Train (or read) one of a seed's models: ``public``, ``victim``, ``shadow`` or the TEESlice
    model of the victim / the shadow (``slices:victim``, ``slices:shadow``); returns its wall
    time (near 0 when it was cached)."""
    t0 = time.perf_counter()
    ds = dataset_for(dataset, data_root, cache_root, config.data_options)
    cache = Cache(cache_root)
    if kind == "public":
        public_state(model, ds, seed, config, cache, progress=progress)
    elif kind == "victim":
        prepare_models(model, ds, seed, config, cache, progress=progress)
    elif kind == "shadow":
        shadow_state(model, ds, seed, config, cache, progress=progress)
    else:
        sliced_model(model, ds, seed, config, cache, role=kind.split(":", 1)[1], progress=progress)
    return {"kind": kind, "seed": seed, "wall_s": time.perf_counter() - t0}


def _job_worker(spec: JobSpec, cache_root: str, progress: bool) -> dict[str, Any]:
    try:
        return run_job(spec, Cache(cache_root), progress=progress)
    except TaoismError as exc:
        return {"job": spec.to_json(), "error": f"{type(exc).__name__}: {exc}"}


def _ray_module(ray: str | bool) -> Any:
    try:
        import ray as ray_mod
    except ImportError:
        raise ConfigError(
            "ray= needs Ray, which is not installed: pip install 'taoism[ray]' "
            "(or leave ray=False and use jobs=N for local processes)"
        ) from None
    if not ray_mod.is_initialized():
        ray_mod.init(address=ray if isinstance(ray, str) else None)
    return ray_mod


def run_all(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    jobs: int,
    ray: str | bool | None,
    desc: str,
    progress: bool,
) -> list[Any]:
    """Run ``fn(*args)`` for every call (results in call order): in this process, in ``jobs``
    spawned processes, or on Ray."""
    if not calls:
        return []
    if not ray and jobs > 1:
        return run_graph(calls, [()] * len(calls), jobs=jobs, desc=desc, progress=progress)
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
        else:
            for i, (fn, args) in enumerate(calls):
                out[i] = fn(*args)
                bar.update(1)
    finally:
        bar.close()
    return out


def run_graph(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
    deps: list[Sequence[int]],
    *,
    jobs: int,
    desc: str,
    progress: bool,
) -> list[Any]:
    """Run ``fn(*args)`` for every call (results in call order) in ``jobs`` spawned processes,
    each call as soon as the calls it depends on (``deps[i]``: indices of earlier calls) are
    done, ready calls in list order. So a worker never idles while another seed's models train,
    and a list ordered longest first leaves a short tail. ``jobs == 1``: in list order here."""
    if len(deps) != len(calls) or any(d >= i for i, ds in enumerate(deps) for d in ds):
        raise ConfigError("run_graph: deps[i] must list indices of calls before call i")
    if jobs <= 1 or len(calls) <= 1:
        return run_all(calls, jobs=1, ray=None, desc=desc, progress=progress)
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait

    bar = tqdm(total=len(calls), desc=desc, disable=not progress, dynamic_ncols=True)
    out: list[Any] = [None] * len(calls)
    done: set[int] = set()
    waiting = list(range(len(calls)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    try:
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        ) as pool:
            running: dict[Any, int] = {}
            while waiting or running:
                while len(running) < jobs:
                    ready = next((i for i in waiting if set(deps[i]) <= done), None)
                    if ready is None:
                        break
                    waiting.remove(ready)
                    fn, args = calls[ready]
                    running[pool.submit(fn, *args)] = ready
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    out[i] = fut.result()
                    done.add(i)
                    bar.update(1)
    finally:
        bar.close()
    return out


def check_common(
    model: str, dataset: str, seeds: Sequence[int], jobs: int, ray: str | bool | None
) -> None:
    """Validate the arguments every entry point shares."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an int >= 1, got {jobs!r}")
    if not seeds:
        raise ConfigError("seeds must list at least one int")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"seeds must be ints, got {s!r}")
    if ray not in (None, False, True) and not isinstance(ray, str):
        raise ConfigError(
            f"ray must be False/None (off), True (local Ray) or an address string, got {ray!r}"
        )
    if ray and jobs > 1:
        raise ConfigError("give either jobs=N (local processes) or ray=..., not both")


def _applicable(
    model: str, shape: str, num_classes: int, strategies: Iterable[str]
) -> dict[str, str]:
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


def execute(
    model: str,
    dataset: str,
    strategies: list[str],
    queries: list[int],
    seeds: list[int],
    *,
    jobs: int,
    ray: str | bool | None,
    cache: Cache,
    progress: bool,
    data_root: str | None,
    config: AttackConfig,
) -> tuple[list[dict[str, Any]], dict[str, str], Any, list[dict[str, Any]]]:
    """Train every seed's models and run one job per (strategy, queries, seed) (locally as one
    dependency graph, :func:`run_graph`); returns the job results, the strategies skipped (with
    the reason), the data set and the models' wall times (``{"kind", "seed", "wall_s"}``)."""
    ds = dataset_for(dataset, data_root, cache.root, config.data_options)
    # ``teeslice`` partitions before training: on a plain model M its row deploys the slices
    # taoism.teeslice trains from M's victim over M's public model (taoism.security.sliced);
    # a sliced zoo model (teeslice_M) is deployed as it is.
    slices = any(trains_slices(model, s) for s in strategies)
    skipped = _applicable(
        model, ds.shape, ds.num_classes, [s for s in strategies if not (slices and s == "teeslice")]
    )
    why = teeslice_applies(model, ds) if slices else None
    if why:
        skipped["teeslice"] = why
    use_slices = slices and not why
    root = str(cache.root)
    show = progress and jobs == 1 and not ray
    specs = [
        JobSpec(model, ds.name, s, seed, q, config, data_root, ds.fingerprint)
        for s in strategies
        if s not in skipped
        for q in queries
        for seed in seeds
    ]
    if ray:  # in phases: each seed's models (public, then victim and shadow, then slices), jobs
        phases = [["public"], ["victim", "shadow"]]
        if use_slices:
            phases.append(["slices:victim", "slices:shadow"])
        models: list[dict[str, Any]] = []
        for kinds in phases:
            models += run_all(
                [
                    (_model_worker, (k, model, dataset, data_root, s, config, root, show))
                    for k in kinds
                    for s in seeds
                ],
                jobs=1,
                ray=ray,
                desc="models",
                progress=progress,
            )
        results = run_all(
            [(_job_worker, (spec, root, False)) for spec in specs],
            jobs=1,
            ray=ray,
            desc=f"attacks ({model}, {ds.name})",
            progress=progress,
        )
    else:
        results, models = _execute_graph(
            specs, model, dataset, data_root, seeds, config, root, jobs, use_slices, progress, show
        )
    if use_slices:
        _relative_to_plain(results, model, ds)
    return results, skipped, ds, models


def _execute_graph(
    specs: list[JobSpec],
    model: str,
    dataset: str,
    data_root: str | None,
    seeds: list[int],
    config: AttackConfig,
    root: str,
    jobs: int,
    use_slices: bool,
    progress: bool,
    show: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every seed's models and every job as one dependency graph on ``jobs`` local processes.

    Order (the scheduler starts the first ready call): public models, victims, shadows, TEESlice
    models, then the jobs longest first (larger query budgets first, TEESlice's three starts
    first among them); a job waits only for its own seed's models. Returns the job results (in
    ``specs`` order) and the models' wall times.
    """
    kinds = ["public", "victim", "shadow"] + (
        ["slices:victim", "slices:shadow"] if use_slices else []
    )
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    deps: list[Sequence[int]] = []
    index: dict[tuple[str, int], int] = {}
    needs = {
        "public": (),
        "victim": ("public",),
        "shadow": ("public",),
        "slices:victim": ("victim",),
        "slices:shadow": ("shadow",),
    }
    for kind in kinds:
        for s in seeds:
            index[(kind, s)] = len(calls)
            calls.append((_model_worker, (kind, model, dataset, data_root, s, config, root, show)))
            deps.append([index[(k, s)] for k in needs[kind]])
    order = sorted(
        range(len(specs)),
        key=lambda i: (-specs[i].queries, not trains_slices(model, specs[i].strategy), i),
    )
    first_job = len(calls)
    for i in order:
        spec = specs[i]
        want = ["victim", "shadow"]
        if trains_slices(model, spec.strategy):
            want += ["slices:victim", "slices:shadow"]
        calls.append((_job_worker, (spec, root, False)))
        deps.append([index[(k, spec.seed)] for k in want])
    out = run_graph(calls, deps, jobs=jobs, desc=f"models + attacks ({model})", progress=progress)
    results: list[dict[str, Any]] = [{}] * len(specs)
    for pos, i in enumerate(order):
        results[i] = out[first_job + pos]
    return results, out[:first_job]


def _relative_to_plain(results: list[dict[str, Any]], model: str, ds: Any) -> None:
    """Express the TEESlice jobs' TEE shares relative to the plain ``model`` (in place).

    The plain model's totals come from its ``none`` job of the same seed and query budget
    (the same deployment accounting); the sliced model's own percentages are kept as
    ``*_pct_sliced``.
    """
    from taoism.zoo import get_model

    plain_totals: dict[tuple[int, int], dict[str, Any]] = {}
    for r in results:
        if "error" not in r and r["job"]["model"] == model and r["job"]["strategy"] == "none":
            plain_totals[(r["job"]["seed"], r["job"]["queries"])] = r["report"]
    n_plain = sum(
        p.numel()
        for p in get_model(model, dataset_shape=ds.shape, num_classes=ds.num_classes).parameters()
    )
    for r in results:
        if "error" in r or not trains_slices(r["job"]["model"], r["job"]["strategy"]):
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
        rep["sliced_model"] = "taoism.teeslice.SlicedNet"
