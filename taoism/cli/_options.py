"""Option groups shared by the commands, passed to each command as one frozen dataclass.

:func:`option_group` adds a group's Click options to a command and hands the command the built
dataclass (``out: Output``), so every command spells the shared options the same way and its
body works with typed values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from taoism.errors import ConfigError

#: ``ctx.meta`` key set by ``--verbose`` (read when a command fails, to add the traceback).
VERBOSE_KEY = "taoism.verbose"

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]


#: A directory option's type.
DIRECTORY = click.Path(file_okay=False, path_type=Path)


def options(*decorators: Decorator) -> Decorator:
    """Several Click options as one decorator; they appear in ``--help`` in this order."""

    def decorate(fn: F) -> F:
        for option in reversed(decorators):
            fn = option(fn)
        return fn

    return decorate


def option_group(cls: type, param: str, *decorators: Decorator) -> Decorator:
    """Add ``decorators`` (one option per field of dataclass ``cls``); pass ``param=cls(...)``."""
    names = [f.name for f in dataclasses.fields(cls)]

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[param] = cls(**{n: kwargs.pop(n) for n in names})
            return fn(*args, **kwargs)

        return options(*decorators)(wrapper)

    return decorate


def _remember_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[VERBOSE_KEY] = True
    return value


@dataclass(frozen=True)
class Output:
    """Where results go, and how talkative the command is."""

    json_file: Path | None = None
    out_dir: Path | None = None
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.quiet and self.verbose:
            raise ConfigError("--quiet and --verbose contradict each other; give one of them")
        if self.json_file is not None and not self.json_file.parent.is_dir():
            raise ConfigError(
                f"--json {self.json_file}: directory {self.json_file.parent} does "
                "not exist; create it or write elsewhere"
            )
        if self.out_dir is not None and self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(
                f"--out {self.out_dir} exists and is not a directory; pass another DIR"
            )

    @property
    def progress(self) -> bool:
        """Whether to show progress bars."""
        return not self.quiet

    def note(self, message: str) -> None:
        """A note on stderr, unless ``--quiet``."""
        if not self.quiet:
            click.echo(message, err=True)

    def detail(self, message: str) -> None:
        """A detail on stderr, only with ``--verbose``."""
        if self.verbose:
            click.echo(message, err=True)

    def emit(
        self,
        result: Mapping[str, Any],
        name: str,
        files: Callable[[Path], Mapping[str, Path]] | None = None,
    ) -> None:
        """Write ``result`` to ``--json``; into ``--out``: ``files(dir)``, else ``<name>.json``."""
        if self.json_file is not None:
            write_json(self.json_file, result)
            self.note(f"wrote {self.json_file}")
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            paths = (
                files(self.out_dir)
                if files
                else {"json": write_json(self.out_dir / f"{name}.json", result)}
            )
            for kind, path in paths.items():
                self.note(f"wrote {kind}: {path}")


def output_options(
    out_default: Path | None = None,
    out_help: str = "Write the result files (JSON; CSV and PNG where there are any) into DIR.",
) -> Decorator:
    """``--json FILE``, ``--out DIR``, ``--quiet``, ``--verbose``, passed as ``out: Output``."""
    return option_group(
        Output,
        "out",
        click.option(
            "--json",
            "json_file",
            metavar="FILE",
            default=None,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the result as one JSON file.",
        ),
        click.option(
            "--out",
            "out_dir",
            metavar="DIR",
            default=out_default,
            type=DIRECTORY,
            help=out_help,
        ),
        click.option(
            "--quiet",
            "-q",
            is_flag=True,
            help="Print only the result and errors: no progress, no notes.",
        ),
        click.option(
            "--verbose",
            "-v",
            is_flag=True,
            callback=_remember_verbose,
            help="Print more detail, and the traceback of a taoism error.",
        ),
    )


def write_json(path: Path, result: Mapping[str, Any]) -> Path:
    """Write ``result`` as strict JSON (NaN and infinities become null); return ``path``."""
    from taoism.bench.strategies import finite_floats

    path.write_text(json.dumps(finite_floats(dict(result)), indent=2, default=str, allow_nan=False))
    return path


def int_list(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """Click callback: ``"50,500"`` -> ``[50, 500]`` (None stays None); a usage error otherwise."""
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out:
        raise click.BadParameter("expected at least one integer")
    return out


def str_list(_ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Click callback: ``"deep:1, shallow:2"`` -> ``["deep:1", "shallow:2"]``."""
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise click.BadParameter("expected at least one name")
    return out


def repeats_options(repeats: int, warmup: int) -> Decorator:
    """``--repeats``, ``--warmup``, ``--threads`` (host torch threads), with these defaults."""
    return options(
        click.option(
            "--repeats",
            type=click.IntRange(min=1),
            default=repeats,
            help="Timed repeats (median and spread over them).",
        ),
        click.option(
            "--warmup",
            type=click.IntRange(min=0),
            default=warmup,
            help="Untimed warm-up runs before timing.",
        ),
        click.option(
            "--threads", type=click.IntRange(min=1), default=1, help="Host torch threads."
        ),
    )


_EXISTING_FILE = click.Path(exists=True, dir_okay=False)


def package_options(verb: str) -> Decorator:
    """``--package``, ``--keyserver``, ``--owner-public``, ``--platform-key`` (the deployment model)."""
    return options(
        click.option(
            "--package",
            type=_EXISTING_FILE,
            default=None,
            help=f"{verb} this sealed model.taoism instead of a zoo model (the deployment threat "
            "model: the host never holds a shielded weight); needs --keyserver and --owner-public.",
        ),
        click.option(
            "--keyserver",
            default=None,
            help="Key service URL for --package, e.g. http://127.0.0.1:PORT.",
        ),
        click.option(
            "--owner-public",
            type=_EXISTING_FILE,
            default=None,
            help="With --package: the owner public key the package must be signed with.",
        ),
        click.option(
            "--platform-key",
            type=_EXISTING_FILE,
            default=None,
            help="With --package on the sim backend: the simulated platform key the enclave "
            "quotes with.",
        ),
    )
