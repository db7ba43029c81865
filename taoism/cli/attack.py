"""``taoism attack``: model stealing and membership inference against each TSDP strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from taoism.cli._options import DIRECTORY, Output, int_list, output_options, str_list


@click.command()
@click.option("--model", default="small_cnn", help="Zoo model attacked (see `taoism models`).")
@click.option(
    "--dataset",
    default="fashion-mnist",
    help="Offline data set: fashion-mnist (Debian's dataset-fashion-mnist), digits "
    "(scikit-learn's), cifar10 or cifar100 (under --data-root).",
)
@click.option(
    "--strategies",
    default="all",
    callback=str_list,
    help="Comma-separated TSDP strategies, or all (the six reference configurations); "
    "the baselines none (white-box) and all (black-box) are always added.",
)
@click.option(
    "--queries",
    default="50,500",
    callback=int_list,
    help="Comma-separated model-stealing query budgets (total queries).",
)
@click.option(
    "--queries-per-class",
    default=None,
    callback=int_list,
    help="Comma-separated query budgets per class (e.g. 5,50); replaces --queries when given.",
)
@click.option(
    "--seeds",
    default="0,1,2",
    callback=int_list,
    help="Comma-separated seeds: one experiment (split, models, queries) per seed.",
)
@click.option("--jobs", type=click.IntRange(min=1), default=1, help="Local worker processes.")
@click.option(
    "--ray",
    metavar="[ADDRESS]",
    is_flag=False,
    flag_value="local",
    default=None,
    help="Run jobs on Ray (pip install taoism[ray]): alone for a local Ray, or with a "
    "cluster ADDRESS.",
)
@click.option("--sweep", is_flag=True, help="Also find each strategy family's sweet spot C*.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Fix the surrogate's fine-tuning epochs  [default: chosen with the learning rate on a "
    "held-out 20% of the attacker's own queries]",
)
@click.option(
    "--data-root",
    type=DIRECTORY,
    default=None,
    help="Data set directory  [default: the system's]",
)
@click.option(
    "--cache-dir",
    type=DIRECTORY,
    default=None,
    envvar="TAOISM_CACHE_DIR",
    show_envvar=True,
    help="Cache of trained models and finished jobs (a rerun computes only what is "
    "missing)  [default: ~/.cache/taoism]",
)
@click.option("--smoke", is_flag=True, help="A tiny, fast configuration (for checks).")
@output_options(
    out_default=Path("results/attack"),
    out_help="Write attack_<model>_<dataset>.json, .csv and .png (and sweep_* with "
    "--sweep) into DIR.",
)
def attack(
    model: str,
    dataset: str,
    strategies: list[str],
    queries: list[int],
    queries_per_class: list[int] | None,
    seeds: list[int],
    jobs: int,
    ray: str | None,
    sweep: bool,
    epochs: int | None,
    data_root: Path | None,
    cache_dir: Path | None,
    smoke: bool,
    out: Output,
) -> None:
    """Attack a victim deployed under each strategy: model stealing and membership inference.

    Trains a public model and the victim on offline data, then attacks each deployment from
    what its host actually holds. --json writes the table (and the sweep with --sweep).
    """
    from taoism.security import format_table, run_attack_table
    from taoism.security import sweep as run_sweep

    common: dict[str, Any] = {
        "jobs": jobs,
        "ray": True if ray == "local" else (ray or False),
        "out_dir": out.out_dir,
        "epochs": epochs,
        "data_root": data_root,
        "smoke": smoke,
        "cache_dir": cache_dir,
        "progress": out.progress,
    }
    result = run_attack_table(
        model, dataset, strategies, queries, seeds, queries_per_class=queries_per_class, **common
    )
    click.echo(format_table(result))
    if sweep:
        found = run_sweep(model, dataset, queries=result["queries"][0], seeds=seeds, **common)
        for family, info in found.get("families", {}).items():
            click.echo(
                f"sweet spot {family}: C* = {info.get('c_star')}, "
                f"%FLOPs(C*) = {info.get('c_star_flops_tee_pct')}"
            )
        result = {**result, "sweep": found}
    if out.out_dir is not None:
        out.note(f"results in {out.out_dir}")
    out.emit(result, "attack", lambda d: {})


def register(app: click.Group) -> None:
    """Add ``attack`` to ``app``."""
    app.add_command(attack)
