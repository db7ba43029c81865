"""``taoism serve``: serve a shielded zoo model or a sealed package over HTTP (see :mod:`taoism.serve`)."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._options import package_options

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--model", default="resnet18", help="Zoo model name (see `taoism models`).")
@click.option(
    "--dataset-shape", default="cifar", help="Input shape family: cifar, imagenet, mnist, digits."
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    default=None,
    help="Output classes  [default: the shape family's]",
)
@click.option(
    "--weights",
    type=_file,
    default=None,
    help="A state_dict or checkpoint file to load  [default: random init]",
)
@click.option(
    "--strategy", default=None, help="A TSDP strategy, e.g. teeslice, deep:1  [default: none]"
)
@click.option(
    "--placement",
    metavar="JSON|FILE",
    default=None,
    help="Placement rules as a JSON object or file  [default: the whole model in the enclave]",
)
@click.option(
    "--plan",
    type=_file,
    default=None,
    help="A plan file written by `taoism plan --json` (reuses its placement).",
)
@package_options("Serve")
@click.option(
    "--tee",
    default=None,
    help="TEE memory profile: unlimited, sgx1-client, ...  [default: unlimited]",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Device for the host's segments  [default: cuda when present, else cpu]",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, help="Host torch threads.")
@click.option(
    "--enclave-threads", type=click.IntRange(min=1), default=1, help="Enclave torch threads."
)
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8000,
    help="Port to listen on; 0 picks a free one (printed).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=16,
    help="Most rows per enclave call (dynamic batching).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    help="How long a batch waits for more requests after its first.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=8 << 20,
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=4096,
    help="Most requests waiting (503 above).",
)
@click.option(
    "--request-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    help="Longest a request may wait for its answer.",
)
@click.option(
    "--shutdown-timeout-s",
    type=click.FloatRange(min=0),
    default=30.0,
    help="On SIGTERM, how long in-flight requests may take to finish.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    help="Server log level.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    model: str,
    dataset_shape: str,
    num_classes: int | None,
    weights: Path | None,
    strategy: str | None,
    placement: str | None,
    plan: Path | None,
    package: str | None,
    keyserver: str | None,
    owner_public: str | None,
    platform_key: str | None,
    tee: str | None,
    **options: object,
) -> None:
    """Serve a shielded model: POST /v1/predict, GET /healthz, GET /metrics; stops on SIGTERM.

    Requests are batched dynamically; an enclave crash answers 503 and restarts the enclave
    (with --package: from the package, attesting again).
    """
    from taoism.serve import serve_package_source, serve_source, zoo_source

    if package is not None:
        zoo_only = ("model", "dataset_shape", "num_classes", "weights", "strategy", "placement")
        clash = [
            "--" + n.replace("_", "-")
            for n in (*zoo_only, "plan", "tee")
            if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
        ]
        if clash:
            raise click.UsageError(
                f"--package serves the owner's signed program as packaged; drop {', '.join(clash)}"
            )
        if not keyserver or not owner_public:
            raise click.UsageError("--package needs --keyserver URL and --owner-public owner.pub")
        serve_package_source(
            package,
            keyserver,
            owner_public,
            platform_key,
            **options,  # type: ignore[arg-type]
        )
        return
    pkg_only = [
        n for n, v in (("--keyserver", keyserver), ("--owner-public", owner_public)) if v
    ] + (["--platform-key"] if platform_key else [])
    if pkg_only:
        raise click.UsageError(
            f"{', '.join(pkg_only)} given without --package (they apply only to a package)"
        )
    given = [
        n for n, v in (("--strategy", strategy), ("--placement", placement), ("--plan", plan)) if v
    ]
    if len(given) > 1:
        raise click.UsageError(
            f"give one of --strategy, --placement or --plan, not {' and '.join(given)}"
        )
    source = zoo_source(
        model, dataset_shape, num_classes=num_classes, weights=str(weights) if weights else None
    )
    serve_source(
        source,
        strategy=strategy,
        placement=placement,
        plan=str(plan) if plan else None,
        tee=tee,
        **options,  # type: ignore[arg-type]
    )


def register(app: click.Group) -> None:
    """Add ``serve`` to ``app``."""
    app.add_command(serve)
