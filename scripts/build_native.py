"""Compiles the data-path modules with mypyc, in place; `make` runs it after setting up .venv.

Usage: .venv/bin/python scripts/build_native.py [--if-stale | --clean]

The modules are listed in `appgateway.native.COMPILED`; they are plain mypy-strict Python and
stay importable as such: without this build (or with `--clean`, or when a source changed after
it) the gateway runs them interpreted, with the same behaviour. One shared library
(`appgateway/native__mypyc*.so`) holds the code, so calls between the modules are C calls.
A failed build leaves no extension modules behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appgateway import native  # noqa: E402


def clean() -> None:
    for path in native.extension_paths():
        path.unlink()
    native.STAMP.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify  # the build needs mypy and setuptools (dev group)
    from setuptools import Distribution

    clean()
    sources = [str(native.source_path(m).relative_to(ROOT)) for m in native.COMPILED]
    with tempfile.TemporaryDirectory(prefix="appgateway-native-") as tmp:
        os.chdir(ROOT)  # mypycify takes paths relative to the project (and its mypy config)
        extensions = mypycify(
            sources, opt_level="3", group_name="appgateway.native", target_dir=tmp
        )
        dist = Distribution({"name": "appgateway-native", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.inplace = True
        command.build_temp = command.build_lib = tmp
        command.parallel = os.cpu_count() or 1
        try:
            dist.run_command("build_ext")
        except BaseException:
            clean()
            raise
    native.write_stamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument(
        "--if-stale", action="store_true", help="build only if a compiled source changed"
    )
    args = parser.parse_args()
    if args.clean:
        clean()
    elif not (args.if_stale and native.state() == "compiled"):
        build()
    print(f"appgateway native modules: {native.state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
