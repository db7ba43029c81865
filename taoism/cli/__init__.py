"""The ``taoism`` command line: models, plan, run, bench, attack, demo.

Built on Typer (Click underneath, Rich for help and errors): commands are typed Python functions,
so the help text, defaults, choices and range checks come from their annotations; Click gives
usage errors with exit code 2, a test runner and shell completion (``--install-completion``).

Exit codes: 0 ok; 1 a typed taoism error (its message, no traceback; ``--verbose`` adds one);
2 a usage error (unknown option, bad value); 3 an unexpected internal error (traceback: a bug);
130 interrupted (Ctrl-C).

Adding a command is one small file: a module ``taoism/cli/<name>.py`` (no leading underscore)
with ``register(app: typer.Typer) -> None``, which calls ``app.command()`` on a typed function
built from the shared option types in :mod:`taoism.cli._options`. Modules are found by name.
"""

from __future__ import annotations

from taoism.cli._app import EXIT_CODES, build_app, main
from taoism.cli._common import default_split

__all__ = ["EXIT_CODES", "build_app", "default_split", "main"]
