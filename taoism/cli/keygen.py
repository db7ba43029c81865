"""``taoism keygen``: make an owner (or simulated platform) Ed25519 key pair."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for NAME.key (0600) and NAME.pub.")
@click.option("--name", type=click.Choice(("owner", "platform")), default="owner",
              help="owner: signs packages; platform: the simulated platform key of the sim backend.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing key pair.")
def keygen(out_dir: Path, name: str, overwrite: bool) -> None:
    """Write a fresh Ed25519 key pair (run by the model owner, on the owner's machine)."""
    from taoism.trust.commands import main_keygen

    main_keygen(str(out_dir), name, overwrite)


def register(app: click.Group) -> None:
    """Add ``keygen`` to ``app``."""
    app.add_command(keygen)
