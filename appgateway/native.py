"""Which data-path modules run compiled by mypyc, and a guard against stale compiled copies.

`scripts/build_native.py` compiles the modules in `COMPILED` in place (an extension module next
to each source file) and records the SHA-256 of every source in `STAMP`. Python imports an
extension module before a source file of the same name, so a source edited after the build would
silently lose to its old compiled copy. `guard()` runs once, when the package is imported: if any
compiled module's source no longer matches its stamp, every compiled module is imported from
source instead (all or none: the compiled modules call each other's code directly in C).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
STAMP = PACKAGE / "native.stamp"

# The per-request modules, imported by the data path. The registry, CLI, supervisor and admin
# code run at start-up or on changes only and stay interpreted.
COMPILED = (
    "appgateway.aio",
    "appgateway.auth",
    "appgateway.auth.basic",
    "appgateway.auth.cache",
    "appgateway.auth.certificate",
    "appgateway.auth.csrf",
    "appgateway.auth.deps",
    "appgateway.auth.flows",
    "appgateway.auth.oauth",
    "appgateway.caller.bearer",
    "appgateway.caller.kubernetes",
    "appgateway.caller.outcome",
    "appgateway.caller.tokens",
    "appgateway.connections",
    "appgateway.decide",
    "appgateway.errors",
    "appgateway.exchange",
    "appgateway.failures",
    "appgateway.flow",
    "appgateway.forward",
    "appgateway.headers",
    "appgateway.http1",
    "appgateway.logs",
    "appgateway.metrics",
    "appgateway.model",
    "appgateway.registry.snapshot",
    "appgateway.relay",
    "appgateway.rewrite",
    "appgateway.routing",
    "appgateway.server",
    "appgateway.transitions",
    "appgateway.tunnel",
    "appgateway.upstream",
    "appgateway.upstream_connection",
    "appgateway.urls",
)


def source_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package_init = PACKAGE / relative / "__init__.py"
    return package_init if package_init.is_file() else PACKAGE / relative.with_suffix(".py")


def digests(modules: Iterable[str] = COMPILED) -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in modules}


def extension_paths() -> list[Path]:
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return [p for p in PACKAGE.rglob("*") if any(p.name.endswith(s) for s in suffixes)]


def state() -> str:
    """ "compiled", "pure" (never built) or "stale" (built, then a source changed: run pure)."""
    if not extension_paths():
        return "pure"
    return "compiled" if _stamp_matches() else "stale"


def _stamp_matches() -> bool:
    try:
        recorded = dict(line.split(" ", 1) for line in STAMP.read_text().splitlines())
    except (OSError, ValueError):
        return False
    return recorded == digests()


def write_stamp() -> None:
    STAMP.write_text("".join(f"{m} {d}\n" for m, d in digests().items()))


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' source files, skipping their extension modules."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)
        machinery = importlib.machinery
        self._loaders = [(machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES)]

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._names:
            return None
        for entry in path or ():
            spec = importlib.machinery.FileFinder(entry, *self._loaders).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def guard() -> None:
    if state() == "stale" and not any(isinstance(f, _SourceOnly) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly(COMPILED))
