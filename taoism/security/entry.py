"""The entry point the ``taoism attack`` command calls: the table (and optionally the sweep).

The only place in :mod:`taoism.security` that reads the environment (``TAOISM_CACHE_DIR``, via
:func:`~taoism.security.cache.resolve_cache_dir`); library functions take ``cache_dir``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taoism.security.cache import resolve_cache_dir
from taoism.security.report import format_table
from taoism.security.sweep import sweep
from taoism.security.table import run_attack_table

__all__ = ["main_attack"]


def main_attack(
    model: str = "small_cnn",
    dataset: str = "glyphs",
    strategies: Sequence[str] = ("all",),
    queries: Sequence[int] = (50, 500),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    queries_per_class: Sequence[int] | None = None,
    jobs: int = 1,
    ray: str | bool = False,
    do_sweep: bool = False,
    epochs: int | None = None,
    data_root: str | None = None,
    smoke: bool = False,
    out_dir: str | os.PathLike = "results/attack",
    cache_dir: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the attack table (and with ``do_sweep`` the sweet-spot sweep), print and write them.

    ``cache_dir`` (``--cache-dir``) wins over ``environ["TAOISM_CACHE_DIR"]`` (``environ``
    defaults to ``os.environ``), then ``~/.cache/taoism``. Returns ``{"table": ..., "sweep": ...}``.
    """
    cache = resolve_cache_dir(cache_dir, os.environ if environ is None else environ)
    common: dict[str, Any] = {
        "jobs": jobs,
        "ray": ray,
        "out_dir": Path(out_dir),
        "epochs": epochs,
        "data_root": data_root,
        "smoke": smoke,
        "cache_dir": cache,
        "progress": not quiet,
    }
    table = run_attack_table(
        model,
        dataset,
        list(strategies),
        list(queries),
        list(seeds),
        queries_per_class=queries_per_class,
        **common,
    )
    if not quiet:
        print(format_table(table))
    found = None
    if do_sweep:
        q = table["queries"][0]
        found = sweep(model, dataset, queries=q, seeds=list(seeds), **common)
        if not quiet:
            for family, info in found.get("families", {}).items():
                print(
                    f"sweet spot {family}: C* = {info.get('c_star')}, "
                    f"%FLOPs(C*) = {info.get('c_star_flops_tee_pct')}"
                )
    if not quiet:
        print(f"results in {out_dir} (cache {cache}); {table['wall_s']:.0f} s", file=sys.stderr)
    return {"table": table, "sweep": found}
