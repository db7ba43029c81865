"""``taoism completion SHELL``: the shell completion script (Click's own completion)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    Enable it with e.g. `eval "$(taoism completion bash)"` in ~/.bashrc.
    """
    cls = get_completion_class(shell)
    assert cls is not None and ctx.parent is not None
    click.echo(cls(ctx.parent.command, {}, "taoism", "_TAOISM_COMPLETE").source())


def register(app: click.Group) -> None:
    """Add ``completion`` to ``app``."""
    app.add_command(completion)
