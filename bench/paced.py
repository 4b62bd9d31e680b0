"""Latency at a fixed request rate: an open-loop HTTP/1.1 load generator and a benchmark on it.

Run by hand (after `bash bench/setup.sh`), never by the test suite. wrk is closed-loop: each
connection waits for an answer before it sends again, so a slow answer delays the requests behind
it and they are never measured as late ("coordinated omission"). This generator fixes the send
schedule in advance (request i is due at start + i/rate) and measures every request from its
scheduled time, whether a connection was free then or not. Keep-alive connections are raw
asyncio protocols on 127.0.0.1; a request due while all are busy waits in a queue, and that wait
counts.

Two uses:

* `--url URL --rate R`: load one URL and print p50/p99/p99.9.
* `--scenario NAME`: the latency benchmark. Go's saturation rate is measured with wrk (or given
  with --go-rps), then both proxies, alternating, get `--fraction` (0.5) of it, paced.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from run import (
    CLK_TCK,
    Proc,
    add_json_arg,
    add_proxy_args,
    busy_percent,
    check_cores,
    check_tools,
    core_busy,
    cpu_seconds,
    foreign_ticks,
    proxy_order,
    stop,
)
from scenarios import (
    SCENARIOS,
    Pki,
    Scenario,
    Upstream,
    launch,
    make_pki,
    post_script,
    route_path,
    run_wrk_script,
    start_upstream,
    write_json,
)

# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    kind: str  # label the results are grouped by
    data: bytes  # the whole request, head and body


def build_request(
    kind: str,
    method: str,
    host: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
    return Request(kind, head.encode("latin-1") + b"\r\n" + body)


def interleave(weighted: Sequence[tuple[Request, int]]) -> list[Request]:
    """One cycle of the mix, each request spread evenly: weight w at positions (k + 0.5) / w."""
    slots = [
        ((k + 0.5) / weight, order, request)
        for order, (request, weight) in enumerate(weighted)
        for k in range(weight)
    ]
    slots.sort(key=lambda slot: (slot[0], slot[1]))
    return [request for _, _, request in slots]


# --------------------------------------------------------------------------- statistics


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank over an already sorted sequence; nan when empty."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class KindStats:
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests only
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Latency:
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @staticmethod
    def of(samples: Sequence[float]) -> Latency:
        ordered = sorted(samples)
        return Latency(
            count=len(ordered),
            p50_ms=round(percentile(ordered, 0.50) * 1e3, 3),
            p99_ms=round(percentile(ordered, 0.99) * 1e3, 3),
            p999_ms=round(percentile(ordered, 0.999) * 1e3, 3),
            max_ms=round(ordered[-1] * 1e3, 3) if ordered else float("nan"),
        )


@dataclass
class KindResult:
    latency: Latency
    statuses: dict[str, int]
    errors: dict[str, int]


@dataclass
class PacedResult:
    rate: float
    seconds: float
    scheduled: int
    completed: int
    unsent: int  # still queued when the run ended: the target could not keep up
    achieved_rps: float
    latency: Latency
    statuses: dict[str, int]
    errors: dict[str, int]
    timer_lag_p99_ms: float  # how late the dispatcher woke: the client's own health
    client_cpu_percent: float
    kinds: dict[str, KindResult]


# --------------------------------------------------------------------------- the generator


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses Content-Length, chunked and close-delimited answers."""

    def __init__(self, gen: PacedGenerator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.request: Request | None = None
        self.scheduled = 0.0
        self.sent_at = 0.0
        self.status = 0
        self.mode = ""  # "" while reading the head; then "length", "chunked" or "close"
        self.left = 0  # body bytes left ("length"), or chunk state (see _chunked)
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, scheduled: float, request: Request, now: float) -> None:
        assert self.transport is not None
        self.request, self.scheduled, self.sent_at = request, scheduled, now
        self.mode, self.status, self.close_after = "", 0, False
        self.transport.write(request.data)

    def data_received(self, data: bytes) -> None:
        if self.request is None:
            return  # nothing asked: stray bytes after a finished answer
        if self.mode == "length" and not self.buf:
            if len(data) < self.left:  # the common large-body case: count, do not copy
                self.left -= len(data)
                return
            data = data[self.left :]
            self.left = 0
            self._finish()
            if not data:
                return
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        while self.request is not None:
            if self.mode == "":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                if not self._head(bytes(self.buf[:end])):
                    del self.buf[: end + 4]
                    continue  # an interim 1xx answer: the real one follows
                del self.buf[: end + 4]
            if self.mode == "length":
                if len(self.buf) < self.left:
                    self.left -= len(self.buf)
                    self.buf.clear()
                    return
                del self.buf[: self.left]
                self.left = 0
                self._finish()
            elif self.mode == "chunked":
                if not self._chunked():
                    return
                self._finish()
            else:  # "close": the body ends with the connection
                self.buf.clear()
                return

    def _head(self, head: bytes) -> bool:
        """Reads the status and framing; False for a 1xx answer."""
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.fail("protocol")
            return True
        if 100 <= self.status < 200:
            return False
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                self.close_after = b"close" in value.lower()
        if chunked:
            self.mode, self.left = "chunked", -1
        elif length is not None:
            self.mode, self.left = "length", length
        else:
            self.mode = "close"
        return True

    def _chunked(self) -> bool:
        """Consumes chunked framing; left is -1 (size line next), -2 (trailers) or bytes+CRLF."""
        while True:
            if self.left == -1 or self.left == -2:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if self.left == -2:
                    if not line:
                        return True
                    continue
                size = int(line.split(b";")[0], 16)
                self.left = size + 2 if size else -2
            else:
                take = min(self.left, len(self.buf))
                del self.buf[:take]
                self.left -= take
                if self.left:
                    return False
                self.left = -1

    def _finish(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        self.gen.completed(self, request, self.status)
        if self.close_after and self.transport is not None:
            self.transport.close()
        else:
            self.gen.idle(self)

    def fail(self, error: str) -> None:
        request = self.request
        if request is None:
            return
        self.request = None
        self.gen.failed(request, error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.request is not None:
            if self.mode == "close" and exc is None:
                self.close_after = True
                self._finish()
            else:
                reset = isinstance(exc, ConnectionResetError)
                self.fail("reset" if reset else "closed")
        self.transport = None
        self.gen.lost(self)


class PacedGenerator:
    """Sends `rate` requests per second for `seconds`, cycling through `mix`, open-loop."""

    def __init__(
        self,
        host: str,
        port: int,
        mix: Sequence[Request],
        rate: float,
        seconds: float,
        connections: int,
        timeout: float = 30.0,
    ) -> None:
        if rate <= 0 or seconds <= 0 or connections < 1 or not mix:
            raise ValueError("rate, seconds, connections and mix must be positive")
        self.host, self.port = host, port
        self.mix = list(mix)
        self.rate, self.seconds = rate, seconds
        self.connections = connections
        self.timeout = timeout
        self.stats: dict[str, KindStats] = {}
        self._free: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._all: set[_Conn] = set()
        self._backlog: deque[tuple[float, Request]] = deque()
        self._lags: list[float] = []
        self._closing = False
        self._reconnects: set[asyncio.Task[None]] = set()
        self._all_scheduled = False
        self._start = self._last_done = 0.0
        self._drained = asyncio.Event()

    def _kind(self, request: Request) -> KindStats:
        stats = self.stats.get(request.kind)
        if stats is None:
            stats = self.stats[request.kind] = KindStats()
        return stats

    # callbacks from the connections

    def completed(self, conn: _Conn, request: Request, status: int) -> None:
        stats = self._kind(request)
        self._last_done = time.monotonic()
        stats.latencies.append(self._last_done - conn.scheduled)
        stats.statuses[status] += 1
        self._busy.discard(conn)
        self._check_drained()

    def failed(self, request: Request, error: str) -> None:
        self._kind(request).errors[error] += 1
        self._check_drained()

    def _check_drained(self) -> None:
        if self._all_scheduled and not self._backlog and not self._busy:
            self._drained.set()

    def idle(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        if self._closing:
            return
        self._free.append(conn)
        self._pump()

    def lost(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        self._all.discard(conn)
        if conn in self._free:
            self._free.remove(conn)
        if not self._closing:
            task = asyncio.get_running_loop().create_task(self._connect())
            self._reconnects.add(task)
            task.add_done_callback(self._reconnects.discard)

    # sending

    def _pump(self) -> None:
        now = time.monotonic()
        while self._backlog and self._free:
            conn = self._free.pop()
            if conn.transport is None or conn.transport.is_closing():
                continue
            scheduled, request = self._backlog.popleft()
            self._busy.add(conn)
            conn.send(scheduled, request, now)

    async def _connect(self, retry: bool = True) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(50 if retry else 1):
            try:
                _, proto = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            except OSError:
                self._kind(Request("connect", b"")).errors["connect"] += 1
                await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
                continue
            if self._closing:
                if proto.transport is not None:
                    proto.transport.close()
                return
            self._all.add(proto)
            self.idle(proto)
            return

    async def _watchdog(self) -> None:
        """Aborts answers slower than `timeout`; cheaper than one timer per request."""
        while True:
            await asyncio.sleep(0.1)
            limit = time.monotonic() - self.timeout
            for conn in [c for c in self._busy if c.sent_at < limit]:
                self._busy.discard(conn)
                conn.fail("timeout")

    async def run(self) -> PacedResult:
        await asyncio.gather(*(self._connect(retry=False) for _ in range(self.connections)))
        if not self._all:
            raise OSError(f"cannot connect to {self.host}:{self.port}")
        watchdog = asyncio.get_running_loop().create_task(self._watchdog())
        cpu_before, wall_before = os.times(), time.monotonic()
        interval = 1.0 / self.rate
        total = max(1, int(self.rate * self.seconds))
        start = self._start = time.monotonic() + 0.01
        index = 0
        try:
            while index < total:
                due = start + index * interval
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                self._lags.append(now - due)
                while index < total and start + index * interval <= now:
                    self._backlog.append(
                        (start + index * interval, self.mix[index % len(self.mix)])
                    )
                    index += 1
                self._pump()
            # Everything is scheduled; give what was sent time to come back.
            self._all_scheduled = True
            self._check_drained()
            try:
                await asyncio.wait_for(self._drained.wait(), self.timeout)
            except TimeoutError:
                pass  # the watchdog has failed what was sent; the rest counts as unsent
        finally:
            self._closing = True
            watchdog.cancel()
            for task in list(self._reconnects):
                task.cancel()
            for conn in list(self._all):
                if conn.transport is not None:
                    conn.transport.close()
        wall = time.monotonic() - wall_before
        cpu_after = os.times()
        cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        unsent = len(self._backlog)
        for _, request in self._backlog:
            self._kind(request).errors["unsent"] += 1
        return self._result(total, unsent, wall, cpu)

    def _result(self, total: int, unsent: int, wall: float, cpu: float) -> PacedResult:
        everything: list[float] = []
        statuses: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        kinds: dict[str, KindResult] = {}
        for kind, stats in sorted(self.stats.items()):
            everything += stats.latencies
            codes = {str(code): n for code, n in sorted(stats.statuses.items())}
            statuses.update(codes)
            errors.update(stats.errors)
            kinds[kind] = KindResult(Latency.of(stats.latencies), codes, dict(stats.errors))
        lags = sorted(self._lags)
        return PacedResult(
            rate=self.rate,
            seconds=round(wall, 3),
            scheduled=total,
            completed=len(everything),
            unsent=unsent,
            # Over the schedule, or longer if answers trailed it: what the target sustained.
            achieved_rps=round(
                len(everything) / max(self.seconds, self._last_done - self._start), 1
            ),
            latency=Latency.of(everything),
            statuses=dict(sorted(statuses.items())),
            errors=dict(sorted(errors.items())),
            timer_lag_p99_ms=round(percentile(lags, 0.99) * 1e3, 3),
            client_cpu_percent=round(100.0 * cpu / wall, 1) if wall > 0 else float("nan"),
            kinds=kinds,
        )


async def paced_run(
    port: int,
    mix: Sequence[Request],
    rate: float,
    seconds: float,
    connections: int,
    answer_timeout: float = 30.0,
    host: str = "127.0.0.1",
) -> PacedResult:
    gen = PacedGenerator(host, port, mix, rate, seconds, connections, answer_timeout)
    return await gen.run()


def format_result(label: str, r: PacedResult) -> str:
    errors = sum(r.errors.values())
    non_2xx = sum(n for code, n in r.statuses.items() if not code.startswith("2"))
    return (
        f"{label:<10} {r.rate:>8.0f} {r.achieved_rps:>9.0f} {r.latency.p50_ms:>8.2f} "
        f"{r.latency.p99_ms:>8.2f} {r.latency.p999_ms:>9.2f} {r.latency.max_ms:>8.2f} "
        f"{errors:>7} {non_2xx:>7} {r.unsent:>7} {r.timer_lag_p99_ms:>8.2f} "
        f"{r.client_cpu_percent:>6.0f}"
    )


RESULT_HEADER = (
    f"{'':<10} {'rate':>8} {'done/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
    f"{'max ms':>8} {'errors':>7} {'non-2xx':>7} {'unsent':>7} {'lag ms':>8} {'cli%':>6}"
)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class LatencyRound:
    round: int
    proxy: str
    result: PacedResult
    cpu_s: float
    proxy_core_busy: float
    load_core_busy: float
    other_cpu_s: float


@dataclass
class LatencyReport:
    started: str
    settings: dict[str, object]
    go_saturation_rps: float = 0.0
    rate: float = 0.0
    rounds: list[LatencyRound] = field(default_factory=list)
    medians: dict[str, dict[str, float]] = field(default_factory=dict)


def scenario_mix(sc: Scenario, port: int) -> list[Request]:
    body = b"x" * sc.post
    return [
        build_request(
            sc.name, "POST" if sc.post else "GET", f"127.0.0.1:{port}", route_path(sc.api), body
        )
    ]


def go_saturation(
    sc: Scenario, args: argparse.Namespace, work: Path, up: Upstream, pki: Pki
) -> float:
    """The Go proxy's closed-loop maximum, as scenarios.py measures it."""
    proc, port = launch("go", sc.api, work, up, pki, core=args.proxy_core)
    try:
        script = post_script(work, sc.post) if sc.post else None
        url = f"http://127.0.0.1:{port}{route_path(sc.api)}"
        if args.warmup > 0:
            run_wrk_script(args.load_core, url, args.connections, args.warmup, script)
        result = run_wrk_script(
            args.load_core, url, args.connections, args.saturation_duration, script
        )
    finally:
        stop(proc)
    return result.rps


async def measure(
    name: str,
    index: int,
    sc: Scenario,
    args: argparse.Namespace,
    work: Path,
    up: Upstream,
    pki: Pki,
    rate: float,
) -> LatencyRound:
    proc: Proc
    proc, port = await asyncio.to_thread(
        launch, name, sc.api, work, up, pki, core=args.proxy_core, gateway_cmd=args.gateway_cmd
    )
    try:
        mix = scenario_mix(sc, port)
        if args.warmup > 0:
            await paced_run(port, mix, rate, args.warmup, args.connections)
        before = cpu_seconds(proc.pid), core_busy(), foreign_ticks()
        result = await paced_run(port, mix, rate, args.duration, args.connections)
        after = cpu_seconds(proc.pid), core_busy(), foreign_ticks()
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} died during the round:\n{proc.log_tail()}")
    finally:
        await asyncio.to_thread(stop, proc)
    proc.log_path.unlink()
    return LatencyRound(
        round=index,
        proxy=name,
        result=result,
        cpu_s=round(after[0] - before[0], 2),
        proxy_core_busy=round(busy_percent(before[1], after[1], args.proxy_core), 1),
        load_core_busy=round(busy_percent(before[1], after[1], args.load_core), 1),
        other_cpu_s=round(max(0, after[2] - before[2]) / CLK_TCK, 2),
    )


async def latency_benchmark(args: argparse.Namespace) -> LatencyReport:
    sc: Scenario = SCENARIOS[args.scenario]
    report = LatencyReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "scenario": sc.name,
            "fraction": args.fraction,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "proxy_core": args.proxy_core,
            "load_core": args.load_core,
            "gateway_cmd": args.gateway_cmd,
        },
    )
    os.sched_setaffinity(0, {args.load_core})
    with tempfile.TemporaryDirectory(prefix="appgateway-paced-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        up = await asyncio.to_thread(start_upstream, work, args.load_core, size=sc.size, pki=pki)
        try:
            if args.go_rps:
                report.go_saturation_rps = args.go_rps
            else:
                report.go_saturation_rps = await asyncio.to_thread(
                    go_saturation, sc, args, work, up, pki
                )
            report.rate = round(args.fraction * report.go_saturation_rps, 1)
            print(
                f"scenario {sc.name}: Go saturates at {report.go_saturation_rps:.0f} req/s; "
                f"pacing both proxies at {report.rate:.0f} req/s"
            )
            print(f"{'round':>5} {RESULT_HEADER} {'core P%':>8} {'core L%':>8} {'other s':>8}")
            for index in range(1, args.rounds + 1):
                for name in proxy_order(args.only, index):
                    r = await measure(name, index, sc, args, work, up, pki, report.rate)
                    report.rounds.append(r)
                    print(
                        f"{index:>5} {format_result(name, r.result)} {r.proxy_core_busy:>8.0f} "
                        f"{r.load_core_busy:>8.0f} {r.other_cpu_s:>8.2f}",
                        flush=True,
                    )
        finally:
            await asyncio.to_thread(stop, up.proc)
    for name in ("gateway", "go"):
        mine = [r.result.latency for r in report.rounds if r.proxy == name]
        if mine:
            report.medians[name] = {
                "p50_ms": sorted(m.p50_ms for m in mine)[len(mine) // 2],
                "p99_ms": sorted(m.p99_ms for m in mine)[len(mine) // 2],
                "p999_ms": sorted(m.p999_ms for m in mine)[len(mine) // 2],
            }
    return report


def print_latency_summary(report: LatencyReport) -> None:
    print(f"\nmedians at {report.rate:.0f} req/s:")
    for name, m in report.medians.items():
        print(
            f"  {name:<8} p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  "
            f"p99.9 {m['p999_ms']:.2f} ms"
        )
    if "gateway" in report.medians and "go" in report.medians:
        gw, go = report.medians["gateway"], report.medians["go"]
        print(
            f"gateway/go: p50 {gw['p50_ms'] / go['p50_ms']:.2f}x, "
            f"p99 {gw['p99_ms'] / go['p99_ms']:.2f}x"
        )
    warn_rounds(report.rounds)


def warn_rounds(rounds: Sequence[LatencyRound]) -> None:
    busy = [r for r in rounds if r.other_cpu_s > 0.05 * max(r.cpu_s, 0.01)]
    if busy:
        print(
            f"WARNING: other processes used CPU during {len(busy)} round(s) ('other s'); "
            "the machine was not idle",
            file=sys.stderr,
        )
    if any(r.result.errors or r.result.unsent for r in rounds):
        print("WARNING: some rounds had errors or unsent requests", file=sys.stderr)
    if any(r.result.client_cpu_percent > 85 for r in rounds):
        print(
            "WARNING: the load generator used > 85% of a core in some rounds; its own delays "
            "may be in the latencies ('cli%', 'lag ms')",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- command line


async def load_url(args: argparse.Namespace) -> PacedResult:
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        raise SystemExit("--url must be http://host:port/path")
    port = url.port or 80
    target = url.path or "/"
    if url.query:
        target += "?" + url.query
    body = b"x" * args.body_size
    method = args.method or ("POST" if body else "GET")
    mix = [build_request("url", method, url.netloc, target, body)]
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    return await paced_run(port, mix, args.rate, args.duration, args.connections, host=url.hostname)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="load this URL at --rate instead of running the benchmark")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second (--url)")
    parser.add_argument("--method", default="", help="request method (--url; default GET)")
    parser.add_argument("--body-size", type=int, default=0, help="request body bytes (--url)")
    parser.add_argument("--core", type=int, default=None, help="pin the generator (--url)")
    parser.add_argument(
        "--scenario", choices=list(SCENARIOS), default="basic", help="route for the benchmark"
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="of Go's saturation rate")
    parser.add_argument("--go-rps", type=float, default=0.0, help="skip measuring Go's maximum")
    parser.add_argument("--saturation-duration", type=int, default=10, help="wrk seconds for it")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per round")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    add_proxy_args(parser)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be positive")
    if args.url is not None:
        if args.rate <= 0:
            parser.error("--url needs --rate")
    else:
        if not 0 < args.fraction <= 1.5:
            parser.error("--fraction must be in (0, 1.5]")
        check_cores(parser, args.proxy_core, args.load_core)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url is not None:
        result = asyncio.run(load_url(args))
        print(RESULT_HEADER)
        print(format_result("url", result))
        write_json(args.json, "paced", asdict(result))
        return 0 if not result.errors and not result.unsent else 1
    check_tools()
    try:
        report = asyncio.run(latency_benchmark(args))
    except (RuntimeError, OSError) as exc:
        print(f"latency benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_latency_summary(report)
    write_json(args.json, "latency", asdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
