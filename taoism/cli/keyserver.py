"""``taoism keyserver``: the owner's key service (releases a package's key to attested enclaves)."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._options import Output, output_options

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--package", type=_file, required=True, help="The model.taoism package it serves.")
@click.option(
    "--model-key", type=_file, default=None, help="The 0600 model key file  [default: PACKAGE.key]"
)
@click.option(
    "--owner-public", type=_file, required=True, help="Owner Ed25519 public key (owner.pub)."
)
@click.option(
    "--platform-public",
    type=_file,
    required=True,
    help="Simulated platform public key (platform.pub) that vouches for sim reports.",
)
@click.option(
    "--allow",
    multiple=True,
    required=True,
    metavar="MEASUREMENT",
    help="An accepted enclave measurement, 64 hex digits (`taoism measure`); repeatable.",
)
@click.option("--host", default="127.0.0.1", help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Port; 0 picks a free one (printed)."
)
@click.option(
    "--nonce-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    help="Seconds a verifier nonce stays valid.",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    help="Largest accepted report age in seconds.",
)
@output_options(out_help="Write keyserver.json (its settings) into DIR when it stops.")
def keyserver(
    package: Path,
    model_key: Path | None,
    owner_public: Path,
    platform_public: Path,
    allow: tuple[str, ...],
    host: str,
    port: int,
    nonce_ttl: float,
    max_age: float,
    out: Output,
) -> None:
    """Serve the model key to enclaves whose attestation verifies, until SIGTERM/Ctrl-C."""
    from taoism.trust.keyserver import main_keyserver

    main_keyserver(
        str(package),
        str(model_key or f"{package}.key"),
        str(owner_public),
        str(platform_public),
        allow,
        host,
        port,
        nonce_ttl,
        max_age,
    )
    out.emit(
        {"package": str(package), "allow": list(allow), "host": host, "port": port}, "keyserver"
    )


def register(app: click.Group) -> None:
    """Add ``keyserver`` to ``app``."""
    app.add_command(keyserver)
