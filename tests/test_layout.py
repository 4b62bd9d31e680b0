"""Structure rules of architecture.md: pure modules stay pure, every module has a test file,
every module imports on its own, and only config.py reads the environment."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appgateway"

PURE = [
    "model",
    "names",
    "errors",
    "routing",
    "urls",
    "headers",
    "rewrite",
    "http1",
    "registry/parse",
    "registry/manifest_yaml",
    "registry/snapshot",
    "registry/resolve",
    "decide",
    "transitions",
    "auth/flows",
    "registry/kubeconfig",
    "caller/bearer",
    "caller/reviews",
    "caller/tokenfile",
]
IO_IMPORTS = {"asyncio", "ssl", "socket", "aiohttp", "httptools", "uvloop", "watchfiles", "os"}


def _modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "demo" not in p.parts
    )


# Parsed once at collection: CPython 3.11's ast.parse can fail with "recursion depth
# mismatch" after another test (hypothesis) has changed the recursion limit.
_TREES = {p: ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    tree = _TREES[path]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("name", PURE)
def test_pure_module_has_no_io(name: str) -> None:
    path = PACKAGE / f"{name}.py"
    tree = _TREES[path]
    assert not any(isinstance(n, ast.Await | ast.AsyncFunctionDef) for n in ast.walk(tree))
    roots = {imported.split(".")[0] for imported in _imports(path)}
    assert not roots & IO_IMPORTS, f"{name} imports {roots & IO_IMPORTS}"
    for imported in _imports(path):
        if imported.startswith("appgateway."):
            module = imported.removeprefix("appgateway.").replace(".", "/")
            assert module in PURE, f"pure module {name} imports impure {imported}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_test_file(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    expected = ROOT / "tests" / relative.parent / f"test_{relative.name}"
    assert expected.exists(), f"missing {expected.relative_to(ROOT)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_alone(path: Path) -> None:
    module = ".".join(("appgateway", *path.relative_to(PACKAGE).with_suffix("").parts))
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_only_config_reads_the_environment() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name == "config.py":
            continue
        if "os.environ" in text or "os.getenv" in text or "getenv(" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], offenders


def test_package_imports() -> None:
    assert importlib.import_module("appgateway").__version__
