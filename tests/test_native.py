"""The compiled-module guard: a source edited after the mypyc build must win over its old copy."""

from __future__ import annotations

import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import appgateway.forward
from appgateway import native

EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_compiled_modules_are_sources_of_the_package() -> None:
    for module in native.COMPILED:
        path = native.source_path(module)
        assert path.is_file(), module
        assert path.is_relative_to(native.PACKAGE)
    assert set(native.digests()) == set(native.COMPILED)


def test_this_process_runs_what_the_state_says() -> None:
    state = native.state()
    assert state in ("compiled", "pure"), "stale build: run `make native`"
    loaded = Path(appgateway.forward.__file__ or "")
    assert loaded.name.endswith(EXTENSION) == (state == "compiled")


def _copy_package(tmp_path: Path) -> Path:
    """The package's sources, plus a broken 'compiled' headers module that fails to import."""
    package = tmp_path / "appgateway"
    skip = shutil.ignore_patterns("*.so", "native.stamp", "__pycache__")
    shutil.copytree(native.PACKAGE, package, ignore=skip)
    (package / f"headers{EXTENSION}").write_bytes(b"not an ELF file")
    return package


def _import_headers(root: Path) -> subprocess.CompletedProcess[str]:
    code = "import appgateway.native as n, appgateway.headers as h; print(n.state(), h.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stale_build_runs_every_compiled_module_from_source(tmp_path: Path) -> None:
    package = _copy_package(tmp_path)
    result = _import_headers(tmp_path)  # no stamp: built, then changed
    assert result.returncode == 0, result.stderr
    state, loaded = result.stdout.split()
    assert state == "stale"
    assert Path(loaded) == package / "headers.py"


@pytest.mark.parametrize("edit", [False, True])
def test_stamp_decides_between_compiled_and_source(tmp_path: Path, edit: bool) -> None:
    package = _copy_package(tmp_path)
    digests = native.digests()
    (package / "native.stamp").write_text("".join(f"{m} {d}\n" for m, d in digests.items()))
    if edit:
        with (package / "routing.py").open("a") as f:
            f.write("\n# edited after the build\n")
    result = _import_headers(tmp_path)
    if edit:  # a changed source: the broken extension is bypassed
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == "stale"
    else:  # a matching stamp: the extension module is what gets imported (and fails here)
        assert result.returncode != 0
        assert "headers" in result.stderr and "ImportError" in result.stderr
