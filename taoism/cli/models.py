"""``taoism models``: the model zoo and the input shapes each model takes."""

from __future__ import annotations

import click

from taoism.cli._options import Output, output_options


@click.command()
@output_options()
def models(out: Output) -> None:
    """List the model zoo: each model and the input shape families it takes."""
    from taoism.zoo import list_models, supported_shapes

    rows = {name: list(supported_shapes(name)) for name in list_models()}
    for name, shapes in rows.items():
        click.echo(f"{name:<20} {', '.join(shapes)}")
    out.emit({"models": rows}, "models")


def register(app: click.Group) -> None:
    """Add ``models`` to ``app``."""
    app.add_command(models)
