"""``taoism keygen``: make an owner (or simulated platform) Ed25519 key pair."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._options import Output, output_options


@click.command()
@click.option(
    "--dir",
    "key_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for NAME.key (0600) and NAME.pub.",
)
@click.option(
    "--name",
    type=click.Choice(("owner", "platform")),
    default="owner",
    help="owner: signs packages; platform: the simulated platform key of the sim backend.",
)
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing key pair.")
@output_options(out_help="Write keygen.json (the two paths) into DIR.")
def keygen(key_dir: Path, name: str, overwrite: bool, out: Output) -> None:
    """Write a fresh Ed25519 key pair (run by the model owner, on the owner's machine)."""
    from taoism.trust.keys import keygen as make

    priv, pub = make(key_dir, name, overwrite=overwrite)
    click.echo(f"private key {priv} (mode 0600, keep it secret)\npublic key  {pub}")
    out.emit({"private": str(priv), "public": str(pub)}, "keygen")


def register(app: click.Group) -> None:
    """Add ``keygen`` to ``app``."""
    app.add_command(keygen)
