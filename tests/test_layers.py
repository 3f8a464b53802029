"""The layers point one way, checked on the source.

- `shared/` (imported as `tidings`) never imports `services/` (`tidings.services`).
- The SDK (`tidings.sdk`, what a workflow author imports) loads nothing of Tidings beyond
  itself and the leaf modules it names, and no Redis, queue or web library.
- No import cycles between modules, deferred imports inside functions included (imports under
  `TYPE_CHECKING` excepted: they never run).
- pyproject's package list names every package folder, so an install has all of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

_FOLDERS = {"shared": "tidings", "services": "tidings.services"}
# What the SDK may load of Tidings: itself and these leaf modules.
_SDK_MAY_LOAD = {"tidings", "tidings.sdk", "tidings.events", "tidings.errors", "tidings.echo"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, name in _FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> Iterator[str]:
    """Absolute names of what `module` imports, at any depth (a function's deferred import is
    still a dependency), except under `TYPE_CHECKING`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                yield from visit(node.orelse)  # what is under TYPE_CHECKING never runs
                continue
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from visit(node.body)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        stmts = [c for c in children if isinstance(c, ast.stmt)]
                        stmts += [
                            s for c in children if isinstance(c, ast.excepthandler) for s in c.body
                        ]
                        yield from visit(stmts)

    yield from visit(ast.parse(path.read_text(), str(path)).body)


def test_shared_never_imports_services() -> None:
    offenders = [
        f"{mod} imports {name}"
        for mod, path in _modules().items()
        if not mod.startswith("tidings.services")
        for name in _imports(mod, path)
        if name.startswith(("tidings.services", "services"))
    ]
    assert offenders == []


def test_nothing_imports_the_folders_by_their_names() -> None:
    offenders = [
        f"{mod} imports {name}"
        for mod, path in _modules().items()
        for name in _imports(mod, path)
        if name.split(".")[0] in _FOLDERS
    ]
    assert offenders == []


def test_the_sdk_loads_only_itself_and_leaf_modules() -> None:
    probe = (
        "import sys, tidings.sdk, tidings; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tidings', 'redis', 'arq', 'starlette', 'uvicorn', 'httpx'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    loaded = set(out)
    assert "tidings.sdk" in loaded
    outside = {m for m in loaded if not m.startswith("tidings.sdk") and m not in _SDK_MAY_LOAD}
    assert outside == set()


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        mod: {
            name
            for name in _imports(mod, path)
            if name in modules and name != mod and not mod.startswith(f"{name}.")
        }
        for mod, path in modules.items()
    }
    # A package importing its own submodules (re-exports) is not a cycle between concepts.
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for mod in graph:
        if mod not in index:
            connect(mod)
    assert cycles == []


def test_pyproject_installs_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {name: folder for folder, name in _FOLDERS.items()}
    expected = {mod for mod, path in _modules().items() if path.name == "__init__.py"}
    assert set(config["packages"]) == expected


def test_the_folders_refuse_to_load_under_their_own_names() -> None:
    """`python -m services.gateway` from the repository root would load every module twice
    (once per name), with two copies of each class: it must fail at once, naming the fix."""
    for module in ("services.gateway", "shared.bus"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 1
        assert "ImportError: this package is imported as" in done.stderr
