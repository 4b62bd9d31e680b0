"""Throughput of the gateway against Go's httputil.ReverseProxy on the same route work.

Run by hand (after `bash bench/setup.sh`), never by the test suite: the numbers only mean
something on an otherwise idle machine. The proxy under test gets one core to itself, while wrk
and the fast upstream share the other; wrk's core can saturate first, so besides wall-clock
req/s each proxy is also scored by requests per CPU-second of its own process, read from
/proc/PID/stat. Only one proxy runs at a time, and the two alternate round by round so that
drift on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = BENCH / ".build" / "bin"
RESULTS = BENCH / "results"
APPGATEWAY = ROOT / ".venv" / "bin" / "appgateway"
ROUTE_PATH = "/bench/basic/item"
USER, PASSWORD = "alice", "s3cret"
CLK_TCK = os.sysconf("SC_CLK_TCK")

DEFAULT_GATEWAY_CMD = (
    f"{APPGATEWAY} serve --registry {{registry}} --proxy-port {{port}} "
    "--proxy-port-compass 0 --admin-port 0 --workers 1 --log-level info"
)

REGISTRY_TEMPLATE = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {{name: bench}}
spec:
  services:
    - id: {service}1
      displayName: {service}
      entries:
        - type: API
          name: {service}
          targetUrl: {target}
          credentials: {{type: Basic, secretName: bench-basic}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-basic, namespace: kyma-system}}
stringData: {{username: {user}, password: {password}}}
"""

# Variables that would change what the processes under test do: an outbound HTTP proxy for the
# gateway's upstream calls, APPGATEWAY_* settings, or Go runtime tuning.
_SCRUBBED_ENV = re.compile(r"^(APPGATEWAY_.*|https?_proxy|no_proxy|GOMAXPROCS|GOGC)$", re.I)


# --------------------------------------------------------------------------- shared helpers
# stream.py imports these, so both benchmarks start processes and registries the same way.


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SCRUBBED_ENV.match(k)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_registry(folder: Path, target: str, service: str = "basic") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = REGISTRY_TEMPLATE.format(service=service, target=target, user=USER, password=PASSWORD)
    (folder / "bench.yaml").write_text(text)
    return folder


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """taskset execs the command, so the PID we get is the proxy's own."""
    return ["taskset", "-c", str(core), *argv]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, limit: int = 4000) -> str:
        self.log.flush()
        data = self.log_path.read_bytes()
        return data[-limit:].decode("utf-8", "replace")


def start(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str]) -> Proc:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    popen = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT
    )
    return Proc(name, popen, log_path, log)


def stop(proc: Proc, timeout: float = 15.0) -> None:
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
    proc.log.close()


def wait_http_ok(
    proc: Proc,
    port: int,
    path: str,
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Polls through the route, not just the port: the registry must be loaded too."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"status {resp.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready on port {port} ({last}):\n{proc.log_tail()}")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants, in case a gateway build runs a worker beneath itself."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree; the comm field may hold spaces, so split after ')'."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def foreign_ticks() -> int:
    """CPU ticks, reaped children included, of every process outside this script's own tree.

    Other work on the machine skews a round; the difference over a round says how much there was.
    """
    ours = set(process_tree(os.getpid()))
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks


def core_busy() -> dict[int, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat, to show which core saturated."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        nums = [int(v) for v in values]
        idle = nums[3] + (nums[4] if len(nums) > 4 else 0)  # idle + iowait
        total = sum(nums[:8])
        out[int(name[3:])] = (total - idle, total)
    return out


def busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float:
    if core not in before or core not in after:
        return float("nan")
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return 100.0 * busy / total if total else float("nan")


# --------------------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if done is None or rps is None or p50 is None or p99 is None:
        raise ValueError(f"unreadable wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_latency_ms(done.group(2) + done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(p50.group(1)),
        p99_ms=_latency_ms(p99.group(1)),
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    core: int, url: str, connections: int, seconds: int, headers: Sequence[str] = ()
) -> WrkResult:
    """`headers`: `Name: value` fields added to every request (wrk -H)."""
    extra = [arg for header in headers for arg in ("-H", header)]
    argv = pinned(
        core,
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Round:
    round: int
    proxy: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_s: float
    req_per_cpu_s: float
    proxy_core_busy: float
    load_core_busy: float
    errors: int
    non_2xx: int
    access_log_lines: int | None
    other_cpu_s: float


@dataclass
class Summary:
    proxy: str
    rps: float
    p50_ms: float
    p99_ms: float
    req_per_cpu_s: float


@dataclass
class Report:
    started: str
    settings: dict[str, object]
    rounds: list[Round] = field(default_factory=list)
    medians: list[Summary] = field(default_factory=list)
    ratio_rps: float | None = None
    ratio_req_per_cpu_s: float | None = None


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: int
    warmup: int
    connections: int
    only: str
    gateway_cmd: str
    proxy_core: int
    load_core: int
    json_path: Path | None


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        stop(proc)


def launch_proxy(name: str, opts: Options, work: Path, upstream_port: int) -> tuple[Proc, int]:
    port = free_port()
    target = f"http://127.0.0.1:{upstream_port}/data"
    if name == "go":
        argv = [
            str(BIN / "goproxy"),
            f"-addr=127.0.0.1:{port}",
            "-app=bench",
            "-service=basic",
            f"-target={target}",
            f"-user={USER}",
            f"-pass={PASSWORD}",
        ]
        env = clean_env(GOMAXPROCS="1")
    else:
        registry = write_registry(work / "registry", target)
        argv = [
            part.format(registry=registry, port=port, target=target)
            for part in shlex.split(opts.gateway_cmd)
        ]
        env = clean_env()
    proc = start(name, pinned(opts.proxy_core, argv), work, env)
    try:
        wait_http_ok(proc, port, ROUTE_PATH)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def measure(name: str, index: int, opts: Options, work: Path, upstream_port: int) -> Round:
    proc, port = launch_proxy(name, opts, work, upstream_port)
    url = f"http://127.0.0.1:{port}{ROUTE_PATH}"
    return timed_round(
        name,
        index,
        proc,
        lambda seconds: run_wrk(opts.load_core, url, opts.connections, seconds),
        warmup=opts.warmup,
        duration=opts.duration,
        proxy_core=opts.proxy_core,
        load_core=opts.load_core,
    )


def timed_round(
    name: str,
    index: int,
    proc: Proc,
    load: Callable[[int], WrkResult],
    *,
    warmup: int,
    duration: int,
    proxy_core: int,
    load_core: int,
) -> Round:
    """One round on a started proxy: warm-up, then `measured`. Stops the proxy."""
    with running(proc):
        if warmup > 0:
            load(warmup)
        out = measured(
            name, index, proc, load, duration=duration, proxy_core=proxy_core, load_core=load_core
        )
    out.access_log_lines = count_access_lines(proc.log_path) if name == "gateway" else None
    proc.log_path.unlink()
    return out


def measured(
    name: str,
    index: int,
    proc: Proc,
    load: Callable[[int], WrkResult],
    *,
    duration: int,
    proxy_core: int,
    load_core: int,
) -> Round:
    """`load(duration)` on a running proxy, with the proxy's CPU, the cores' busy time and
    other processes' CPU measured around it. The proxy keeps running."""
    cpu_before, cores_before, other_before = cpu_seconds(proc.pid), core_busy(), foreign_ticks()
    result = load(duration)
    cpu_after, cores_after, other_after = cpu_seconds(proc.pid), core_busy(), foreign_ticks()
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{name} died during the round:\n{proc.log_tail()}")
    cpu = cpu_after - cpu_before
    return Round(
        round=index,
        proxy=name,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.requests,
        cpu_s=cpu,
        req_per_cpu_s=result.requests / cpu if cpu > 0 else float("nan"),
        proxy_core_busy=busy_percent(cores_before, cores_after, proxy_core),
        load_core_busy=busy_percent(cores_before, cores_after, load_core),
        errors=result.errors,
        non_2xx=result.non_2xx,
        access_log_lines=None,
        other_cpu_s=max(0, other_after - other_before) / CLK_TCK,
    )


def count_access_lines(path: Path) -> int:
    """Proves the access log was on: one `"msg": "request"` line per proxied request."""
    pattern = re.compile(rb'"msg"\s*:\s*"request"')
    count = 0
    with path.open("rb") as log:
        for line in log:
            if pattern.search(line):
                count += 1
    return count


HEADER = (
    f"{'round':>5} {'proxy':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu s':>7} "
    f"{'req/cpu-s':>10} {'core P%':>8} {'core L%':>8} {'errors':>7} {'log lines':>10} "
    f"{'other s':>8}"
)


def format_round(r: Round) -> str:
    errors = r.errors + r.non_2xx
    log_lines = "-" if r.access_log_lines is None else str(r.access_log_lines)
    return (
        f"{r.round:>5} {r.proxy:<8} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
        f"{r.cpu_s:>7.2f} {r.req_per_cpu_s:>10.0f} {r.proxy_core_busy:>8.0f} "
        f"{r.load_core_busy:>8.0f} {errors:>7} {log_lines:>10} {r.other_cpu_s:>8.2f}"
    )


def summarize(rounds: Sequence[Round], proxies: Sequence[str]) -> list[Summary]:
    out = []
    for name in proxies:
        mine = [r for r in rounds if r.proxy == name]
        if mine:
            out.append(
                Summary(
                    proxy=name,
                    rps=statistics.median(r.rps for r in mine),
                    p50_ms=statistics.median(r.p50_ms for r in mine),
                    p99_ms=statistics.median(r.p99_ms for r in mine),
                    req_per_cpu_s=statistics.median(r.req_per_cpu_s for r in mine),
                )
            )
    return out


def proxy_order(only: str, index: int) -> list[str]:
    if only != "both":
        return [only]
    # Alternate who goes first, so neither always inherits the other's after-effects.
    return ["gateway", "go"] if index % 2 else ["go", "gateway"]


def benchmark(opts: Options) -> Report:
    report = Report(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "rounds": opts.rounds,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "connections": opts.connections,
            "wrk_threads": 1,
            "proxy_core": opts.proxy_core,
            "load_core": opts.load_core,
            "gateway_cmd": opts.gateway_cmd,
            "route": ROUTE_PATH,
            "body_bytes": 1024,
        },
    )
    with tempfile.TemporaryDirectory(prefix="appgateway-bench-") as tmp:
        work = Path(tmp)
        upstream_port = free_port()
        upstream = start(
            "upstream",
            pinned(opts.load_core, [str(BIN / "goupstream"), f"-addr=127.0.0.1:{upstream_port}"]),
            work,
            clean_env(),
        )
        with running(upstream):
            wait_http_ok(upstream, upstream_port, "/data")
            print(HEADER, flush=True)
            for index in range(1, opts.rounds + 1):
                for name in proxy_order(opts.only, index):
                    result = measure(name, index, opts, work, upstream_port)
                    report.rounds.append(result)
                    print(format_round(result), flush=True)
    report.medians = summarize(report.rounds, ["gateway", "go"])
    by_name = {s.proxy: s for s in report.medians}
    if "gateway" in by_name and "go" in by_name:
        gw, go = by_name["gateway"], by_name["go"]
        report.ratio_rps = gw.rps / go.rps
        report.ratio_req_per_cpu_s = gw.req_per_cpu_s / go.req_per_cpu_s
    return report


def print_summary(report: Report) -> None:
    print("\nmedians:")
    for s in report.medians:
        print(
            f"  {s.proxy:<8} {s.rps:>9.0f} req/s  p50 {s.p50_ms:.2f} ms  p99 {s.p99_ms:.2f} ms  "
            f"{s.req_per_cpu_s:>9.0f} req/cpu-s"
        )
    if report.ratio_rps is not None and report.ratio_req_per_cpu_s is not None:
        verdict = "met" if min(report.ratio_rps, report.ratio_req_per_cpu_s) >= 1.0 else "NOT met"
        print(
            f"gateway/go: {report.ratio_rps:.2f} wall-clock req/s, "
            f"{report.ratio_req_per_cpu_s:.2f} req per CPU-second (target >= 1.0: {verdict})"
        )
    sys.stdout.flush()
    busy = [r for r in report.rounds if r.other_cpu_s > 0.05 * r.cpu_s]
    if busy:
        print(
            f"WARNING: other processes used CPU during {len(busy)} round(s) ('other s'); "
            "the machine was not idle",
            file=sys.stderr,
        )
    if any(r.errors or r.non_2xx for r in report.rounds):
        print("WARNING: some rounds had socket errors or non-2xx answers", file=sys.stderr)


def json_target(value: str, prefix: str = "run") -> Path:
    if value == "":
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return RESULTS / f"{prefix}-{stamp}.json"
    path = Path(value)
    return path if path.parent != Path(".") else RESULTS / path


def add_proxy_args(parser: argparse.ArgumentParser) -> None:
    """Which proxies run, the gateway's command line and the cores: the comparing scripts'."""
    parser.add_argument("--only", choices=("both", "gateway", "go"), default="both")
    parser.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="gateway command line; {registry}, {port} and {target} are filled in",
    )
    add_core_args(parser)


def add_core_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy-core", type=int, default=0, help="core of the proxy under test")
    parser.add_argument(
        "--load-core", type=int, default=1, help="core of the load generator and the upstream"
    )


def check_cores(parser: argparse.ArgumentParser, *cores: int) -> None:
    allowed = os.sched_getaffinity(0)
    for core in cores:
        if core not in allowed:
            parser.error(f"core {core} is not available (have {sorted(allowed)})")
    if len(set(cores)) != len(cores):
        parser.error("--proxy-core and --load-core must differ")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="also write the results as JSON (a bare name goes to bench/results/)",
    )


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of warm-up per round")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    add_proxy_args(parser)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --connections must be positive")
    check_cores(parser, args.proxy_core, args.load_core)
    return Options(
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        only=args.only,
        gateway_cmd=args.gateway_cmd,
        proxy_core=args.proxy_core,
        load_core=args.load_core,
        json_path=None if args.json is None else json_target(args.json),
    )


def check_tools() -> None:
    missing = [str(p) for p in (BIN / "goupstream", BIN / "goproxy") if not p.exists()]
    missing += [tool for tool in ("wrk", "taskset") if not _on_path(tool)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `bash bench/setup.sh` first")


def _on_path(tool: str) -> bool:
    return any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep) if d)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    check_tools()
    try:
        report = benchmark(opts)
    except (RuntimeError, OSError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"wrote {opts.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
