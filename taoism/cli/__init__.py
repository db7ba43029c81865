"""The ``taoism`` command line: models, plan, run, bench, attack, demo.

Built on Click, not Typer or argparse: Click is the long-stable standard (its API has kept
for a decade), gives usage errors with exit code 2, ``show_default`` for every option, a test
runner (``click.testing.CliRunner``) and shell completion, all public API. Typer (0.2x) now
vendors its own copy of Click and pulls in pydantic, and the Click-level parts our error
handling needs (exceptions, group classes) are private there.

Exit codes (:data:`EXIT_CODES`): 0 ok; 1 a typed taoism error (its message, no traceback;
``--verbose`` adds one); 2 a usage error (unknown option, bad value); 3 an unexpected internal
error (traceback: a bug); 130 interrupted (Ctrl-C); 141 the output pipe was closed.

Adding a command is one small file: a module ``taoism/cli/<name>.py`` (no leading underscore)
with a ``click.command`` and ``register(app: click.Group) -> None`` calling
``app.add_command(...)``; the shared options come from :mod:`taoism.cli._options`
(``output_options()`` for ``--json/--out/--quiet/--verbose``) and :mod:`taoism.cli._common`
(``model_options`` for ``--model/--placement/...``). Modules are found by name; list the new
one in ``_app.COMMANDS`` to fix its place in ``--help`` (else it comes after them).
"""

from __future__ import annotations

from taoism.cli._app import EXIT_CODES, build_app, main
from taoism.cli._common import default_split

__all__ = ["EXIT_CODES", "build_app", "default_split", "main"]
