"""Peak memory of the gateway while 200 MB stream through it, up and then down.

Run by hand (after `bash bench/setup.sh`), never by the test suite. The spec promises about one
chunk per direction per request, so the gateway's peak RSS must stay near its idle size however
large the body is. The receiving end of each transfer reads at a capped rate (--rate), so a
gateway without back-pressure would have to hold the difference in memory and show it here.
The gateway runs on one core; this script (streaming upstream and client, one event loop) on the
other. A thread samples VmRSS of the gateway's process tree from /proc every few milliseconds;
VmHWM, the kernel's own high-water mark, is read after each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from run import (
    DEFAULT_GATEWAY_CMD,
    Proc,
    add_json_arg,
    clean_env,
    free_port,
    json_target,
    pinned,
    process_tree,
    start,
    stop,
    wait_http_ok,
    write_registry,
)

MIB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # 64 KiB of a known pattern, so both ends can check a CRC
READ_SIZE = 64 * 1024
PHASE_TIMEOUT = 600.0


# --------------------------------------------------------------------------- /proc sampling


def status_kib(pid: int, key: str) -> int:
    """A `VmRSS:`-style line of /proc/PID/status, in KiB; 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_kib(pid: int, key: str) -> int:
    return sum(status_kib(member, key) for member in process_tree(pid))


class RssSampler:
    """Polls in a thread: the event loop is busy moving bytes and would sample unevenly."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        # Walking all of /proc for the tree costs far more than a sample: do it now and then.
        members: list[int] = []
        for tick in range(sys.maxsize):
            if self._stop.is_set():
                return
            if tick % 100 == 0:
                members = process_tree(self.pid)
            rss = sum(status_kib(member, "VmRSS") for member in members)
            self.peak_kib = max(self.peak_kib, rss)
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.peak_kib = tree_kib(self.pid, "VmRSS")

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- minimal HTTP/1.1


@dataclass
class Head:
    first_line: str
    headers: dict[str, str]


async def read_head(reader: asyncio.StreamReader) -> Head:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Head(lines[0], headers)


class Throttle:
    """Caps a receiver at `rate` bytes per second (0: no cap)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.seen = 0

    async def account(self, n: int) -> None:
        self.seen += n
        if self.rate > 0:
            ahead = self.seen / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def read_body(reader: asyncio.StreamReader, head: Head, rate: float) -> tuple[int, int]:
    """Consumes a Content-Length or chunked body; returns (bytes, crc32)."""
    throttle = Throttle(rate)
    count, crc = 0, 0

    async def take(n: int) -> None:
        nonlocal count, crc
        while n > 0:
            data = await reader.read(min(n, READ_SIZE))
            if not data:
                raise ConnectionError(f"body cut short after {count} bytes")
            n -= len(data)
            count += len(data)
            crc = zlib.crc32(data, crc)
            await throttle.account(len(data))

    if "chunked" in head.headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent here
                return count, crc
            await take(size)
            await reader.readexactly(2)
    await take(int(head.headers.get("content-length", "0")))
    return count, crc


def pattern_crc(size: int) -> int:
    crc = 0
    for offset in range(0, size, len(BLOCK)):
        crc = zlib.crc32(BLOCK[: min(len(BLOCK), size - offset)], crc)
    return crc


async def write_body(writer: asyncio.StreamWriter, size: int, chunked: bool) -> None:
    """Sends `size` pattern bytes, waiting on drain() so this side never outruns the socket."""
    for offset in range(0, size, len(BLOCK)):
        block = BLOCK[: min(len(BLOCK), size - offset)]
        if chunked:
            writer.write(b"%x\r\n" % len(block) + block + b"\r\n")
        else:
            writer.write(block)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def body_framing(size: int, chunked: bool) -> bytes:
    return b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % size


# --------------------------------------------------------------------------- the upstream


class StreamUpstream:
    """`POST .../up` swallows a body and answers its size and CRC; `GET .../down/N` sends N bytes.

    The receiving end of an upload reads at the capped rate, so the gateway faces a fast
    sender and a slow receiver in both phases.
    """

    def __init__(self, rate: float, chunked: bool) -> None:
        self.rate = rate
        self.chunked = chunked

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await read_head(reader)
            method, target, _ = head.first_line.split(" ", 2)
            parts = target.split("?", 1)[0].rstrip("/").split("/")
            if method == "POST" and parts[-1] == "up":
                count, crc = await read_body(reader, head, self.rate)
                body = json.dumps({"bytes": count, "crc32": crc}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            elif method == "GET" and len(parts) >= 2 and parts[-2] == "down":
                size = int(parts[-1])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Connection: close\r\n" + body_framing(size, self.chunked) + b"\r\n"
                )
                await write_body(writer, size, self.chunked)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


# --------------------------------------------------------------------------- the client


@dataclass
class Phase:
    name: str
    bytes: int
    seconds: float
    mb_per_s: float
    peak_rss_mb: float
    vmhwm_after_mb: float
    status: int
    ok: bool


@dataclass
class StreamReport:
    started: str
    settings: dict[str, object]
    baseline_rss_mb: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    peak_rss_mb: float = 0.0


async def exchange(
    port: int, request_head: bytes, upload: int, chunked: bool, rate: float
) -> tuple[int, int, int, bytes]:
    """One request on a fresh connection: returns (status, body bytes, body crc32, small body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head)
        if upload:
            await write_body(writer, upload, chunked)
        await writer.drain()
        head = await read_head(reader)
        status = int(head.first_line.split(" ", 2)[1])
        if upload:
            length = int(head.headers.get("content-length", "0"))
            small = await reader.readexactly(length)
            return status, length, zlib.crc32(small), small
        count, crc = await read_body(reader, head, rate)
        return status, count, crc, b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def mb(kib: int) -> float:
    return kib / 1024


async def run_phases(
    port: int, pid: int, size: int, rate: float, chunked: bool, report: StreamReport
) -> None:
    expected_crc = pattern_crc(size)
    base = b"/bench/stream"
    with RssSampler(pid) as sampler:
        for name in ("upload", "download"):
            sampler.reset()
            began = time.monotonic()
            host = f"Host: 127.0.0.1:{port}\r\n".encode()
            if name == "upload":
                head = b"POST %s/up HTTP/1.1\r\n" % base + host
                head += b"Content-Type: application/octet-stream\r\n"
                head += body_framing(size, chunked) + b"\r\n"
                status, _, _, answer = await asyncio.wait_for(
                    exchange(port, head, size, chunked, rate), PHASE_TIMEOUT
                )
                seen = json.loads(answer) if status == 200 else {}
                moved = int(seen.get("bytes", 0))
                ok = status == 200 and moved == size and seen.get("crc32") == expected_crc
            else:
                head = b"GET %s/down/%d HTTP/1.1\r\n" % (base, size) + host + b"\r\n"
                status, moved, crc, _ = await asyncio.wait_for(
                    exchange(port, head, 0, chunked, rate), PHASE_TIMEOUT
                )
                ok = status == 200 and moved == size and crc == expected_crc
            seconds = time.monotonic() - began
            await asyncio.sleep(0.05)  # one more sample after the last byte
            phase = Phase(
                name=name,
                bytes=moved,
                seconds=round(seconds, 3),
                mb_per_s=round(moved / MIB / seconds, 1),
                peak_rss_mb=round(mb(sampler.peak_kib), 1),
                vmhwm_after_mb=round(mb(tree_kib(pid, "VmHWM")), 1),
                status=status,
                ok=ok,
            )
            report.phases.append(phase)
            print(
                f"{phase.name:<9} {phase.bytes / MIB:>7.1f} MiB in {phase.seconds:>6.2f} s "
                f"({phase.mb_per_s:>6.1f} MiB/s)  status {phase.status}  "
                f"{'ok' if ok else 'MISMATCH'}  peak VmRSS {phase.peak_rss_mb:.1f} MB  "
                f"VmHWM {phase.vmhwm_after_mb:.1f} MB",
                flush=True,
            )


async def benchmark(args: argparse.Namespace) -> StreamReport:
    size = int(args.size_mb * MIB)
    rate = args.rate * MIB
    report = StreamReport(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            "size_mib": args.size_mb,
            "receiver_rate_mib_s": args.rate,
            "chunked": args.chunked,
            "gateway_core": args.gateway_core,
            "client_core": args.client_core,
            "gateway_cmd": args.gateway_cmd,
        },
    )
    os.sched_setaffinity(0, {args.client_core})
    upstream = StreamUpstream(rate, args.chunked)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="appgateway-stream-") as tmp:
        work = Path(tmp)
        target = f"http://127.0.0.1:{upstream_port}/s"
        registry = write_registry(work / "registry", target, service="stream")
        port = free_port()
        argv = [
            part.format(registry=registry, port=port, target=target)
            for part in shlex.split(args.gateway_cmd)
        ]
        gateway: Proc = start("gateway", pinned(args.gateway_core, argv), work, clean_env())
        try:
            await asyncio.to_thread(wait_http_ok, gateway, port, "/bench/stream/down/1024")
            report.baseline_rss_mb = round(mb(tree_kib(gateway.pid, "VmRSS")), 1)
            print(f"gateway pid {gateway.pid}, baseline VmRSS {report.baseline_rss_mb:.1f} MB")
            await run_phases(port, gateway.pid, size, rate, args.chunked, report)
            # The kernel's per-thread RSS counters can make VmHWM lag a sample by a few pages.
            hwm = mb(tree_kib(gateway.pid, "VmHWM"))
            report.peak_rss_mb = round(max([hwm] + [p.peak_rss_mb for p in report.phases]), 1)
            if gateway.popen.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{gateway.log_tail()}")
        finally:
            await asyncio.to_thread(stop, gateway)
    server.close()
    await server.wait_closed()
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=float, default=200.0, help="MiB per direction")
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="receiver cap in MiB/s, so the gateway must hold back a faster sender (0: none)",
    )
    parser.add_argument("--chunked", action="store_true", help="chunked bodies both ways")
    parser.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="gateway command line; {registry}, {port} and {target} are filled in",
    )
    parser.add_argument("--gateway-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.size_mb <= 0 or args.rate < 0:
        parser.error("--size-mb must be positive and --rate not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(benchmark(args))
    except (RuntimeError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        print(f"stream benchmark failed: {exc!r}", file=sys.stderr)
        return 1
    grew = report.peak_rss_mb - report.baseline_rss_mb
    print(
        f"peak RSS {report.peak_rss_mb:.1f} MB, baseline {report.baseline_rss_mb:.1f} MB, "
        f"growth {grew:.1f} MB while streaming {args.size_mb:g} MiB each way"
    )
    if args.json is not None:
        path = json_target(args.json, "stream")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2) + "\n")
        print(f"wrote {path}")
    return 0 if all(p.ok for p in report.phases) else 1


if __name__ == "__main__":
    sys.exit(main())
