"""Instructions per request of the gateway, counted by callgrind: a noise-free A/B measure.

Run by hand (after `bash bench/setup.sh`; needs Debian's valgrind), never by the test suite.
Wall-clock benchmarks on a shared machine move by 10-20% from one run to the next; callgrind
counts the user-space instructions the gateway process executes, which repeat within about 0.2%
for the same code, so a change of a few percent on the data path shows up reliably. It does not
count kernel time (the socket calls), so it complements the wrk benchmarks and never replaces
them.

The gateway runs under `valgrind --tool=callgrind` (about 50 times slower) with a one-service
registry (`--scenario`, as in scenarios.py) in front of goupstream. After a warm-up, the counters
are zeroed (`callgrind_control -z`), `--requests` requests are sent over `--connections`
keep-alive connections, and the counters are dumped; the total divided by the requests is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from registry_scale import app_name, write_registry
from run import ROOT, free_port, start, stop, wait_http_ok
from scenarios import (
    SCENARIOS,
    gateway_env,
    make_pki,
    route_path,
    start_upstream,
    write_apis,
)

LL_BYTES = 32 * 1024 * 1024


async def _load(
    port: int,
    paths: Sequence[str],
    requests: int,
    connections: int,
    post: int = 0,
    fields: str = "",
) -> int:
    """Sends the requests (GETs, or POSTs of `post` bytes), cycling over `paths`, with the
    extra header `fields` (CRLF-terminated lines); returns how many answers were not 200."""
    host = f"Host: 127.0.0.1:{port}\r\n{fields}"
    if post:
        body = b"p" * post
        framing = f"{host}Content-Length: {post}\r\n\r\n"
        heads = [f"POST {p} HTTP/1.1\r\n{framing}".encode() + body for p in paths]
    else:
        heads = [f"GET {p} HTTP/1.1\r\n{host}\r\n".encode() for p in paths]
    failures = 0
    sent = 0

    async def one(count: int) -> None:
        nonlocal failures, sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(heads[sent % len(heads)])
            sent += 1
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            if b" 200 " not in lines[0] + b" ":
                failures += 1
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        writer.close()

    share, rest = divmod(requests, connections)
    await asyncio.gather(*(one(share + (i < rest)) for i in range(connections)))
    return failures


def _totals(dump: Path) -> dict[str, int]:
    """Callgrind's totals by event name (Ir, and with --cache D1mr, DLmr, ...)."""
    events: list[str] = []
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        if line.startswith(("summary:", "totals:")):
            return dict(zip(events, map(int, line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {dump}")


def measure(
    scenario: str,
    requests: int,
    connections: int,
    warmup: int,
    top: int = 0,
    save: Path | None = None,
    apps: int = 0,
    cache: bool = False,
    caller_auth: str | None = None,
    kubernetes: bool = False,
) -> dict[str, object]:
    spec = SCENARIOS[scenario]
    token = "t0k3n" * 200  # ServiceAccount-sized
    with tempfile.TemporaryDirectory(prefix="appgateway-icount-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        upstream = start_upstream(work, None, size=spec.size, pki=pki)
        registry_args: list[str] = []
        try:
            if kubernetes:
                # caller_load.py's cluster: its Basic Application and a ServiceAccount with
                # `use` on it, whose real token is sent (so a kubernetes decision is cached).
                import caller_load  # puts the repository on sys.path, for tests.kube

                from tests.kube import SA_TOKEN, shared_cluster

                cluster = shared_cluster()
                caller_load.set_up_cluster(
                    cluster, upstream.url("/verify/basic"), [caller_load.CALLER]
                )
                token = cluster.service_account_token(
                    caller_load.CALLER, audiences=[caller_load.AUDIENCE]
                )
                kubeconfig = cluster.kubeconfig(work / "kubeconfig", token=SA_TOKEN)
                registry_args = ["--kubernetes", "--kubeconfig", str(kubeconfig)]
                paths = [caller_load.ROUTE]
            elif apps:
                registry = write_registry(work / "registry", apps, upstream)
                registry_args = ["--registry", str(registry)]
                paths = [f"/{app_name(i)}/basic/item" for i in range(apps)]
            else:
                registry = write_apis(work / "registry", [spec.api], upstream, pki)
                registry_args = ["--registry", str(registry)]
                paths = [route_path(spec.api)]
            fields, headers, caller_args = "", {}, []
            if caller_auth is not None:
                fields = f"Proxy-Authorization: Bearer {token}\r\n"
                headers = {"Proxy-Authorization": f"Bearer {token}"}
                caller_args = ["--caller-auth", caller_auth]
            port = free_port()
            out = work / "callgrind.out"
            argv = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-instr=no",
                # The last-level cache as lscpu reports it: valgrind takes this VM's for
                # 256 MiB direct-mapped, in which 10,000 Applications would never miss.
                *(["--cache-sim=yes", f"--LL={LL_BYTES},16,64"] if cache else []),
                str(ROOT / ".venv" / "bin" / "python"),
                "-m",
                "appgateway",
                "serve",
                *registry_args,
                "--proxy-port",
                str(port),
                "--proxy-port-compass",
                "0",
                "--admin-port",
                "0",
                "--log-level",
                "info",
                # Under valgrind a loop stall (a full collection over a large registry) can
                # outlast the 10 s default and close keep-alive connections mid-run.
                "--request-timeout",
                "600",
                *caller_args,
            ]
            if caller_auth == "tokens":
                callers = work / "callers.yaml"
                digest = hashlib.sha256(token.encode()).hexdigest()
                callers.write_text(f'- {{name: bench, sha256: "{digest}", applications: ["*"]}}\n')
                argv += ["--caller-tokens", str(callers)]
            gateway = start("gateway", argv, work, gateway_env(pki))
            try:
                wait_http_ok(gateway, port, paths[0], timeout=900, headers=headers)
                try:
                    asyncio.run(
                        _load(port, paths, max(warmup, len(paths)), connections, spec.post, fields)
                    )
                    subprocess.run(
                        ["callgrind_control", "-z", str(gateway.pid)],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                    failures = asyncio.run(
                        _load(port, paths, requests, connections, spec.post, fields)
                    )
                except OSError:
                    print(gateway.log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                    raise
                subprocess.run(
                    ["callgrind_control", "-d", str(gateway.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
                totals = _totals(dumps[-1])
                if save is not None:
                    shutil.copyfile(dumps[-1], save)
                if top:
                    annotated = subprocess.run(
                        ["callgrind_annotate", "--threshold=100", "--auto=no", str(dumps[-1])],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    print("\n".join(annotated.splitlines()[: top + 25]))
            finally:
                stop(gateway, timeout=60)
        finally:
            stop(upstream.proc)
    return {
        "scenario": scenario,
        "requests": requests,
        "connections": connections,
        "not_200": failures,
        "apps": apps,
        **{f"{event}_per_request": count / requests for event, count in totals.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="basic")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--top", type=int, default=0, help="also print the N costliest functions (self cost)"
    )
    parser.add_argument(
        "--save", type=Path, help="copy callgrind's dump here (for callgrind_annotate --inclusive)"
    )
    parser.add_argument(
        "--apps",
        type=int,
        default=0,
        help="instead of the scenario: registry_scale.py's registry of N Applications, the load"
        " cycling over the Basic route of each",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="simulate the caches too (--cache-sim=yes): D1/LL misses per request",
    )
    parser.add_argument(
        "--caller-auth",
        choices=["off", "tokens", "kubernetes"],
        help="send a 1 KiB Proxy-Authorization: Bearer token on every request, to a gateway"
        " with this --caller-auth (tokens: a file that allows it); the A/B of its cost",
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="instead of the scenario: caller_load.py's Basic Application on the suite's API"
        " server (gateway --kubernetes), with a real ServiceAccount token; for the A/B of"
        " --caller-auth kubernetes against off",
    )
    args = parser.parse_args(argv)
    if args.caller_auth == "kubernetes" and not args.kubernetes:
        parser.error("--caller-auth kubernetes needs --kubernetes")
    result = measure(
        args.scenario,
        args.requests,
        args.connections,
        args.warmup,
        args.top,
        args.save,
        args.apps,
        args.cache,
        args.caller_auth,
        args.kubernetes,
    )
    if args.json:
        print(json.dumps(result))
    else:
        what = f"{args.apps} apps" if args.apps else result["scenario"]
        per = {k: v for k, v in result.items() if isinstance(v, float)}
        misses = (
            f", D1 misses {per['D1mr_per_request'] + per['D1mw_per_request']:.0f},"
            f" LL misses {per['DLmr_per_request'] + per['DLmw_per_request']:.0f}"
            if args.cache
            else ""
        )
        print(
            f"{what}: {per['Ir_per_request']:.0f} instructions per request{misses}"
            f" ({result['requests']} requests, {result['not_200']} not 200)"
        )
    return 1 if result["not_200"] else 0


if __name__ == "__main__":
    sys.exit(main())
