"""Multi-core scaling: the gateway with --workers 2 on two cores against --workers 1 on one.

Run by hand (after `bash bench/setup.sh`), never by the test suite. On a machine with only two
cores the load generator and the upstream must share a core with the second worker, so the
wall-clock req/s of two workers cannot show a clean 2x. The script therefore measures three
things, per configuration (`w1`: one worker pinned to --proxy-core; `w2`: two workers allowed on
both cores), with the load side always pinned to --load-core:

1. **wrk, closed loop** (`-t1 -c64`): wall-clock req/s and the gateway's requests per CPU-second
   (all processes of its tree, supervisor included). The efficiency w2/w1 of req per CPU-second
   says whether a second worker adds per-request cost (supervisor, shared sockets, lock
   contention): 1.0 means none, so capacity grows with the cores given to the workers.
2. **balance**: the share of CPU each worker used in w2 (from /proc/PID/stat); near 50/50 means
   SO_REUSEPORT spreads connections evenly.
3. **paced, open loop** (paced.py) at a fixed rate, by default 1.2x w1's wrk maximum: one worker
   cannot keep up (unsent requests, latencies grow with the backlog), two should. The load side
   uses CPU on the same cores, so this is the test that is fair to the machine as it is.

The wrk phase also runs the Go reference placed the same way (`go1`: GOMAXPROCS=1 pinned to
--proxy-core; `go2`: GOMAXPROCS=2 on both cores; `--no-go` skips them): whatever its efficiency
loses is the machine's (the shared core, fewer events per wake-up), which tells how much of the
gateway's loss is its own.

Projected capacity on N free cores: N x (w2 req per CPU-second) for the gateway alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from paced import RESULT_HEADER, PacedResult, format_result, paced_run, scenario_mix
from run import (
    CLK_TCK,
    Proc,
    add_json_arg,
    check_cores,
    check_tools,
    cpu_seconds,
    foreign_ticks,
    process_tree,
    stop,
)
from scenarios import (
    GATEWAY_CMD_ADMIN,
    SCENARIOS,
    Pki,
    Scenario,
    Upstream,
    launch,
    make_pki,
    route_path,
    run_wrk_script,
    start_upstream,
    write_json,
)


def member_cpu(pid: int) -> dict[int, float]:
    """utime+stime of each process of the tree, in seconds."""
    out: dict[int, float] = {}
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[member] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


@dataclass
class WrkRound:
    round: int
    config: str
    rps: float
    p99_ms: float
    cpu_s: float
    req_per_cpu_s: float
    worker_share: list[float]  # percent of the tree's CPU per worker process, largest first
    errors: int
    other_cpu_s: float


@dataclass
class PacedRound:
    round: int
    config: str
    result: PacedResult
    cpu_s: float
    other_cpu_s: float


@dataclass
class ScalingReport:
    started: str
    settings: dict[str, object]
    wrk: list[WrkRound] = field(default_factory=list)
    paced_rate: float = 0.0
    paced: list[PacedRound] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


CONFIGS = ("w1", "w2")
# The Go reference placed the same way: GOMAXPROCS=1 pinned to the proxy core, GOMAXPROCS=2 on
# both. What its efficiency loses on this machine is the machine's (the shared core, less
# batching per wake-up), not the gateway's.
GO_CONFIGS = ("go1", "go2")


def config_cores(config: str, args: argparse.Namespace) -> tuple[str, int, str]:
    """(proxy, workers or GOMAXPROCS, taskset core list) of a configuration."""
    proxy = "go" if config.startswith("go") else "gateway"
    if config.endswith("1"):
        return proxy, 1, str(args.proxy_core)
    return proxy, 2, f"{args.proxy_core},{args.load_core}"


def start_config(
    config: str, sc: Scenario, args: argparse.Namespace, work: Path, up: Upstream, pki: Pki
) -> tuple[Proc, int]:
    proxy, workers, cores = config_cores(config, args)
    return launch(
        proxy,
        sc.api,
        work,
        up,
        pki,
        core=cores,
        gateway_cmd=args.gateway_cmd,
        workers=workers,
        go_procs=workers,
    )


def wrk_round(
    config: str,
    index: int,
    sc: Scenario,
    args: argparse.Namespace,
    work: Path,
    up: Upstream,
    pki: Pki,
) -> WrkRound:
    proxy, workers, _ = config_cores(config, args)
    proc, port = start_config(config, sc, args, work, up, pki)
    try:
        url = f"http://127.0.0.1:{port}{route_path(sc.api)}"
        if args.warmup > 0:
            run_wrk_script(args.load_core, url, args.connections, args.warmup, None)
        before, other_before = member_cpu(proc.pid), foreign_ticks()
        result = run_wrk_script(args.load_core, url, args.connections, args.duration, None)
        after, other_after = member_cpu(proc.pid), foreign_ticks()
        if proc.popen.poll() is not None:
            raise RuntimeError(f"gateway died during the round:\n{proc.log_tail()}")
    finally:
        stop(proc)
    proc.log_path.unlink()
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    cpu = sum(used.values())
    # Workers are the processes that did the work; the supervisor idles (a w1 gateway may be
    # one process, then its only member is the worker).
    workers_cpu = sorted(
        (v for pid, v in used.items() if pid != proc.pid or len(used) == 1), reverse=True
    )
    shares = (
        [round(100.0 * v / cpu, 1) for v in workers_cpu[:workers]]
        if cpu > 0 and proxy == "gateway"
        else []
    )
    return WrkRound(
        round=index,
        config=config,
        rps=result.rps,
        p99_ms=result.p99_ms,
        cpu_s=round(cpu, 2),
        req_per_cpu_s=round(result.requests / cpu, 1) if cpu > 0 else float("nan"),
        worker_share=shares,
        errors=result.errors + result.non_2xx,
        other_cpu_s=round(max(0, other_after - other_before) / CLK_TCK, 2),
    )


async def paced_round(
    config: str,
    index: int,
    sc: Scenario,
    args: argparse.Namespace,
    work: Path,
    up: Upstream,
    pki: Pki,
    rate: float,
) -> PacedRound:
    proc, port = await asyncio.to_thread(start_config, config, sc, args, work, up, pki)
    try:
        mix = scenario_mix(sc, port)
        if args.warmup > 0:
            await paced_run(port, mix, rate, args.warmup, args.connections, answer_timeout=10)
        before, other_before = cpu_seconds(proc.pid), foreign_ticks()
        result = await paced_run(
            port, mix, rate, args.duration, args.connections, answer_timeout=10
        )
        after, other_after = cpu_seconds(proc.pid), foreign_ticks()
    finally:
        await asyncio.to_thread(stop, proc)
    proc.log_path.unlink()
    return PacedRound(
        round=index,
        config=config,
        result=result,
        cpu_s=round(after - before, 2),
        other_cpu_s=round(max(0, other_after - other_before) / CLK_TCK, 2),
    )


async def benchmark(args: argparse.Namespace) -> ScalingReport:
    sc = SCENARIOS[args.scenario]
    report = ScalingReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "scenario": sc.name,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "proxy_core": args.proxy_core,
            "load_core": args.load_core,
            "gateway_cmd": args.gateway_cmd,
            "phases": args.phases,
            "go": args.go,
        },
    )
    with tempfile.TemporaryDirectory(prefix="appgateway-scaling-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        up = await asyncio.to_thread(start_upstream, work, args.load_core, size=sc.size, pki=pki)
        try:
            if args.phases in ("both", "wrk"):
                print(
                    f"{'round':>5} {'config':<6} {'req/s':>9} {'p99 ms':>8} {'cpu s':>7} "
                    f"{'req/cpu-s':>10} {'worker CPU %':<14} {'errors':>7} {'other s':>8}"
                )
                wrk_configs = CONFIGS + (GO_CONFIGS if args.go else ())
                for index in range(1, args.rounds + 1):
                    order = wrk_configs if index % 2 else tuple(reversed(wrk_configs))
                    for config in order:
                        w = await asyncio.to_thread(
                            wrk_round, config, index, sc, args, work, up, pki
                        )
                        report.wrk.append(w)
                        share = "/".join(f"{s:.0f}" for s in w.worker_share)
                        print(
                            f"{w.round:>5} {w.config:<6} {w.rps:>9.0f} {w.p99_ms:>8.2f} "
                            f"{w.cpu_s:>7.2f} {w.req_per_cpu_s:>10.0f} {share:<14} "
                            f"{w.errors:>7} {w.other_cpu_s:>8.2f}",
                            flush=True,
                        )
            if args.phases in ("both", "paced"):
                rate = args.rate
                if not rate:
                    w1 = [w.rps for w in report.wrk if w.config == "w1"]
                    if not w1:
                        raise RuntimeError("--phases paced needs --rate")
                    rate = round(args.rate_factor * statistics.median(w1), 1)
                report.paced_rate = rate
                os.sched_setaffinity(0, {args.load_core})
                print(
                    f"\npaced at {rate:.0f} req/s (generator and upstream on core {args.load_core})"
                )
                print(f"{'round':>5} {RESULT_HEADER} {'cpu s':>7} {'other s':>8}")
                for index in range(1, args.rounds + 1):
                    order = CONFIGS if index % 2 else tuple(reversed(CONFIGS))
                    for config in order:
                        p = await paced_round(config, index, sc, args, work, up, pki, rate)
                        report.paced.append(p)
                        print(
                            f"{p.round:>5} {format_result(p.config, p.result)} "
                            f"{p.cpu_s:>7.2f} {p.other_cpu_s:>8.2f}",
                            flush=True,
                        )
        finally:
            await asyncio.to_thread(stop, up.proc)
    report.summary = summarize(report)
    return report


def summarize(report: ScalingReport) -> dict[str, float]:
    out: dict[str, float] = {}
    for config in CONFIGS + GO_CONFIGS:
        mine = [w for w in report.wrk if w.config == config]
        if mine:
            out[f"{config}_rps"] = statistics.median(w.rps for w in mine)
            out[f"{config}_req_per_cpu_s"] = statistics.median(w.req_per_cpu_s for w in mine)
        paced = [p.result for p in report.paced if p.config == config]
        if paced:
            out[f"{config}_paced_done_rps"] = statistics.median(r.achieved_rps for r in paced)
            out[f"{config}_paced_p99_ms"] = statistics.median(r.latency.p99_ms for r in paced)
            out[f"{config}_paced_unsent"] = statistics.median(r.unsent for r in paced)
    if "w1_rps" in out and "w2_rps" in out:
        out["wall_ratio_w2_w1"] = round(out["w2_rps"] / out["w1_rps"], 3)
        out["efficiency_w2_w1"] = round(out["w2_req_per_cpu_s"] / out["w1_req_per_cpu_s"], 3)
    if "go1_rps" in out and "go2_rps" in out:
        out["go_wall_ratio"] = round(out["go2_rps"] / out["go1_rps"], 3)
        out["go_efficiency"] = round(out["go2_req_per_cpu_s"] / out["go1_req_per_cpu_s"], 3)
    return out


def print_summary(report: ScalingReport) -> None:
    s = report.summary
    print()
    if "efficiency_w2_w1" in s:
        print(
            f"wrk: w1 {s['w1_rps']:.0f} req/s, w2 {s['w2_rps']:.0f} req/s "
            f"(wall-clock w2/w1 {s['wall_ratio_w2_w1']:.2f}; the load side shares a core with w2)"
        )
        print(
            f"req per CPU-second: w1 {s['w1_req_per_cpu_s']:.0f}, w2 {s['w2_req_per_cpu_s']:.0f}, "
            f"efficiency w2/w1 {s['efficiency_w2_w1']:.2f} "
            f"(projected: {2 * s['w2_req_per_cpu_s']:.0f} req/s on 2 free cores)"
        )
        if "go_efficiency" in s:
            print(
                f"Go reference placed the same way: GOMAXPROCS=1 {s['go1_rps']:.0f} req/s, "
                f"GOMAXPROCS=2 {s['go2_rps']:.0f} req/s (wall-clock {s['go_wall_ratio']:.2f}); "
                f"req per CPU-second {s['go1_req_per_cpu_s']:.0f} and "
                f"{s['go2_req_per_cpu_s']:.0f}, efficiency {s['go_efficiency']:.2f}"
            )
        shares = [w.worker_share for w in report.wrk if w.config == "w2"]
        if shares:
            print(f"w2 worker CPU split per round: {shares}")
    if "w1_paced_done_rps" in s and "w2_paced_done_rps" in s:
        print(
            f"paced at {report.paced_rate:.0f} req/s: w1 completed {s['w1_paced_done_rps']:.0f}/s "
            f"(p99 {s['w1_paced_p99_ms']:.1f} ms, unsent {s['w1_paced_unsent']:.0f}), "
            f"w2 {s['w2_paced_done_rps']:.0f}/s (p99 {s['w2_paced_p99_ms']:.1f} ms, "
            f"unsent {s['w2_paced_unsent']:.0f})"
        )
    busy = [w for w in report.wrk if w.other_cpu_s > 0.05 * w.cpu_s]
    busy_p = [p for p in report.paced if p.other_cpu_s > 0.05 * max(p.cpu_s, 0.01)]
    if busy or busy_p:
        print(
            f"WARNING: other processes used CPU during {len(busy) + len(busy_p)} round(s) "
            "('other s'); the machine was not idle",
            file=sys.stderr,
        )
    if any(w.errors for w in report.wrk) or any(p.result.errors for p in report.paced):
        print("WARNING: some rounds had errors", file=sys.stderr)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="basic")
    parser.add_argument("--phases", choices=("both", "wrk", "paced"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="paced rate (default: see below)")
    parser.add_argument(
        "--rate-factor", type=float, default=1.2, help="paced rate = factor x w1's wrk req/s"
    )
    parser.add_argument(
        "--gateway-cmd",
        default=GATEWAY_CMD_ADMIN.replace("{admin}", "0"),
        help="gateway command line; {registry}, {port}, {target} and {workers} are filled in",
    )
    parser.add_argument(
        "--no-go",
        dest="go",
        action="store_false",
        help="skip the Go reference's GOMAXPROCS=1 and 2 in the wrk phase",
    )
    parser.add_argument("--proxy-core", type=int, default=0, help="w1's core")
    parser.add_argument("--load-core", type=int, default=1, help="the load side's core")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be positive")
    check_cores(parser, args.proxy_core, args.load_core)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    try:
        report = asyncio.run(benchmark(args))
    except (RuntimeError, OSError) as exc:
        print(f"scaling benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    write_json(args.json, "scaling", asdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
