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
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from run import ROOT, free_port, start, stop, wait_http_ok
from scenarios import (
    SCENARIOS,
    gateway_env,
    make_pki,
    route_path,
    start_upstream,
    write_apis,
)


async def _load(port: int, path: str, requests: int, connections: int) -> int:
    """Sends the requests; returns how many answers were not 200."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    failures = 0

    async def one(count: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
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


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def measure(
    scenario: str, requests: int, connections: int, warmup: int, top: int = 0
) -> dict[str, object]:
    spec = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory(prefix="appgateway-icount-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        upstream = start_upstream(work, None, size=spec.size, pki=pki)
        try:
            registry = write_apis(work / "registry", [spec.api], upstream, pki)
            port = free_port()
            out = work / "callgrind.out"
            argv = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-instr=no",
                str(ROOT / ".venv" / "bin" / "python"),
                "-m",
                "appgateway",
                "serve",
                "--registry",
                str(registry),
                "--proxy-port",
                str(port),
                "--proxy-port-compass",
                "0",
                "--admin-port",
                "0",
                "--log-level",
                "info",
            ]
            gateway = start("gateway", argv, work, gateway_env(pki))
            try:
                path = route_path(spec.api)
                wait_http_ok(gateway, port, path, timeout=120)
                asyncio.run(_load(port, path, warmup, connections))
                subprocess.run(
                    ["callgrind_control", "-z", str(gateway.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                failures = asyncio.run(_load(port, path, requests, connections))
                subprocess.run(
                    ["callgrind_control", "-d", str(gateway.pid)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
                total = _total(dumps[-1])
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
        "instructions_per_request": total // requests,
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
    args = parser.parse_args(argv)
    result = measure(args.scenario, args.requests, args.connections, args.warmup, args.top)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['scenario']}: {result['instructions_per_request']} instructions per request"
            f" ({result['requests']} requests, {result['not_200']} not 200)"
        )
    return 1 if result["not_200"] else 0


if __name__ == "__main__":
    sys.exit(main())
