"""Registry scale: 10,000 Applications x 3 services from a folder, against 10.

Run by hand (after `bash bench/setup.sh`), never by the test suite. It writes two folders, one
file per Application (an Application with a Basic, an OAuth and an open service, and its two
Secrets), and measures:

1. **in process** (this script, importing appgateway): the time `load_snapshot` takes per
   folder, and the cost of `routing.Router.route` per call, path and host routing, against the
   small and the large snapshot (the same number of calls, cycling over all routes of each).
2. **gateway** (`appgateway serve`, one worker, pinned): the time from spawn to `/v1/ready`,
   VmRSS once ready and after traffic, so the RSS the large registry adds; and wall-clock req/s
   with wrk (`-t1 -c64`, a Lua script cycling over the Basic route of every Application)
   alternating small and large.
3. **one change**: a service is added to one file while the registry is live, in process
   (`FolderRegistry`, whose `parse_count` must grow by exactly 1) and in the running gateway
   (polling the new route until it answers 200). Target: applied in < 2 s.

Targets: load < 5 s, RSS added < 300 MB, routing cost independent of the number of
Applications, one change applied in < 2 s without re-parsing the other files.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from run import (
    CLK_TCK,
    Proc,
    add_json_arg,
    check_cores,
    check_tools,
    cpu_seconds,
    foreign_ticks,
    free_port,
    pinned,
    start,
    stop,
)
from scenarios import (
    GATEWAY_CMD_ADMIN,
    SECRETS_NAMESPACE,
    ApiSpec,
    Upstream,
    application_yaml,
    gateway_argv,
    gateway_env,
    run_wrk_script,
    start_upstream,
    write_json,
)
from stream import tree_kib

from appgateway import tls
from appgateway.errors import GatewayError
from appgateway.registry.folder import FolderRegistry, load_snapshot
from appgateway.registry.snapshot import Snapshot
from appgateway.routing import Router

SERVICES = (ApiSpec("basic", "basic"), ApiSpec("oauth", "oauth"), ApiSpec("open", "none"))
ADDED = ApiSpec("added", "none")


def app_name(i: int) -> str:
    return f"app-{i:05d}"


def write_registry(folder: Path, apps: int, up: Upstream) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(apps):
        name = app_name(i)
        (folder / f"{name}.yaml").write_text(application_yaml(name, SERVICES, up, None))
    return folder


def route_paths(apps: int) -> list[str]:
    return [f"/{app_name(i)}/{s.service}/item" for i in range(apps) for s in SERVICES]


def route_hosts(apps: int) -> list[str]:
    """Host-routing labels: `{app[:26]}-{id}`, the ids application_yaml gives the services."""
    return [
        f"{app_name(i)}-{s.service}-{k}.{SECRETS_NAMESPACE}.svc"
        for i in range(apps)
        for k, s in enumerate(SERVICES)
    ]


# --------------------------------------------------------------------------- in process


@dataclass
class InProcess:
    apps: int
    load_s: float
    apis: int
    path_ns: float
    host_ns: float


def time_routing(
    snapshot: Snapshot, paths: Sequence[str], hosts: Sequence[str], calls: int
) -> tuple[float, float]:
    """ns per `Router.route` call (the production path, with its memo per snapshot), path then
    host routing; every route is warmed up first."""
    router = Router(snapshot, lambda api: api)

    def route_proxy(_: Snapshot, host: str | None, target: str) -> object:
        return router.route(target, host, False)

    for path in paths:
        try:
            route_proxy(snapshot, None, path)
        except GatewayError as exc:
            raise RuntimeError(f"{path} does not route: {exc}") from None
    loops = max(1, calls // len(paths))
    began = time.perf_counter_ns()
    for _ in range(loops):
        for path in paths:
            route_proxy(snapshot, None, path)
    path_ns = (time.perf_counter_ns() - began) / (loops * len(paths))
    for host in hosts:
        route_proxy(snapshot, host, "/item")
    loops = max(1, calls // len(hosts))
    began = time.perf_counter_ns()
    for _ in range(loops):
        for host in hosts:
            route_proxy(snapshot, host, "/item")
    host_ns = (time.perf_counter_ns() - began) / (loops * len(hosts))
    return path_ns, host_ns


def in_process(folders: dict[int, Path], calls: int, repeats: int) -> list[InProcess]:
    """Loads each folder once, then times routing in `repeats` alternating rounds (medians):
    one timing of a few hundred milliseconds moves by a third on a shared machine."""
    loaded: dict[int, tuple[Snapshot, float]] = {}
    for apps, folder in folders.items():
        began = time.perf_counter()
        snapshot = load_snapshot(
            folder, secrets_namespace=SECRETS_NAMESPACE, load_cert=tls.load_client_cert
        )
        loaded[apps] = snapshot, time.perf_counter() - began
        if snapshot.error_count:
            raise RuntimeError(f"registry errors: {snapshot.issues[:3]}")
    routes = {apps: (route_paths(apps), route_hosts(apps)) for apps in folders}
    timings: dict[int, list[tuple[float, float]]] = {apps: [] for apps in folders}
    sizes = list(folders)
    for index in range(repeats):
        for apps in sizes if index % 2 == 0 else reversed(sizes):
            paths, hosts = routes[apps]
            timings[apps].append(time_routing(loaded[apps][0], paths, hosts, calls))
    return [
        InProcess(
            apps,
            round(load_s, 3),
            snapshot.api_count,
            round(statistics.median(path for path, _ in timings[apps]), 1),
            round(statistics.median(host for _, host in timings[apps]), 1),
        )
        for apps, (snapshot, load_s) in loaded.items()
    ]


@dataclass
class Change:
    where: str
    seconds: float
    parsed_files: int | None


def _routes_added(name: str, present: bool = True) -> Callable[[Snapshot], bool]:
    def check(snapshot: Snapshot) -> bool:
        found = not isinstance(snapshot.by_path(name, ADDED.service, None), GatewayError)
        return found == present

    return check


async def _until(
    registry: FolderRegistry, changed: asyncio.Event, done: Callable[[Snapshot], bool]
) -> None:
    """Waits for the snapshot that satisfies `done`, woken by the registry's change hook."""
    async with asyncio.timeout(10):
        while True:
            changed.clear()
            if done(registry.snapshot()):
                return
            await changed.wait()


async def change_in_process(folder: Path, apps: int, up: Upstream, edits: int) -> list[Change]:
    """Adds a service to one file at a time and waits until the live snapshot routes it."""
    registry = FolderRegistry(folder, secrets_namespace=SECRETS_NAMESPACE)
    changed = asyncio.Event()
    registry.on_change = lambda _: changed.set()
    await registry.start()
    out: list[Change] = []
    try:
        for n in range(edits):
            name = app_name((n * 7919 + 13) % apps)
            count = registry.parse_count
            began = time.monotonic()
            (folder / f"{name}.yaml").write_text(
                application_yaml(name, (*SERVICES, ADDED), up, None)
            )
            await _until(registry, changed, _routes_added(name))
            seconds = time.monotonic() - began
            out.append(Change("in-process", round(seconds, 3), registry.parse_count - count))
            # Put it back, so the gateway phase starts from the generated folder.
            (folder / f"{name}.yaml").write_text(application_yaml(name, SERVICES, up, None))
            await _until(registry, changed, _routes_added(name, present=False))
    except TimeoutError:
        raise RuntimeError("a change was not applied within 10 s") from None
    finally:
        await registry.stop()
    return out


# --------------------------------------------------------------------------- the gateway


@dataclass
class GatewayRun:
    apps: int
    ready_s: float
    rss_ready_mb: float
    rss_after_mb: float
    rps: float
    p99_ms: float
    cpu_s: float
    errors: int
    other_cpu_s: float


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def start_gateway(
    args: argparse.Namespace, work: Path, registry: Path, tag: str
) -> tuple[Proc, int, int, float]:
    """Returns (process, proxy port, admin port, seconds from spawn to /v1/ready)."""
    port, admin = free_port(), free_port()
    argv = gateway_argv(args.gateway_cmd, registry, port, "", admin=admin, workers=1)
    began = time.monotonic()
    proc = start(f"gateway-{tag}", pinned(args.proxy_core, argv), work, gateway_env(None))
    while http_status(admin, "/v1/ready") != 200:
        if proc.popen.poll() is not None or time.monotonic() - began > 120:
            stop(proc)
            raise RuntimeError(f"gateway not ready:\n{proc.log_tail()}")
        time.sleep(0.02)
    return proc, port, admin, time.monotonic() - began


def wrk_paths_script(work: Path, apps: int) -> Path:
    """wrk cycles over the Basic route of every Application, so all of the registry is used."""
    path = work / f"paths-{apps}.lua"
    items = ",\n".join(f'  "/{app_name(i)}/basic/item"' for i in range(apps))
    path.write_text(
        f"local paths = {{\n{items}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )
    return path


def gateway_round(args: argparse.Namespace, work: Path, registry: Path, apps: int) -> GatewayRun:
    proc, port, _, ready_s = start_gateway(args, work, registry, str(apps))
    try:
        rss_ready = tree_kib(proc.pid, "VmRSS") / 1024
        script = wrk_paths_script(work, apps)
        url = f"http://127.0.0.1:{port}/"
        if args.warmup > 0:
            run_wrk_script(args.load_core, url, args.connections, args.warmup, script)
        cpu_before, other_before = cpu_seconds(proc.pid), foreign_ticks()
        result = run_wrk_script(args.load_core, url, args.connections, args.duration, script)
        cpu_after, other_after = cpu_seconds(proc.pid), foreign_ticks()
        rss_after = tree_kib(proc.pid, "VmRSS") / 1024
    finally:
        stop(proc)
    proc.log_path.unlink()
    return GatewayRun(
        apps=apps,
        ready_s=round(ready_s, 3),
        rss_ready_mb=round(rss_ready, 1),
        rss_after_mb=round(rss_after, 1),
        rps=result.rps,
        p99_ms=result.p99_ms,
        cpu_s=round(cpu_after - cpu_before, 2),
        errors=result.errors + result.non_2xx,
        other_cpu_s=round(max(0, other_after - other_before) / CLK_TCK, 2),
    )


def change_in_gateway(
    args: argparse.Namespace, work: Path, registry: Path, apps: int, up: Upstream
) -> list[Change]:
    proc, port, _, _ = start_gateway(args, work, registry, "change")
    out: list[Change] = []
    try:
        for n in range(args.edits):
            name = app_name((n * 104729 + 7) % apps)
            began = time.monotonic()
            (registry / f"{name}.yaml").write_text(
                application_yaml(name, (*SERVICES, ADDED), up, None)
            )
            while http_status(port, f"/{name}/{ADDED.service}/item") != 200:
                if time.monotonic() - began > 10:
                    raise RuntimeError(f"the change to {name} was not served within 10 s")
                time.sleep(0.01)
            out.append(Change("gateway", round(time.monotonic() - began, 3), None))
    finally:
        stop(proc)
    return out


# --------------------------------------------------------------------------- report


@dataclass
class ScaleReport:
    started: str
    settings: dict[str, object]
    in_process: list[InProcess] = field(default_factory=list)
    gateway: list[GatewayRun] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    verdicts: dict[str, bool] = field(default_factory=dict)


def benchmark(args: argparse.Namespace) -> ScaleReport:
    report = ScaleReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "apps": args.apps,
            "small": args.small,
            "services_per_app": len(SERVICES),
            "rounds": args.rounds,
            "duration_s": args.duration,
            "edits": args.edits,
            "route_calls": args.route_calls,
            "route_repeats": args.route_repeats,
            "proxy_core": args.proxy_core,
            "load_core": args.load_core,
            "gateway_cmd": args.gateway_cmd,
        },
    )
    with tempfile.TemporaryDirectory(prefix="appgateway-scale-") as tmp:
        work = Path(tmp)
        up = start_upstream(work, args.load_core)
        try:
            sizes = (args.small, args.apps)
            folders = {}
            for apps in sizes:
                began = time.monotonic()
                folders[apps] = write_registry(work / f"registry-{apps}", apps, up)
                print(f"wrote {apps} files in {time.monotonic() - began:.1f} s")
            print(f"\n{'apps':>6} {'load s':>8} {'APIs':>7} {'path ns':>9} {'host ns':>9}")
            for r in in_process(folders, args.route_calls, args.route_repeats):
                report.in_process.append(r)
                print(
                    f"{r.apps:>6} {r.load_s:>8.3f} {r.apis:>7} {r.path_ns:>9.0f} {r.host_ns:>9.0f}"
                )
            if args.edits:
                changes = asyncio.run(
                    change_in_process(folders[args.apps], args.apps, up, args.edits)
                )
                report.changes += changes
                for c in changes:
                    print(
                        f"one file changed ({c.where}): applied in {c.seconds:.3f} s, "
                        f"files parsed {c.parsed_files}"
                    )
            if not args.skip_gateway:
                print(
                    f"\n{'round':>5} {'apps':>6} {'ready s':>8} {'RSS MB':>7} {'after MB':>9} "
                    f"{'req/s':>9} {'p99 ms':>8} {'cpu s':>7} {'errors':>7} {'other s':>8}"
                )
                for index in range(1, args.rounds + 1):
                    order = sizes if index % 2 else tuple(reversed(sizes))
                    for apps in order:
                        g = gateway_round(args, work, folders[apps], apps)
                        report.gateway.append(g)
                        print(
                            f"{index:>5} {g.apps:>6} {g.ready_s:>8.2f} {g.rss_ready_mb:>7.1f} "
                            f"{g.rss_after_mb:>9.1f} {g.rps:>9.0f} {g.p99_ms:>8.2f} "
                            f"{g.cpu_s:>7.2f} {g.errors:>7} {g.other_cpu_s:>8.2f}",
                            flush=True,
                        )
                if args.edits:
                    changes = change_in_gateway(args, work, folders[args.apps], args.apps, up)
                    report.changes += changes
                    for c in changes:
                        print(f"one file changed ({c.where}): served in {c.seconds:.3f} s")
        finally:
            stop(up.proc)
    report.verdicts = verdicts(report, args)
    return report


def verdicts(report: ScaleReport, args: argparse.Namespace) -> dict[str, bool]:
    out: dict[str, bool] = {}
    big = [r for r in report.in_process if r.apps == args.apps]
    small = [r for r in report.in_process if r.apps == args.small]
    if big:
        out["load < 5 s (in process)"] = big[0].load_s < 5
    gw_big = [g for g in report.gateway if g.apps == args.apps]
    gw_small = [g for g in report.gateway if g.apps == args.small]
    if gw_big:
        out["ready < 5 s (gateway, from spawn)"] = statistics.median(g.ready_s for g in gw_big) < 5
    if gw_big and gw_small:
        added = statistics.median(g.rss_after_mb for g in gw_big) - statistics.median(
            g.rss_after_mb for g in gw_small
        )
        out[f"RSS added < 300 MB ({added:.0f} MB)"] = added < 300
        ratio = statistics.median(g.rps for g in gw_big) / statistics.median(
            g.rps for g in gw_small
        )
        out[f"req/s large/small >= 0.9 ({ratio:.2f})"] = ratio >= 0.9
    if big and small:
        ratio = big[0].path_ns / small[0].path_ns
        out[f"route_proxy large/small <= 1.5 ({ratio:.2f})"] = ratio <= 1.5
    if report.changes:
        worst = max(c.seconds for c in report.changes)
        out[f"one change applied < 2 s (worst {worst:.2f} s)"] = worst < 2
        parsed = [c.parsed_files for c in report.changes if c.parsed_files is not None]
        if parsed:
            out[f"one change parses one file ({parsed})"] = all(p == 1 for p in parsed)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--apps", type=int, default=10_000, help="Applications, large registry")
    parser.add_argument("--small", type=int, default=10, help="Applications, small registry")
    parser.add_argument(
        "--route-calls", type=int, default=300_000, help="route_proxy calls per timing"
    )
    parser.add_argument(
        "--route-repeats", type=int, default=7, help="alternating timings per registry (median)"
    )
    parser.add_argument("--edits", type=int, default=3, help="single-file changes (0: none)")
    parser.add_argument("--skip-gateway", action="store_true", help="in-process parts only")
    parser.add_argument("--rounds", type=int, default=3, help="alternating gateway rounds")
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--gateway-cmd",
        default=GATEWAY_CMD_ADMIN,
        help="gateway command line; {registry}, {port}, {admin} and {workers} are filled in",
    )
    parser.add_argument("--proxy-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    counts = (
        args.apps,
        args.small,
        args.rounds,
        args.duration,
        args.route_calls,
        args.route_repeats,
    )
    if min(counts) < 1:
        parser.error("--apps, --small, --rounds, --duration and --route-* must be positive")
    check_cores(parser, args.proxy_core, args.load_core)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    try:
        report = benchmark(args)
    except (RuntimeError, OSError) as exc:
        print(f"registry-scale benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    for name, ok in report.verdicts.items():
        print(f"{'met' if ok else 'NOT met':>8}  {name}")
    sys.stdout.flush()
    busy = [g for g in report.gateway if g.other_cpu_s > 0.05 * g.cpu_s]
    if busy:
        print(
            f"WARNING: other processes used CPU during {len(busy)} round(s) ('other s'); "
            "the machine was not idle",
            file=sys.stderr,
        )
    write_json(args.json, "registry-scale", asdict(report))
    return 0 if all(report.verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
