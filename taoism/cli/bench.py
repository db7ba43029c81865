"""``taoism bench``: time every TSDP strategy and the baselines on one model, in one run."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._common import set_host_threads
from taoism.cli._options import Output, output_options, repeats_options, str_list


@click.command()
@click.option("--model", default="resnet18", help="Zoo model name (see `taoism models`).")
@click.option(
    "--dataset-shape", default="cifar", help="Input shape family: cifar, imagenet, mnist, digits."
)
@click.option("--batch", type=click.IntRange(min=1), default=1, help="Batch size.")
@click.option(
    "--strategies",
    default="all",
    callback=str_list,
    help="Comma-separated TSDP strategies (e.g. deep:1,magnitude:0.01), or all (the six "
    "reference configurations); the baselines none and all are always measured.",
)
@repeats_options(repeats=10, warmup=2)
@click.option(
    "--device", default=None, help="Untrusted device  [default: cuda if present, else cpu]"
)
@click.option(
    "--system-heap",
    is_flag=True,
    help="Leave malloc as the C library sets it, in this process and in the enclave [default: "
    "both keep the memory they free (taoism.enclave.heap), so that plain PyTorch and the "
    "shielded runs are timed under the same allocator, without page-fault churn]",
)
@output_options(
    out_default=Path("results/bench"),
    out_help="Write strategies.json, strategies.csv and the PNG plots into DIR.",
)
def bench(
    model: str,
    dataset_shape: str,
    batch: int,
    strategies: list[str],
    repeats: int,
    warmup: int,
    threads: int,
    device: str | None,
    system_heap: bool,
    out: Output,
) -> None:
    """Time the baselines and every TSDP strategy on one zoo model, in one run."""
    from taoism.bench.strategies import format_table, run_strategy_bench, write_outputs
    from taoism.enclave.heap import retain_heap

    set_host_threads(threads)
    host_heap = "system" if system_heap or not retain_heap() else "retained"
    result = run_strategy_bench(
        model,
        dataset_shape,
        batch,
        strategies,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        progress=out.progress,
        retain_heap=not system_heap,
        **({"device": device} if device else {}),
    )
    result["meta"]["host_heap"] = host_heap
    click.echo(format_table(result))
    out.emit(result, "strategies", lambda d: write_outputs(result, d))


def register(app: click.Group) -> None:
    """Add ``bench`` to ``app``."""
    app.add_command(bench)
