"""``taoism run``: shield a zoo model, check its outputs, print the per-layer profile."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._common import ModelArgs, mode_option, model_options, set_host_threads
from taoism.cli._options import Output, output_options, package_options, repeats_options, write_json


@click.command()
@model_options
@mode_option(" A placement, plan or strategy implies split.")
@repeats_options(repeats=20, warmup=3)
@click.option(
    "--enclave-threads", type=click.IntRange(min=1), default=1, help="Enclave torch threads."
)
@package_options("Deploy")
@output_options(out_help="Write run.json (as --json) and plan.json (reuse with --plan) into DIR.")
def run(
    spec: ModelArgs,
    mode: str,
    repeats: int,
    warmup: int,
    threads: int,
    enclave_threads: int,
    package: str | None,
    keyserver: str | None,
    owner_public: str | None,
    platform_key: str | None,
    out: Output,
) -> None:
    """Shield a zoo model, compare its output with plain PyTorch, print plan and profile.

    Plain PyTorch is timed on the same device and thread count in the same run. --json writes
    plan, profile, baseline and enclave statistics. With --package, deploy the sealed package
    instead (attested key release; no plain model to compare with) and print plan and profile.
    """
    from taoism.bench import time_plain
    from taoism.runtime import default_device, shield

    set_host_threads(threads)
    if package is not None:
        _run_package(
            package, keyserver, owner_public, platform_key, repeats, warmup, enclave_threads, out
        )
        return
    model, x = spec.build()
    if spec.places:
        mode = "split"
    kw = spec.shield_kwargs(mode, model, enclave_threads)
    device = kw.get("device") or default_device()
    out.note(
        f"taoism run: {spec.model} ({spec.dataset_shape}) batch {spec.batch}, mode {mode}, "
        f"device {device}, {threads} host thread(s), {enclave_threads} enclave thread(s)"
    )
    with shield(model, x, **kw) as sm:
        ref = model(x)
        y = sm(x)
        err = (y.float() - ref.float()).abs().max().item()
        prof = sm.profile(x, repeats=repeats, warmup=warmup)
        plain = time_plain(model, x, device=device, repeats=repeats, warmup=warmup)
        stats = sm.stats()
        click.echo(sm.plan.table())
        click.echo()
        click.echo(prof.table())
    ratio = prof.end_to_end.median / plain.median if plain.median else float("nan")
    click.echo(
        f"\nplain PyTorch on {device}: {plain.ms()}; shielded / plain = {ratio:.3f}x; "
        f"max |output - plain| = {err:.3g}"
    )
    out.detail(f"enclave statistics: {stats}")
    plan_json = sm.plan.to_json()
    result = {
        "model": spec.model,
        "dataset_shape": spec.dataset_shape,
        "mode": mode,
        "batch": spec.batch,
        "threads": threads,
        "enclave_threads": enclave_threads,
        "plan": plan_json,
        "profile": prof.to_json(),
        "plain": plain.to_json(),
        "ratio_to_plain": ratio,
        "max_abs_error": err,
        "enclave_stats": stats,
    }

    def files(d: Path) -> dict[str, Path]:
        return {
            "run": write_json(d / "run.json", result),
            "plan": write_json(d / "plan.json", plan_json),
        }

    out.emit(result, "run", files)


def _run_package(
    package: str,
    keyserver: str | None,
    owner_public: str | None,
    platform_key: str | None,
    repeats: int,
    warmup: int,
    enclave_threads: int,
    out: Output,
) -> None:
    from taoism.errors import ConfigError
    from taoism.runtime.deploy import deploy

    if not keyserver or not owner_public:
        raise ConfigError("--package needs --keyserver URL and --owner-public owner.pub")
    with deploy(
        package,
        keyserver,
        owner_public=owner_public,
        platform_key=platform_key,
        threads=enclave_threads,
    ) as sm:
        x = sm.example_inputs(1)
        prof = sm.profile(*x, repeats=repeats, warmup=warmup)
        click.echo(sm.plan.table())
        click.echo()
        click.echo(prof.table())
        result = {
            "package": package,
            "plan": sm.plan.to_json(),
            "profile": prof.to_json(),
            "enclave_stats": sm.stats(),
        }
    out.emit(result, "run", lambda d: {"run": write_json(d / "run.json", result)})


def register(app: click.Group) -> None:
    """Add ``run`` to ``app``."""
    app.add_command(run)
