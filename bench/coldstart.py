"""Cold paths: many concurrent first calls to one OAuth API share one token fetch.

Run by hand (after `bash bench/setup.sh`), never by the test suite. Each round starts a fresh
gateway (empty token and CSRF caches) on one core and, from the other, opens --calls (500)
connections to it, waits until they are all established, then sends one request on each at once,
to the same OAuth API. The mock token endpoint takes --token-delay ms to answer, so the calls
really overlap the fetch. The round passes when every call got 200 (the upstream checks the
Bearer token, and the CSRF token with --api oauth-csrf) and the upstream saw exactly one token
request (and one CSRF request). It prints per round the p50/p99/max of the calls (each timed from
its own send) and the time until the last answer, then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from paced import Latency
from run import add_json_arg, check_tools, free_port, pinned, start, stop, wait_http_ok
from scenarios import (
    APP,
    GATEWAY_CMD_ADMIN,
    ApiSpec,
    Upstream,
    gateway_argv,
    gateway_env,
    start_upstream,
    write_apis,
    write_json,
)
from stream import read_body, read_head

READY_API = ApiSpec("open", "none")


@dataclass
class ColdRound:
    round: int
    calls: int
    ok: int
    statuses: dict[str, int]
    errors: dict[str, int]
    token_requests: int
    csrf_requests: int
    latency: Latency
    all_done_ms: float
    connect_s: float
    passed: bool


@dataclass
class ColdReport:
    started: str
    settings: dict[str, object]
    rounds: list[ColdRound] = field(default_factory=list)


async def one_call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, float]:
    began = time.monotonic()
    writer.write(request)
    head = await read_head(reader)
    await read_body(reader, head, 0)
    return int(head.first_line.split(" ", 2)[1]), time.monotonic() - began


async def storm(
    port: int, calls: int, path: str, preconnect: bool, limit: float
) -> tuple[list[tuple[int, float] | BaseException], float, float]:
    """Returns (per-call result, seconds to connect, seconds from first send to last answer)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    connect_began = time.monotonic()
    try:
        if preconnect:
            opened = await asyncio.wait_for(
                asyncio.gather(
                    *(asyncio.open_connection("127.0.0.1", port) for _ in range(calls)),
                    return_exceptions=True,
                ),
                limit,
            )
            for item in opened:
                if isinstance(item, BaseException):
                    raise OSError(f"preconnect failed: {item!r}")
                conns.append(item)
            # Let the gateway accept the last of them before the clock starts.
            await asyncio.sleep(0.3)
        connect_s = time.monotonic() - connect_began

        async def cold(i: int) -> tuple[int, float]:
            if preconnect:
                reader, writer = conns[i]
                return await one_call(reader, writer, request)
            began = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conns.append((reader, writer))
            status, _ = await one_call(reader, writer, request)
            return status, time.monotonic() - began

        began = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(cold(i) for i in range(calls)), return_exceptions=True), limit
        )
        return list(results), connect_s, time.monotonic() - began
    finally:
        for _, writer in conns:
            writer.close()


async def cold_round(index: int, args: argparse.Namespace, work: Path, up: Upstream) -> ColdRound:
    api = ApiSpec("cold", args.api)
    registry = write_apis(work / f"registry-{index}", [READY_API, api], up, None)
    port, admin = free_port(), free_port()
    argv = gateway_argv(args.gateway_cmd, registry, port, "", admin=admin, workers=1)
    gateway = start("gateway", pinned(args.gateway_core, argv), work, gateway_env(None))
    try:
        await asyncio.to_thread(wait_http_ok, gateway, port, f"/{APP}/{READY_API.service}/x")
        before = await asyncio.to_thread(up.stats)
        results, connect_s, all_done = await storm(
            port, args.calls, f"/{APP}/{api.service}/item", not args.no_preconnect, args.timeout
        )
        after = await asyncio.to_thread(up.stats)
        if gateway.popen.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{gateway.log_tail()}")
    finally:
        await asyncio.to_thread(stop, gateway)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for item in results:
        if isinstance(item, BaseException):
            errors[type(item).__name__] += 1
        else:
            statuses[str(item[0])] += 1
            latencies.append(item[1])
    tokens = after["token"] - before["token"]
    csrfs = after["csrf"] - before["csrf"]
    ok = statuses.get("200", 0)
    want_csrf = 1 if args.api == "oauth-csrf" else 0
    return ColdRound(
        round=index,
        calls=args.calls,
        ok=ok,
        statuses=dict(statuses),
        errors=dict(errors),
        token_requests=tokens,
        csrf_requests=csrfs,
        latency=Latency.of(latencies),
        all_done_ms=round(all_done * 1e3, 2),
        connect_s=round(connect_s, 3),
        passed=ok == args.calls and tokens == 1 and csrfs == want_csrf,
    )


async def benchmark(args: argparse.Namespace) -> ColdReport:
    report = ColdReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "api": args.api,
            "calls": args.calls,
            "rounds": args.rounds,
            "token_delay_ms": args.token_delay,
            "preconnect": not args.no_preconnect,
            "gateway_core": args.gateway_core,
            "client_core": args.client_core,
            "gateway_cmd": args.gateway_cmd,
        },
    )
    os.sched_setaffinity(0, {args.client_core})
    with tempfile.TemporaryDirectory(prefix="appgateway-cold-") as tmp:
        work = Path(tmp)
        up = await asyncio.to_thread(
            start_upstream, work, args.client_core, token_delay_ms=args.token_delay
        )
        try:
            print(
                f"{'round':>5} {'calls':>6} {'200':>6} {'tokens':>7} {'csrf':>5} {'p50 ms':>8} "
                f"{'p99 ms':>8} {'max ms':>8} {'all ms':>8} {'connect s':>10}  result"
            )
            for index in range(1, args.rounds + 1):
                r = await cold_round(index, args, work, up)
                report.rounds.append(r)
                other = {**{k: v for k, v in r.statuses.items() if k != "200"}, **r.errors}
                print(
                    f"{r.round:>5} {r.calls:>6} {r.ok:>6} {r.token_requests:>7} "
                    f"{r.csrf_requests:>5} {r.latency.p50_ms:>8.1f} {r.latency.p99_ms:>8.1f} "
                    f"{r.latency.max_ms:>8.1f} {r.all_done_ms:>8.1f} {r.connect_s:>10.2f}  "
                    f"{'pass' if r.passed else 'FAIL'}{' ' + str(other) if other else ''}",
                    flush=True,
                )
        finally:
            await asyncio.to_thread(stop, up.proc)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--api", choices=("oauth", "oauth-csrf"), default="oauth")
    parser.add_argument("--calls", type=int, default=500, help="concurrent first calls")
    parser.add_argument("--rounds", type=int, default=3, help="fresh gateway per round")
    parser.add_argument(
        "--token-delay", type=int, default=50, help="ms the token endpoint takes to answer"
    )
    parser.add_argument(
        "--no-preconnect",
        action="store_true",
        help="connect as part of each call (also measures the accept backlog)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole storm")
    parser.add_argument(
        "--gateway-cmd",
        default=GATEWAY_CMD_ADMIN.replace("{workers}", "1"),
        help="gateway command line; {registry}, {port} and {admin} are filled in",
    )
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1 or args.token_delay < 0:
        parser.error("--calls and --rounds must be positive, --token-delay not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    try:
        report = asyncio.run(benchmark(args))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"cold-start benchmark failed: {exc!r}", file=sys.stderr)
        return 1
    rounds = report.rounds
    p99 = statistics.median(r.latency.p99_ms for r in rounds)
    passed = all(r.passed for r in rounds)
    print(
        f"\n{args.calls} concurrent first calls to one {args.api} API: median p99 {p99:.1f} ms, "
        f"token requests per round {[r.token_requests for r in rounds]}; "
        f"{'all rounds passed' if passed else 'SOME ROUNDS FAILED'} "
        "(target: 1 token request, all 200)"
    )
    write_json(args.json, "coldstart", asdict(report))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
