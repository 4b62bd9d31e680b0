"""What `--caller-auth kubernetes` costs a gateway process, against the real kube-apiserver.

Issue 16: with decisions cached, requests per CPU-second with `--caller-auth kubernetes` must
be at least 0.9x those of the same route with `--caller-auth off`; and the latency of a first
call, whose decision is not cached (one TokenReview and one SubjectAccessReview), is reported.

Run by hand (after `bash bench/setup.sh`, `make native`), never by the test suite:

    .venv/bin/python bench/caller_load.py                 # 5 rounds x 8 s + 50 cold calls, ~3 min
    .venv/bin/python bench/caller_load.py --rounds 3 --cold 200 --json

It starts the test suite's cluster (tests/kube.py: etcd and kube-apiserver 1.20 on loopback,
pinned here to the load core), applies deploy/caller-auth/auth-delegator.yaml, an Application
`bench` whose Basic API points at goupstream's `/verify/basic` (so a broken route answers
non-2xx), a ServiceAccount with `use` on that Application, and takes a token for it from the
TokenRequest API. Two gateways (`serve --kubernetes`, run.py's flags) run side by side on the
proxy core, one with `--caller-auth kubernetes` and one with `off`; wrk and the upstream share
the load core. Each round loads one gateway, then the other (the order alternates), with the
same `Proxy-Authorization: Bearer <token>` (the `off` gateway drops it unread), and scores each
by requests per CPU-second of its process tree. Every round checks that all answers were 2xx
and, from /metrics, that the kubernetes gateway made no review during it (the `reviews`
column: caller cache misses; one per `--caller-cache-ttl`, 300 s, is expected).

The cold part then calls the kubernetes gateway once with each of `--cold` fresh tokens, each
for its own ServiceAccount (so neither the token nor the identity's access is cached), timed
client-side over one keep-alive connection; then the same call again (both cached); then with
a second token of the same account (a TokenReview only: the access is cached per identity);
and the same call through the `off` gateway for reference.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from run import (
    APPGATEWAY,
    HEADER,
    PASSWORD,
    ROOT,
    USER,
    Proc,
    Round,
    Summary,
    WrkResult,
    add_core_args,
    add_json_arg,
    check_cores,
    check_tools,
    clean_env,
    cpu_seconds,
    format_round,
    free_port,
    json_target,
    measured,
    pinned,
    process_tree,
    run_wrk,
    running,
    start,
    summarize,
    wait_http_ok,
)
from scenarios import start_upstream
from soak import scrape_metrics

if str(ROOT) not in sys.path:  # tests/kube.py: the suite's cluster
    sys.path.insert(0, str(ROOT))

from tests.kube import (  # noqa: E402
    DEPLOY,
    NAMESPACE,
    SA_TOKEN,
    ApiError,
    KubeCluster,
    api_service,
    application,
    load_manifests,
    secret,
    shared_cluster,
)

APP, SERVICE = "bench", "basic"
ROUTE = f"/{APP}/{SERVICE}/item"
AUDIENCE = "appgateway"
CALLER = "bench-caller"
ROLE = "bench-use"
MODES = {"kube": "kubernetes", "off": "off"}
"""Round label (run.py's 8-column proxy field) -> --caller-auth."""
RBAC = "rbac.authorization.k8s.io/v1"
TARGET = 0.9


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: int
    warmup: int
    connections: int
    proxy_core: int
    load_core: int
    cold: int
    json_path: Path | None


@dataclass
class Gateway:
    name: str
    proc: Proc
    port: int
    admin: int


@dataclass
class Sample:
    """One measured run of one gateway."""

    round: Round
    background_cpu_s: float
    """CPU of kube-apiserver, etcd and the idle gateway during the run."""
    reviews: int | None
    """Caller cache misses during the run (kubernetes only): each one is a review."""


@dataclass
class Latency:
    label: str
    p50_ms: float
    p99_ms: float
    samples_ms: list[float]


@dataclass
class Report:
    started: str
    settings: dict[str, object]
    samples: list[Sample] = field(default_factory=list)
    medians: list[Summary] = field(default_factory=list)
    ratio_rps: float | None = None
    ratio_req_per_cpu_s: float | None = None
    ratio_paired: float | None = None
    """The median of each round's kube/off req per CPU-second: the two runs of a round are
    back to back, so a machine whose speed drifts between rounds moves both."""
    met: bool | None = None
    cold: list[Latency] = field(default_factory=list)
    cold_misses: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the cluster


def service_account(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NAMESPACE},
    }


def user_of(account: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{account}"


def set_up_cluster(cluster: KubeCluster, upstream_url: str, accounts: Sequence[str]) -> None:
    """The gateway's review rights, the Application and its Secret, and `use` on it for each
    account (one ClusterRole, one ClusterRoleBinding)."""
    for doc in load_manifests(DEPLOY / "caller-auth" / "auth-delegator.yaml"):
        cluster.apply(doc)
    cluster.apply(secret("bench-basic", {"username": USER, "password": PASSWORD}))
    creds = {"type": "Basic", "secretName": "bench-basic"}
    cluster.apply(
        application(APP, [api_service(SERVICE, upstream_url, id="basic1", credentials=creds)])
    )
    for account in accounts:
        cluster.apply(service_account(account))
    cluster.apply(
        {
            "apiVersion": RBAC,
            "kind": "ClusterRole",
            "metadata": {"name": ROLE},
            "rules": [
                {
                    "apiGroups": ["applicationconnector.kyma-project.io"],
                    "resources": ["applications"],
                    "resourceNames": [APP],
                    "verbs": ["use"],
                }
            ],
        }
    )
    cluster.apply(
        {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
                for account in accounts
            ],
        }
    )
    # A gateway that asked before the binding reached the authorizer would keep the "no" for
    # 10 s; ask the API server directly (as admin) until every account may use the Application.
    for account in accounts:
        cluster.wait_for(functools.partial(may_use, cluster, user_of(account)), 30)


def may_use(cluster: KubeCluster, user: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "resourceAttributes": {
                "group": "applicationconnector.kyma-project.io",
                "resource": "applications",
                "verb": "use",
                "name": APP,
            },
        },
    }
    doc = cluster.call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(doc.get("status", {}).get("allowed"))


def kube_pids() -> list[int]:
    """kube-apiserver and etcd: shared_cluster() started them as our children."""
    out = []
    for pid in process_tree(os.getpid()):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in ("kube-apiserver", "etcd"):
            out.append(pid)
    return out


def pin_threads(pid: int, core: int) -> None:
    """Every thread of a running (Go) process; threads made later inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass  # the thread ended meanwhile


# --------------------------------------------------------------------------- gateways


def launch_gateway(name: str, kubeconfig: Path, work: Path, core: int) -> Gateway:
    """run.py's gateway flags, on the cluster, with an admin port for /metrics."""
    port, admin = free_port(), free_port()
    argv = [
        str(APPGATEWAY),
        "serve",
        "--kubernetes",
        "--kubeconfig",
        str(kubeconfig),
        "--proxy-port",
        str(port),
        "--proxy-port-compass",
        "0",
        "--admin-port",
        str(admin),
        "--workers",
        "1",
        "--log-level",
        "info",
        "--caller-auth",
        MODES[name],
    ]
    proc = start(name, pinned(core, argv), work, clean_env())
    return Gateway(name, proc, port, admin)


_LOOKUP = re.compile(
    r'^appgateway_cache_lookups_total\{cache="(caller_token|caller_access)",'
    r'result="miss"\}\s+(\S+)$'
)


def caller_misses(gateway: Gateway) -> dict[str, int]:
    """Misses of the two caller caches so far: each one was a review sent to the API server."""
    out = {"caller_token": 0, "caller_access": 0}
    for line in scrape_metrics(gateway.admin):
        match = _LOOKUP.match(line)
        if match:
            out[match.group(1)] = int(float(match.group(2)))
    return out


def call_ms(conn: http.client.HTTPConnection, token: str) -> float:
    """One GET of the route, from sending to the last byte of the answer, in ms."""
    started = time.perf_counter()
    conn.request("GET", ROUTE, headers={"Proxy-Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    took = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"cold path: status {response.status} (expected 200)")
    return took


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank: of 50 samples, p99 is the largest."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(label: str, samples: list[float]) -> Latency:
    return Latency(label, percentile(samples, 0.5), percentile(samples, 0.99), samples)


# --------------------------------------------------------------------------- the benchmark

SAMPLE_HEADER = f"{HEADER} {'bg s':>6} {'reviews':>8}"


def format_sample(sample: Sample) -> str:
    reviews = "-" if sample.reviews is None else str(sample.reviews)
    return f"{format_round(sample.round)} {sample.background_cpu_s:>6.2f} {reviews:>8}"


def measure(
    gateway: Gateway, idle: Gateway, index: int, token: str, opts: Options, kube: Sequence[int]
) -> Sample:
    url = f"http://127.0.0.1:{gateway.port}{ROUTE}"
    headers = [f"Proxy-Authorization: Bearer {token}"]

    def load(seconds: int) -> WrkResult:
        return run_wrk(opts.load_core, url, opts.connections, seconds, headers)

    if opts.warmup > 0:
        load(opts.warmup)
    misses_before = caller_misses(gateway)
    background = [idle.proc.pid, *kube]
    bg_before = sum(cpu_seconds(pid) for pid in background)
    result = measured(
        gateway.name,
        index,
        gateway.proc,
        load,
        duration=opts.duration,
        proxy_core=opts.proxy_core,
        load_core=opts.load_core,
    )
    bg_after = sum(cpu_seconds(pid) for pid in background)
    misses_after = caller_misses(gateway)
    if result.non_2xx:
        raise RuntimeError(
            f"{gateway.name}: {result.non_2xx} non-2xx answers in round {index}: the bench "
            f"is wrong (407/403: the token or the grant)\n{gateway.proc.log_tail()}"
        )
    os.truncate(gateway.proc.log_path, 0)  # an access line per request: keep /tmp small
    reviews = None
    if gateway.name == "kube":
        reviews = sum(misses_after.values()) - sum(misses_before.values())
    return Sample(result, bg_after - bg_before, reviews)


def cold_path(
    cluster: KubeCluster, kube: Gateway, off: Gateway, accounts: Sequence[str]
) -> tuple[list[Latency], dict[str, int]]:
    # Two tokens per account. 1.20's tokens carry no unique id: two requested within the same
    # second with the same lifetime are the same string, so the second one lives 1 s longer.
    tokens = [
        (
            cluster.service_account_token(account, 3600, audiences=[AUDIENCE]),
            cluster.service_account_token(account, 3601, audiences=[AUDIENCE]),
        )
        for account in accounts
    ]
    cold: list[float] = []
    cached: list[float] = []
    known: list[float] = []
    plain: list[float] = []
    before = caller_misses(kube)
    to_kube = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=30)
    to_off = http.client.HTTPConnection("127.0.0.1", off.port, timeout=30)
    try:
        call_ms(to_kube, tokens[0][0])  # a warm connection (this one reviews an account too)
        call_ms(to_off, tokens[0][0])
        for first, second in tokens[1:]:
            time.sleep(0.02)
            cold.append(call_ms(to_kube, first))
            cached.append(call_ms(to_kube, first))
            known.append(call_ms(to_kube, second))
            plain.append(call_ms(to_off, first))
    finally:
        to_kube.close()
        to_off.close()
    after = caller_misses(kube)
    misses = {key: after[key] - before[key] for key in after}
    expected = {"caller_token": 2 * len(tokens) - 1, "caller_access": len(tokens)}
    if misses != expected:  # each cold call must have made its reviews, and no other call
        raise RuntimeError(f"cold path: caller cache misses {misses}, expected {expected}")
    return [
        latency("cold: TokenReview + SubjectAccessReview", cold),
        latency("cached: the same call again", cached),
        latency("new token, known caller: TokenReview", known),
        latency("caller-auth off (reference)", plain),
    ], misses


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
            "cold_calls": opts.cold,
            "route": ROUTE,
            "body_bytes": 1024,
        },
    )
    cluster = shared_cluster()  # stopped by its own atexit hook
    kube = kube_pids()
    for pid in kube:
        pin_threads(pid, opts.load_core)
    # One more account for the warm connection of the cold part.
    cold_accounts = [f"bench-cold-{n}" for n in range(opts.cold + 1)] if opts.cold else []
    with tempfile.TemporaryDirectory(prefix="appgateway-bench-") as tmp:
        work = Path(tmp)
        upstream = start_upstream(work, opts.load_core)
        with running(upstream.proc):
            set_up_cluster(cluster, upstream.url("/verify/basic"), [CALLER, *cold_accounts])
            token = cluster.service_account_token(CALLER, audiences=[AUDIENCE])
            report.settings["token_bytes"] = len(token)
            kubeconfig = cluster.kubeconfig(work / "kubeconfig", token=SA_TOKEN)
            gateways = {
                name: launch_gateway(name, kubeconfig, work, opts.proxy_core) for name in MODES
            }
            with running(gateways["kube"].proc), running(gateways["off"].proc):
                auth = {"Proxy-Authorization": f"Bearer {token}"}
                for gateway in gateways.values():
                    # Until the Application is read and (kube) the decision is cached.
                    wait_http_ok(gateway.proc, gateway.port, ROUTE, 60, auth)
                print(SAMPLE_HEADER, flush=True)
                for index in range(1, opts.rounds + 1):
                    order = ["kube", "off"] if index % 2 else ["off", "kube"]
                    for name in order:
                        other = gateways["off" if name == "kube" else "kube"]
                        sample = measure(gateways[name], other, index, token, opts, kube)
                        report.samples.append(sample)
                        print(format_sample(sample), flush=True)
                if cold_accounts:
                    report.cold, report.cold_misses = cold_path(
                        cluster, gateways["kube"], gateways["off"], cold_accounts
                    )
    report.medians = summarize([s.round for s in report.samples], list(MODES))
    by_name = {s.proxy: s for s in report.medians}
    if "kube" in by_name and "off" in by_name:
        report.ratio_rps = by_name["kube"].rps / by_name["off"].rps
        report.ratio_req_per_cpu_s = by_name["kube"].req_per_cpu_s / by_name["off"].req_per_cpu_s
        report.met = report.ratio_req_per_cpu_s >= TARGET
        per_round = {(s.round.round, s.round.proxy): s.round.req_per_cpu_s for s in report.samples}
        report.ratio_paired = statistics.median(
            per_round[(n, "kube")] / per_round[(n, "off")] for n in range(1, opts.rounds + 1)
        )
    return report


def print_summary(report: Report) -> None:
    print("\nmedians:")
    for s in report.medians:
        print(
            f"  {s.proxy:<8} {s.rps:>9.0f} req/s  p50 {s.p50_ms:.2f} ms  p99 {s.p99_ms:.2f} ms  "
            f"{s.req_per_cpu_s:>9.0f} req/cpu-s"
        )
    if report.ratio_req_per_cpu_s is not None and report.ratio_rps is not None:
        verdict = "met" if report.met else "NOT met"
        print(
            f"kubernetes/off: {report.ratio_req_per_cpu_s:.3f} req per CPU-second "
            f"(target >= {TARGET}: {verdict}), {report.ratio_rps:.3f} wall-clock req/s; "
            f"round by round: median {report.ratio_paired:.3f}"
        )
    if report.cold:
        count = len(report.cold[0].samples_ms)
        print(f"\nfirst calls, {count} fresh tokens of as many ServiceAccounts (client-side):")
        for row in report.cold:
            print(f"  {row.label:<42} p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms")
        misses = ", ".join(f"{k} {v}" for k, v in report.cold_misses.items())
        print(f"  caller cache misses meanwhile: {misses}")
    sys.stdout.flush()
    rounds = [s.round for s in report.samples]
    if any(r.other_cpu_s > 0.05 * r.cpu_s for r in rounds):
        print(
            "WARNING: other processes used CPU during some rounds ('other s'); "
            "the machine was not idle",
            file=sys.stderr,
        )
    if any(s.background_cpu_s > 0.05 * s.round.cpu_s for s in report.samples):
        print("WARNING: the cluster or the idle gateway was busy ('bg s')", file=sys.stderr)
    if any(r.errors for r in rounds):
        print("WARNING: some rounds had socket errors", file=sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--duration", type=int, default=8, help="whole seconds per run")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--cold", type=int, default=50, metavar="N", help="first calls with fresh tokens (0: none)"
    )
    add_core_args(parser)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --connections must be positive")
    if args.cold < 0:
        parser.error("--cold must be 0 or more")
    check_cores(parser, args.proxy_core, args.load_core)
    return Options(
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        proxy_core=args.proxy_core,
        load_core=args.load_core,
        cold=args.cold,
        json_path=None if args.json is None else json_target(args.json, "caller-load"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    check_tools()
    try:
        report = benchmark(opts)
    except (RuntimeError, OSError, TimeoutError, ApiError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"wrote {opts.json_path}")
    return 0 if report.met is not False else 1


if __name__ == "__main__":
    sys.exit(main())
