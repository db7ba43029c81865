"""The ``taoism`` group: root options, command discovery, errors mapped to exit codes."""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from taoism.cli._options import VERBOSE_KEY
from taoism.errors import TaoismError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141
#: Every exit code the command can return, and what it means.
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_ERROR: "a typed taoism error: the message says what, where and how to fix it",
    EXIT_USAGE: "usage error: unknown command or option, or a bad option value",
    EXIT_INTERNAL: "unexpected internal error (a bug): a traceback is printed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_PIPE: "the output pipe was closed (e.g. by `| head`)",
}
_PASS_THROUGH = (click.ClickException, click.exceptions.Exit, click.Abort)
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
EPILOG = "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."


class TaoismGroup(click.Group):
    """Runs a command and turns what it raises into a message and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except TaoismError as exc:
            if ctx.meta.get(VERBOSE_KEY):
                traceback.print_exc()
            click.echo(f"taoism: error: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("taoism: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # the reader went away: point stdout at /dev/null so the final flush stays silent
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_PIPE)
        except Exception:
            traceback.print_exc()
            click.echo(
                "taoism: internal error (a bug): please report it with the traceback above",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order they were registered (the order of ``COMMANDS``)."""
        return list(self.commands)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import torch

        import taoism

        click.echo(
            f"taoism {taoism.__version__} (torch {torch.__version__}, "
            f"Python {platform.python_version()})"
        )
        ctx.exit(EXIT_OK)


#: The command modules in help order; other modules of this package are found after them.
COMMANDS = (
    "models",
    "plan",
    "run",
    "serve",
    "demo",
    "bench",
    "attack",
    "teeslice",
    "keygen",
    "package",
    "measure",
    "keyserver",
    "completion",
)


def command_modules() -> list[str]:
    """The command modules of this package: ``COMMANDS``, then any other public module."""
    import taoism.cli

    found = {
        m.name for m in pkgutil.iter_modules(taoism.cli.__path__) if not m.name.startswith("_")
    }
    return [n for n in COMMANDS if n in found] + sorted(found - set(COMMANDS))


def build_app() -> click.Group:
    """A fresh ``taoism`` command group with every command module registered."""

    @click.group(name="taoism", cls=TaoismGroup, context_settings=CONTEXT, epilog=EPILOG)
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_show_version,
        help="Print the taoism, torch and Python versions.",
    )
    def app() -> None:
        """TEE-shielded partitioned deployment of PyTorch models."""

    for name in command_modules():
        importlib.import_module(f"taoism.cli.{name}").register(app)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``taoism`` on ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    try:
        build_app().main(
            args=list(argv) if argv is not None else sys.argv[1:],
            prog_name="taoism",
            complete_var="_TAOISM_COMPLETE",
        )
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_ERROR)
    return EXIT_OK
