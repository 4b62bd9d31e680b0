"""Command line: serve, check, routes, access-services, demo.

Exit status: 0 after a graceful stop, 2 for a usage or configuration error, 1 for other
startup failures (behaviour of spec README "Commands").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import uvloop

from appgateway import __version__
from appgateway.config import (
    ConfigurationError,
    HelpFormatter,
    Settings,
    add_check_arguments,
    add_serve_arguments,
    add_source_arguments,
    build_settings,
    expand_aliases,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appgateway",
        description="Egress credential gateway compatible with Kyma's Application Gateway.",
    )
    parser.add_argument("--version", action="version", version=f"appgateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", formatter_class=HelpFormatter, help="run the gateway until SIGTERM or SIGINT"
    )
    add_source_arguments(serve)
    add_serve_arguments(serve)

    check = sub.add_parser(
        "check", formatter_class=HelpFormatter, help="validate a registry folder or file"
    )
    check.add_argument("path", type=Path)
    add_check_arguments(check)

    routes = sub.add_parser(
        "routes", formatter_class=HelpFormatter, help="print the gateway URL of every API"
    )
    add_source_arguments(routes)
    add_serve_arguments(routes, ports_only=True)
    routes.add_argument("--base-url", default=None)
    routes.add_argument("--compass-base-url", default=None)
    routes.add_argument("--output", choices=("table", "json"), default="table")

    access = sub.add_parser(
        "access-services",
        formatter_class=HelpFormatter,
        help="print Access Services as a YAML List",
    )
    add_source_arguments(access)
    access.add_argument("--namespace", default="kyma-system")
    access.add_argument("--selector", default="app.kubernetes.io/name=appgateway")
    access.add_argument("--target-port", type=int, default=8080)

    sub.add_parser("worker")  # internal: started by the --workers supervisor, set up by env

    demo = sub.add_parser(
        "demo", formatter_class=HelpFormatter, help="run a demo API and the gateway in front of it"
    )
    demo.add_argument("--demo-port", type=int, default=8090)
    add_serve_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(expand_aliases(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "check":
            return _check(args)
        settings = build_settings(args)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "worker":
            return _worker(settings)
        if args.command == "routes":
            return _routes(args, settings)
        if args.command == "access-services":
            return _access_services(args, settings)
        return _demo(args, settings)
    except ConfigurationError as exc:
        print(f"appgateway: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve(settings: Settings) -> int:
    from appgateway.app import Gateway, StartupError
    from appgateway.logs import setup_logging

    control = setup_logging(settings.log_level)
    if settings.workers > 1:
        from appgateway.supervisor import run_supervisor

        return run_supervisor(settings, control)
    try:
        return uvloop.run(Gateway(settings, control).run())
    except StartupError as exc:
        print(f"appgateway: {exc}", file=sys.stderr)
        return 1


def _worker(settings: Settings) -> int:
    from appgateway.logs import setup_logging
    from appgateway.supervisor import run_worker

    return run_worker(settings, setup_logging(settings.log_level))


def _check(args: argparse.Namespace) -> int:
    from appgateway.inventory import check

    settings = build_settings(args)  # the flags `check` has, over APPGATEWAY_* variables
    if not args.path.exists():
        print(f"appgateway: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    return check(
        args.path,
        settings.secrets_namespace,
        sys.stdout,
        max_file_size=settings.manifest_size_limit,
    )


def _load_snapshot(settings: Settings) -> object:
    """The registry's first snapshot; its problems go to stderr as `check` prints them."""
    import logging

    from appgateway.app import make_registry, outbound_proxies
    from appgateway.logs import ReportFormatter

    cleanup: list[object] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(ReportFormatter())
    cleanup.append(lambda: logging.getLogger().removeHandler(handler))
    logging.getLogger().addHandler(handler)
    proxies = outbound_proxies()

    async def load() -> object:
        registry = make_registry(settings, cleanup, proxies)  # type: ignore[arg-type]
        await registry.start()
        try:
            return registry.snapshot()
        finally:
            await registry.stop()

    try:
        return asyncio.run(load())
    finally:
        for fn in cleanup:
            fn()  # type: ignore[operator]


def _routes(args: argparse.Namespace, settings: Settings) -> int:
    from appgateway.inventory import format_routes, route_rows

    snapshot = _load_snapshot(settings)
    base = args.base_url or f"http://127.0.0.1:{settings.proxy_port}"
    compass = args.compass_base_url or f"http://127.0.0.1:{settings.proxy_port_compass}"
    rows = route_rows(snapshot, base, compass)  # type: ignore[arg-type]
    sys.stdout.write(format_routes(rows, args.output))
    return 0


def _access_services(args: argparse.Namespace, settings: Settings) -> int:
    from appgateway.inventory import access_services_yaml, parse_selector

    try:
        parse_selector(args.selector)
    except ValueError as exc:
        raise ConfigurationError(f"--selector: {exc}") from None
    snapshot = _load_snapshot(settings)
    sys.stdout.write(
        access_services_yaml(snapshot, args.namespace, args.selector, args.target_port)  # type: ignore[arg-type]
    )
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from appgateway.app import Gateway, StartupError
    from appgateway.demo.api import demo_commands, demo_registry, start_demo_api
    from appgateway.logs import setup_logging

    control = setup_logging(settings.log_level)

    async def run() -> int:
        runner, api_port = await start_demo_api("127.0.0.1", args.demo_port)
        try:
            with tempfile.TemporaryDirectory(prefix="appgateway-demo-") as folder:
                Path(folder, "demo.yaml").write_text(demo_registry(api_port))
                local = replace(settings, registry=Path(folder))
                ports: dict[str, int] = {}

                def listening(name: str, port: int) -> None:
                    ports[name] = port
                    if len(ports) == 3:
                        print("\nappgateway demo is running. Try:\n", flush=True)
                        for line in demo_commands(
                            ports["proxy"], ports["admin"], api_port, SUPPORTED
                        ):
                            print("  " + line, flush=True)
                        print("\nPress Ctrl-C to stop.\n", flush=True)

                return await Gateway(local, control, on_listening=listening).run()
        finally:
            await runner.cleanup()

    try:
        return uvloop.run(run())
    except StartupError as exc:
        print(f"appgateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"appgateway: cannot start the demo API: {exc.strerror or exc}", file=sys.stderr)
        return 1


SUPPORTED = {"none", "basic", "oauth", "csrf", "params", "host"}
