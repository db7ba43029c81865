"""``taoism measure``: the measurement a package-mode enclave reports (the key service's --allow)."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._options import Output, output_options


@click.command()
@click.option(
    "--owner-public",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The owner public key a package-mode enclave is pinned to.",
)
@output_options(out_help="Write measure.json into DIR.")
def measure(owner_public: Path, out: Output) -> None:
    """Print the measurement of this taoism's package-mode enclave (64 hex digits, for --allow)."""
    from taoism.trust.keys import fingerprint, load_public_key
    from taoism.trust.measurement import package_measurement

    value = package_measurement(fingerprint(load_public_key(owner_public))).hex()
    click.echo(value)
    out.emit({"measurement": value, "owner_public": str(owner_public)}, "measure")


def register(app: click.Group) -> None:
    """Add ``measure`` to ``app``."""
    app.add_command(measure)
