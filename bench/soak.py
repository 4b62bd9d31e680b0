"""Soak: a long mixed load with faults, watching the gateway's memory, descriptors and errors.

Run by hand (after `bash bench/setup.sh`), never by the test suite. One gateway (one worker,
pinned, --proxy-timeout 2) serves an Application with every kind of credentials: none, Basic,
OAuth, OAuth + CSRF, a client certificate over TLS, and request parameters; the mock upstream
(goupstream) checks each request's credentials, issues short-lived tokens (--token-ttl, so the
token cache turns over) and CSRF tokens, and requires a client certificate on its TLS listener.
The certificates are generated per run. 1% of the requests go to faulty services: the upstream
resets the connection, answers after the proxy timeout, or answers 503.

The paced generator (paced.py) sends --rate requests per second, open loop, for --warmup-minutes
(not counted) and then --minutes, in one-minute windows with a progress line each. VmRSS and the
number of open descriptors of the gateway are sampled every --sample-seconds. At the end it
prints the totals, outcomes by class, p50/p99, RSS at the start (after the warm-up) and at the
end, flags growth over 10%, and prints a trimmed copy of the admin /metrics.

Bounded: loopback only, at most 24 h and 10,000 req/s; the generator stops on schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from paced import Latency, PacedGenerator, Request, build_request, interleave
from run import (
    CLK_TCK,
    add_json_arg,
    check_tools,
    cpu_seconds,
    foreign_ticks,
    free_port,
    pinned,
    start,
    stop,
    wait_http_ok,
)
from scenarios import (
    APP,
    GATEWAY_CMD_ADMIN,
    ApiSpec,
    gateway_argv,
    gateway_env,
    make_pki,
    start_upstream,
    write_apis,
    write_json,
)
from stream import tree_kib

PROXY_TIMEOUT_S = 2.0

# (service, weight, the status the caller must get); the weights put 1% on the faults.
MIX: tuple[tuple[ApiSpec, int, int], ...] = (
    (ApiSpec("none", "none"), 66, 200),
    (ApiSpec("basic", "basic"), 66, 200),
    (ApiSpec("oauth", "oauth"), 66, 200),
    (ApiSpec("oauth-csrf", "oauth-csrf"), 66, 200),
    (ApiSpec("cert", "cert"), 66, 200),
    (ApiSpec("params", "params"), 66, 200),
    (ApiSpec("fault-reset", "none", "/fault/reset"), 1, 502),
    (ApiSpec("fault-timeout", "none", "/fault/timeout"), 1, 504),
    (ApiSpec("fault-5xx", "none", "/fault/5xx"), 2, 502),
)
EXPECTED = {api.service: status for api, _, status in MIX}


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int


@dataclass
class Window:
    minute: int
    phase: str
    done_rps: float
    p50_ms: float
    p99_ms: float
    unexpected: int
    rss_mb: float


@dataclass
class SoakReport:
    started: str
    settings: dict[str, object]
    total_requests: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    latency: Latency | None = None
    latency_ok: Latency | None = None
    windows: list[Window] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_percent: float = 0.0
    fds_start: int = 0
    fds_end: int = 0
    gateway_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    metrics: list[str] = field(default_factory=list)


def outcome(service: str, status: int) -> str:
    want = EXPECTED[service]
    if status == want:
        return "ok" if want == 200 else f"expected {status}"
    return f"UNEXPECTED {status}"


class Sampler:
    """Samples the gateway every `interval` s on the event loop (reading /proc is quick)."""

    def __init__(self, pid: int, interval: float, began: float) -> None:
        self.pid, self.interval, self.began = pid, interval, began
        self.samples: list[Sample] = []

    def read(self) -> Sample:
        return Sample(
            t_s=round(time.monotonic() - self.began, 1),
            rss_mb=round(tree_kib(self.pid, "VmRSS") / 1024, 1),
            fds=fd_count(self.pid),
        )

    def take(self) -> Sample:
        sample = self.read()
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.take()


def scrape_metrics(admin: int) -> list[str]:
    """The admin /metrics without histogram buckets and comments: enough to read the counters."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode("utf-8", "replace")
    finally:
        conn.close()
    keep = []
    for line in text.splitlines():
        if not line or line.startswith("#") or "_bucket{" in line or "_created" in line:
            continue
        if line.startswith(("appgateway_", "process_resident", "process_open_fds")):
            keep.append(line)
    return keep


async def soak(args: argparse.Namespace) -> SoakReport:
    report = SoakReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "minutes": args.minutes,
            "warmup_minutes": args.warmup_minutes,
            "rate": args.rate,
            "connections": args.connections,
            "token_ttl_s": args.token_ttl,
            "proxy_timeout_s": PROXY_TIMEOUT_S,
            "faults_percent": round(
                100
                * sum(w for a, w, _ in MIX if a.service.startswith("fault"))
                / sum(w for _, w, _ in MIX),
                2,
            ),
            "gateway_core": args.gateway_core,
            "load_core": args.load_core,
            "gateway_cmd": args.gateway_cmd,
        },
    )
    os.sched_setaffinity(0, {args.load_core})
    with tempfile.TemporaryDirectory(prefix="appgateway-soak-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        up = await asyncio.to_thread(
            start_upstream,
            work,
            args.load_core,
            pki=pki,
            token_ttl=args.token_ttl,
            fault_sleep_s=PROXY_TIMEOUT_S + 1.0,
        )
        try:
            registry = write_apis(work / "registry", [api for api, _, _ in MIX], up, pki)
            port, admin = free_port(), free_port()
            argv = gateway_argv(args.gateway_cmd, registry, port, "", admin=admin, workers=1)
            argv += ["--proxy-timeout", str(PROXY_TIMEOUT_S)]
            gateway = start("gateway", pinned(args.gateway_core, argv), work, gateway_env(pki))
            try:
                await asyncio.to_thread(wait_http_ok, gateway, admin, "/v1/ready")
                await run_load(args, report, port, gateway.pid)
                if gateway.popen.poll() is not None:
                    raise RuntimeError(f"gateway exited:\n{gateway.log_tail()}")
                report.metrics = await asyncio.to_thread(scrape_metrics, admin)
            finally:
                await asyncio.to_thread(stop, gateway)
        finally:
            await asyncio.to_thread(stop, up.proc)
    return report


def windows(phase: str, seconds: float) -> list[tuple[str, float]]:
    """Splits a phase into windows of at most a minute, one progress line each."""
    out = []
    while seconds > 0.5:
        out.append((phase, min(60.0, seconds)))
        seconds -= 60.0
    return out


async def run_load(args: argparse.Namespace, report: SoakReport, port: int, pid: int) -> None:
    host = f"127.0.0.1:{port}"
    weighted: list[tuple[Request, int]] = [
        (build_request(api.service, "GET", host, f"/{APP}/{api.service}/item"), weight)
        for api, weight, _ in MIX
    ]
    mix = interleave(weighted)
    schedule = windows("warm-up", args.warmup_minutes * 60) + windows("soak", args.minutes * 60)
    began = time.monotonic()
    sampler = Sampler(pid, args.sample_seconds, began)
    sampler_task: asyncio.Task[None] | None = None
    everything, ok_only = array("d"), array("d")
    outcomes: dict[str, Counter[str]] = {api.service: Counter() for api, _, _ in MIX}
    cpu_before = other_before = 0.0
    print(
        f"{'minute':>6} {'phase':<7} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'unexpected':>10} {'RSS MB':>7} {'fds':>5}"
    )
    for index, (phase, window_s) in enumerate(schedule):
        if phase == "soak" and sampler_task is None:
            start_sample = sampler.take()
            report.rss_start_mb, report.fds_start = start_sample.rss_mb, start_sample.fds
            sampler_task = asyncio.get_running_loop().create_task(sampler.run())
            cpu_before, other_before = cpu_seconds(pid), foreign_ticks() / CLK_TCK
        gen = PacedGenerator(
            "127.0.0.1", port, mix, args.rate, window_s, args.connections, timeout=10.0
        )
        result = await gen.run()
        unexpected = 0
        for kind, stats in gen.stats.items():
            for code, n in stats.statuses.items():
                label = outcome(kind, code) if kind in EXPECTED else f"status {code}"
                unexpected += n if label.startswith("UNEXPECTED") else 0
                if phase == "soak":
                    outcomes.setdefault(kind, Counter())[label] += n
            for error, n in stats.errors.items():
                unexpected += n
                if phase == "soak":
                    outcomes.setdefault(kind, Counter())[f"client {error}"] += n
            if phase == "soak":
                everything.extend(stats.latencies)
                if EXPECTED.get(kind) == 200:
                    ok_only.extend(stats.latencies)
        sample = sampler.read()
        window = Window(
            minute=index + 1,
            phase=phase,
            done_rps=result.achieved_rps,
            p50_ms=result.latency.p50_ms,
            p99_ms=result.latency.p99_ms,
            unexpected=unexpected,
            rss_mb=sample.rss_mb,
        )
        report.windows.append(window)
        print(
            f"{window.minute:>6} {phase:<7} {window.done_rps:>8.0f} {window.p50_ms:>8.2f} "
            f"{window.p99_ms:>8.2f} {unexpected:>10} {sample.rss_mb:>7.1f} {sample.fds:>5}",
            flush=True,
        )
    if sampler_task is not None:
        sampler_task.cancel()
    end = sampler.take()
    report.samples = sampler.samples
    report.rss_end_mb, report.fds_end = end.rss_mb, end.fds
    if report.rss_start_mb:
        report.rss_growth_percent = round(
            100 * (report.rss_end_mb - report.rss_start_mb) / report.rss_start_mb, 1
        )
    report.gateway_cpu_s = round(cpu_seconds(pid) - cpu_before, 1)
    report.other_cpu_s = round(foreign_ticks() / CLK_TCK - other_before, 1)
    report.outcomes = {k: dict(sorted(v.items())) for k, v in outcomes.items()}
    report.total_requests = sum(sum(v.values()) for v in outcomes.values())
    report.latency = Latency.of(everything)
    report.latency_ok = Latency.of(ok_only)


def print_report(report: SoakReport) -> bool:
    """Prints the summary; returns whether the soak passed."""
    print(f"\ntotal requests (after warm-up): {report.total_requests}")
    print("outcomes by service:")
    unexpected = 0
    for service, counts in report.outcomes.items():
        cells = ", ".join(f"{label} {n}" for label, n in counts.items())
        print(f"  {service:<14} {cells}")
        unexpected += sum(n for label, n in counts.items() if not label.startswith(("ok", "exp")))
    if report.latency is not None and report.latency_ok is not None:
        a, o = report.latency, report.latency_ok
        print(f"latency, all: p50 {a.p50_ms:.2f} ms  p99 {a.p99_ms:.2f} ms  max {a.max_ms:.1f} ms")
        print(f"latency, non-fault: p50 {o.p50_ms:.2f} ms  p99 {o.p99_ms:.2f} ms")
    grew = report.rss_growth_percent > 10
    print(
        f"RSS: {report.rss_start_mb:.1f} MB after the warm-up, {report.rss_end_mb:.1f} MB at the "
        f"end ({report.rss_growth_percent:+.1f}%){'  GROWTH > 10%' if grew else ''}"
    )
    if report.samples:
        rss = [s.rss_mb for s in report.samples]
        print(
            f"RSS samples: min {min(rss):.1f}, median {statistics.median(rss):.1f}, "
            f"max {max(rss):.1f} MB"
        )
    print(f"open descriptors: {report.fds_start} after the warm-up, {report.fds_end} at the end")
    print(f"gateway CPU {report.gateway_cpu_s:.1f} s; other processes {report.other_cpu_s:.1f} s")
    print("\n/metrics (trimmed):")
    for line in report.metrics:
        print(f"  {line}")
    sys.stdout.flush()
    if report.other_cpu_s > 0.05 * max(report.gateway_cpu_s, 0.1):
        print("WARNING: other processes used CPU during the soak", file=sys.stderr)
    if unexpected:
        print(f"WARNING: {unexpected} unexpected outcomes", file=sys.stderr)
    return not grew and not unexpected


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length after warm-up")
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument(
        "--token-ttl", type=int, default=60, help="expires_in of the mock's tokens, seconds"
    )
    parser.add_argument(
        "--gateway-cmd",
        default=GATEWAY_CMD_ADMIN.replace("{workers}", "1"),
        help="gateway command line; {registry}, {port} and {admin} are filled in "
        "(--proxy-timeout 2 is appended)",
    )
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or not 0 <= args.warmup_minutes <= 60:
        parser.error("--minutes must be in (0, 1440] and --warmup-minutes in [0, 60]")
    if not 0 < args.rate <= 10_000 or args.connections < 1 or args.sample_seconds <= 0:
        parser.error("--rate must be in (0, 10000], --connections and --sample-seconds positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    try:
        report = asyncio.run(soak(args))
    except (RuntimeError, OSError) as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 1
    passed = print_report(report)
    write_json(args.json, "soak", asdict(report))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
