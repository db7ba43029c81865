"""The trust boundary and the package layers, as the imports show them (checked on the source's AST).

Rules (every ``import`` counts, module level or inside a function):

1. **The enclave imports no host code.** ``taoism.enclave.*`` imports only ``taoism.enclave.*``,
   ``taoism.protocol.*`` (the shared, plaintext-free contract), ``taoism.boundary`` (the channel),
   ``taoism.errors``, and the enclave-side modules of ``taoism.trust`` (:data:`ENCLAVE_TRUST`:
   package reader, tensor sealing, key unwrapping, report, quote sources, attestation,
   measurement, key loading), never its owner or host side (writer, key service, verifier,
   client).
2. **The host reaches the enclave through three doors.** Outside ``taoism.enclave``, the only
   enclave modules anything imports are ``taoism.enclave.planning`` (:func:`plan_memory`, which
   runs the enclave's scheduler on shapes only), ``taoism.enclave.program`` (the compiler
   from a whitelisted program description to a GraphModule: :func:`taoism.deploy` rebuilds the
   package's *device* segments with it from their plaintext weights) and
   ``taoism.enclave.heap`` (the enclave's malloc policy, which the benchmarks give their own
   process too, so that plain and shielded runs share an allocator; it handles no data). The process backend starts
   ``taoism.enclave.server`` as a separate process by module name; it never imports it.
3. **Strategies and the security evaluation see no enclave code at all** (not even planning).
4. **The contract is self-contained:** ``taoism.protocol.*`` imports only ``taoism.protocol.*``
   and ``taoism.errors``.
5. **Backends import no CLI.**
6. **No upward imports.** A package imports only packages of its own or a lower layer of
   :data:`LAYERS`. Packages not (yet) in :data:`LAYERS` are not layer-checked (rules 1-3 still
   apply to them); place a new package there to have it checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import taoism

ROOT = Path(taoism.__file__).resolve().parent

# Lowest first. Within a layer packages may import each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"taoism.errors", "taoism.tee", "taoism.config", "taoism.protocol"}),
    frozenset({"taoism.boundary", "taoism.capture", "taoism.zoo", "taoism.data", "taoism.trust"}),
    frozenset({"taoism.enclave", "taoism.placement"}),
    frozenset({"taoism.strategies", "taoism.backends"}),
    frozenset({"taoism.runtime"}),
    frozenset({"taoism.security", "taoism.bench", "taoism.teeslice", "taoism.serve"}),
    frozenset({"taoism.cli", "taoism"}),
)
ENCLAVE_TRUST = tuple(
    f"taoism.trust.{m}"
    for m in (
        "attest",
        "format",
        "keys",
        "measurement",
        "quotes",
        "reader",
        "report",
        "sealing",
        "shielded",
        "tensors",
        "wrap",
    )
)
ENCLAVE_MAY_IMPORT = (
    "taoism.enclave",
    "taoism.protocol",
    "taoism.boundary",
    "taoism.errors",
    *ENCLAVE_TRUST,
)
HOST_ENCLAVE_DOOR = ("taoism.enclave.planning", "taoism.enclave.program", "taoism.enclave.heap")
PROTOCOL_MAY_IMPORT = ("taoism.protocol", "taoism.errors")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every taoism import in ``path``; ``from taoism import x`` -> taoism.x."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path, root)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != root.name:
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = root.parent.joinpath(*f"{mod}.{a.name}".split("."))
                is_sub = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                out.append((node.lineno, f"{mod}.{a.name}" if is_sub else mod))
    return out


def _within(mod: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _package(mod: str, root_name: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else root_name


def _rank(pkg: str, layers: tuple[frozenset[str], ...]) -> int | None:
    return next((i for i, layer in enumerate(layers) if pkg in layer), None)


def violations(root: Path = ROOT, layers: tuple[frozenset[str], ...] = LAYERS) -> list[str]:
    """Every broken rule in the package at ``root``, as ``file:line: what``."""
    name = root.name
    rename = (lambda s: name + s[len("taoism") :]) if name != "taoism" else (lambda s: s)
    enclave, door = rename("taoism.enclave"), tuple(rename(d) for d in HOST_ENCLAVE_DOOR)
    allowed_in_enclave = tuple(rename(p) for p in ENCLAVE_MAY_IMPORT)
    allowed_in_protocol = tuple(rename(p) for p in PROTOCOL_MAY_IMPORT)
    no_enclave_at_all = (rename("taoism.strategies"), rename("taoism.security"))
    layers = tuple(frozenset(rename(p) for p in layer) for layer in layers)
    bad: list[str] = []
    for path in sorted(root.rglob("*.py")):
        me = _module_name(path, root)
        where = path.relative_to(root.parent)
        for line, mod in _imports(path, root):
            at = f"{where}:{line}: {me} imports {mod}"
            if _within(me, enclave):
                if not _within(mod, allowed_in_enclave):
                    bad.append(
                        f"{at} (the enclave imports only {', '.join(ENCLAVE_MAY_IMPORT[:4])} and "
                        "the enclave side of taoism.trust)"
                    )
                continue
            if _within(mod, enclave):
                if _within(me, no_enclave_at_all):
                    bad.append(f"{at} (strategies/ and security/ import no enclave code)")
                elif not _within(mod, door):
                    bad.append(
                        f"{at} (the host imports only {' and '.join(HOST_ENCLAVE_DOOR)} from the enclave)"
                    )
            if _within(me, rename("taoism.protocol")) and not _within(mod, allowed_in_protocol):
                bad.append(f"{at} (the protocol imports only {', '.join(PROTOCOL_MAY_IMPORT)})")
            if _within(me, rename("taoism.backends")) and _within(mod, rename("taoism.cli")):
                bad.append(f"{at} (backends import no CLI)")
            src, dst = _rank(_package(me, name), layers), _rank(_package(mod, name), layers)
            if src is not None and dst is not None and dst > src:
                bad.append(f"{at} (upward: layer {src} imports layer {dst}; see LAYERS)")
    return bad


def test_package_follows_the_import_rules() -> None:
    bad = violations()
    assert not bad, "import rules broken:\n" + "\n".join(bad)


def test_every_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: a fake package breaking each rule once, and one following them."""
    pkg = tmp_path / "fakepkg"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "cli.py": "",
        "protocol/__init__.py": "from fakepkg import errors\n",
        "protocol/kinds.py": "import fakepkg.placement\n",  # rules 4 and 6
        "boundary/__init__.py": "",
        "enclave/__init__.py": "",
        "enclave/planning.py": "from fakepkg.enclave import runner\nfrom fakepkg.protocol import kinds\n",
        "enclave/runner.py": "def f():\n    from fakepkg.runtime import shielded\n",  # rule 1 (lazy)
        "placement/__init__.py": "from fakepkg.enclave.planning import x\n",  # allowed door
        "placement/memory.py": "from fakepkg.enclave.runner import BudgetedRunner\n",  # rule 2
        "strategies/__init__.py": "from fakepkg.enclave import planning\n",  # rule 3
        "backends/__init__.py": "from fakepkg import cli\n",  # rules 5 and 6
        "runtime/__init__.py": "",
        "runtime/shielded.py": "from ..placement import memory\n",  # relative, allowed
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    bad = violations(pkg)
    expect = {
        "protocol/kinds.py:1": ["the protocol imports only", "upward"],
        "enclave/runner.py:2": ["the enclave imports only"],
        "placement/memory.py:1": ["the host imports only"],
        "strategies/__init__.py:1": ["strategies/ and security/"],
        "backends/__init__.py:1": ["backends import no CLI", "upward"],
    }
    for where, whats in expect.items():
        for what in whats:
            assert any(where in b and what in b for b in bad), (where, what, bad)
    assert len(bad) == sum(len(w) for w in expect.values()), bad


def test_the_enclave_process_loads_no_host_code() -> None:
    """What ``python -m taoism.enclave.server`` imports at start: only the rule-1 modules.

    The package's public API is imported lazily, so importing ``taoism`` for the enclave does
    not load the host's runtime, backends, placement, CLI or the trust chain's owner/host side.
    """
    import subprocess
    import sys

    code = (
        "import sys; import taoism.enclave.server; "
        "print('\\n'.join(m for m in sys.modules if m == 'taoism' or m.startswith('taoism.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    packages = ("taoism", "taoism._lazy", "taoism.config", "taoism.trust")  # inits, lazy, configs
    loaded_host = [m for m in out if m not in packages and not _within(m, ENCLAVE_MAY_IMPORT)]
    assert "taoism.enclave.server" in out
    assert not loaded_host, f"the enclave process loads host code: {loaded_host}"
    assert not any(m.startswith(("taoism.runtime", "taoism.backends")) for m in out)


def test_lazy_exports_stay_the_api_after_every_submodule_is_imported() -> None:
    """A lazily exported name that is also a submodule's name must not turn into the module."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, types, taoism, taoism.trust\n"
        "for pkg in (taoism.trust,):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "bad = [f'{p.__name__}.{n}' for p in (taoism, taoism.trust) for n in p.__all__\n"
        "       if isinstance(getattr(p, n), types.ModuleType)]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
