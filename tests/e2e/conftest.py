"""End-to-end fixtures: a recording mock external API, a gateway subprocess and a raw client.

The client and the mock both work on raw bytes, so the tests see exactly what crossed the wire:
http.client and aiohttp add or normalise headers, which would hide the gateway's own choices.
The mock runs its own event loop in a thread, so the tests themselves stay plain and blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from tests.e2e.credentials_api import CredentialsAPI, Pki, make_pki

REPO = Path(__file__).resolve().parents[2]

PROXY_AND_TLS_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
BASIC_ALICE = "Basic YWxpY2U6czNjcmV0"  # alice:s3cret, behaviour.md §5.2


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may leave loopback or trust a CA bundle from the developer's shell."""
    for name in PROXY_AND_TLS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# Deterministic payloads, generated on the fly on both sides of a transfer.

_BLOCK = random.Random(0x5EED).randbytes(65536)
CHUNK = len(_BLOCK)


def pattern_chunks(total: int) -> Iterator[bytes]:
    """`total` bytes in 64 KiB chunks; each chunk starts with its index, so a lost, repeated or
    reordered chunk changes the hash."""
    index = 0
    sent = 0
    while sent < total:
        size = min(CHUNK, total - sent)
        yield (index.to_bytes(8, "big") + _BLOCK[8:])[:size]
        sent += size
        index += 1


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(total):
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Mock external API.


@dataclass
class Recorded:
    """One request as the mock external API received it: the raw target and header list."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    conn: int
    body: bytes = b""
    body_len: int = 0
    sha256: str = ""
    complete: bool = False
    """The whole body arrived (Content-Length or the last chunk)."""
    done: bool = False
    """The mock finished reading the body, completely or not."""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    def names(self) -> list[str]:
        return [n.lower() for n, _ in self.headers]


ENDPOINTS = frozenset(
    (
        "status",
        "redirect",
        "hang",
        "interim",
        "download",
        "slow",
        "stall",
        "upload",
        "basic",
        "auth401",
        "delay",
        "respheaders",
    )
)


def _find_endpoint(path: str) -> tuple[str, list[str]]:
    """The first path segment naming an endpoint, and the segments after it.

    Endpoints are found anywhere in the path, so a target URL with any base path still
    reaches them; every other path is echo.
    """
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment in ENDPOINTS:
            return segment, segments[index + 1 :]
    return "echo", []


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Whatever"


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class MockUpstream:
    """The "external API": an asyncio server in its own thread that records every request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn_ids = itertools.count(1)
        self._auth401: dict[str, int] = {}

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> MockUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the transports' connection_lost callbacks run

    def reset(self) -> None:
        self.requests.clear()
        self._auth401.clear()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # assertions helpers -----------------------------------------------------------------------

    def matching(self, needle: str) -> list[Recorded]:
        return [r for r in list(self.requests) if needle in r.target]

    def wait_for(self, needle: str, count: int = 1, timeout: float = 10.0) -> list[Recorded]:
        """Requests whose target contains `needle`, once at least `count` have been read."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.matching(needle) if r.done]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def only(self, needle: str) -> Recorded:
        found = self.wait_for(needle)
        assert len(found) == 1, f"expected one upstream request matching {needle!r}: {found}"
        return found[0]

    # server -------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = next(self._conn_ids)
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                rec = _parse_head(head, conn)
                self.requests.append(rec)
                try:
                    keep = await self._dispatch(rec, reader, writer)
                finally:
                    rec.done = True
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            # Only `stop()` cancels. Ending normally matters: Python 3.11's start_server
            # callback calls task.exception() on the finished task, which raises (and logs an
            # error) for a cancelled one.
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_body(self, rec: Recorded, reader: asyncio.StreamReader) -> None:
        parts: list[bytes] = []
        digest = hashlib.sha256()
        async for chunk in _body_chunks(reader, rec):
            digest.update(chunk)
            rec.body_len += len(chunk)
            parts.append(chunk)
        rec.body = b"".join(parts)
        rec.sha256 = digest.hexdigest()
        rec.complete = True

    async def _dispatch(
        self, rec: Recorded, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        name, args = _find_endpoint(rec.path)
        head_only = rec.method == "HEAD"
        keep = all(v.lower().strip() != "close" for v in rec.values("connection"))

        async def respond(
            status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
        ) -> bool:
            all_headers = list(headers)
            if status >= 200 and status not in (204, 304):
                all_headers.append(("Content-Length", str(len(body))))
            writer.write(_head(status, all_headers))
            if not head_only and status >= 200 and status not in (204, 304):
                writer.write(body)
            await writer.drain()
            return keep

        if name == "upload":
            digest = hashlib.sha256()
            async for chunk in _body_chunks(reader, rec):
                digest.update(chunk)
                rec.body_len += len(chunk)
            rec.sha256 = digest.hexdigest()
            rec.complete = True
            answer = {"length": rec.body_len, "sha256": rec.sha256}
            return await respond(
                200, [("Content-Type", "application/json")], json.dumps(answer).encode()
            )

        await self._read_body(rec, reader)
        query = parse_qs(rec.target.split("?", 1)[1] if "?" in rec.target else "")

        if name == "status":
            code = int(args[0])
            if code >= 500:
                extra = [("Content-Type", "text/plain"), ("X-Mock", "1")]
                extra.append(("Target-System-Status", "stale"))
                return await respond(code, extra, f"upstream says {code}".encode())
            if code == 304:
                return await respond(code, [("ETag", '"v1"'), ("X-Mock", "1")])
            return await respond(code, [("X-Mock", "1")], f"status {code}".encode())
        if name == "redirect":
            location = query.get("location", [""])[0]
            return await respond(int(args[0]), [("Location", location)], b"moved")
        if name in ("hang", "stall"):
            if name == "stall":
                sent = int(args[0])
                writer.write(_head(200, [("Content-Length", str(sent + 1_000_000))]))
                writer.write(b"s" * sent)
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), 60)  # until the gateway gives up
            return False
        if name == "interim":
            for interim in args:
                writer.write(_head(int(interim), [("X-Interim", interim)]))
                await writer.drain()
                await asyncio.sleep(0.05)
            return await respond(200, [("Content-Type", "text/plain")], b"after interim")
        if name == "download":
            total = int(args[0])
            writer.write(
                _head(
                    200,
                    [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))],
                )
            )
            if not head_only:
                for chunk in pattern_chunks(total):
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
            return keep
        if name == "slow":
            count, interval = int(args[0]), float(args[1])
            writer.write(_head(200, [("Transfer-Encoding", "chunked")]))
            for _ in range(count):
                writer.write(b"3e8\r\n" + b"w" * 1000 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(interval)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return keep
        if name == "respheaders":
            relayed = [
                ("Set-Cookie", "a=1; Path=/"),
                ("X-Keep", "yes"),
                ("Set-Cookie", "b=2; HttpOnly"),
                ("Connection", "X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-T"),
                ("Upgrade", "h2c"),
            ]
            return await respond(200, relayed, b"headers")
        if name == "basic" and rec.value("authorization") != BASIC_ALICE:
            return await respond(401, [("WWW-Authenticate", 'Basic realm="mock"')], b"who?")
        if name == "auth401":
            seen = self._auth401.get(args[0], 0)
            self._auth401[args[0]] = seen + 1
            if seen == 0:
                return await respond(401, [("WWW-Authenticate", "Bearer")], b"denied")
        if name == "delay":
            await asyncio.sleep(float(args[0]))
        echo = {
            "method": rec.method,
            "target": rec.target,
            "headers": [[n, v] for n, v in rec.headers],
            "body": rec.body.decode("latin-1"),
            "body_len": rec.body_len,
        }
        return await respond(200, [("Content-Type", "application/json")], json.dumps(echo).encode())


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None


def _parse_head(head: bytes, conn: int) -> Recorded:
    lines = head[:-4].split(b"\r\n")
    method, target, _version = lines[0].decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip(" \t")))
    return Recorded(method=method, target=target, headers=headers, conn=conn)


async def _body_chunks(reader: asyncio.StreamReader, rec: Recorded) -> AsyncIterator[bytes]:
    codings = ",".join(rec.values("transfer-encoding")).lower()
    if "chunked" in codings:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, 65536))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                yield data
            await reader.readexactly(2)
    lengths = rec.values("content-length")
    remaining = int(lengths[0]) if lengths else 0
    while remaining:
        data = await reader.read(min(remaining, 65536))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(data)
        yield data


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[MockUpstream]:
    server = MockUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(upstream_server: MockUpstream) -> MockUpstream:
    """The session's mock API with its request log emptied for this test."""
    upstream_server.reset()
    return upstream_server


@pytest.fixture(scope="session")
def credentials_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A server CA, a client CA, a rogue CA of the same name, and leaves of each."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def credentials_api(
    credentials_pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CredentialsAPI]:
    """The token, CSRF and protected-resource mock (tests/e2e/credentials_api.py)."""
    server = CredentialsAPI(credentials_pki, tmp_path_factory.mktemp("credentials-api")).start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Registry documents.

Doc = dict[str, Any]


def application(name: str, services: Sequence[Doc], *, encode_url: bool | None = None) -> Doc:
    spec: Doc = {"services": list(services)}
    if encode_url is not None:
        spec["encodeUrl"] = encode_url
    return {
        "apiVersion": "applicationconnector.kyma-project.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name},
        "spec": spec,
    }


def service(
    display_name: str, entries: Sequence[Doc], *, id: str | None = None, name: str | None = None
) -> Doc:
    doc: Doc = {"displayName": display_name, "entries": list(entries)}
    if id is not None:
        doc["id"] = id
    if name is not None:
        doc["name"] = name
    return doc


def api(
    target: str,
    *,
    name: str = "api",
    credentials: Doc | None = None,
    params: str | None = None,
) -> Doc:
    doc: Doc = {"type": "API", "name": name, "targetUrl": target}
    if credentials is not None:
        doc["credentials"] = credentials
    if params is not None:
        doc["requestParametersSecretName"] = params
    return doc


def secret(
    name: str,
    *,
    string_data: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
) -> Doc:
    doc: Doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "kyma-system"},
    }
    if string_data is not None:
        doc["stringData"] = dict(string_data)
    if data is not None:
        doc["data"] = dict(data)
    return doc


class _NoAliasDumper(yaml.SafeDumper):
    """Writes an object that appears twice out twice: the gateway refuses YAML aliases, which
    PyYAML would otherwise write for it."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def write_manifest(folder: Path, filename: str, docs: Sequence[Doc] | str) -> Path:
    """Write a manifest atomically, so the watcher never reads half a file."""
    text = (
        docs
        if isinstance(docs, str)
        else yaml.dump_all(list(docs), Dumper=_NoAliasDumper, sort_keys=False)
    )
    path = folder / filename
    temporary = folder / f".{filename}.tmp"
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


# --------------------------------------------------------------------------------------------
# The gateway process.


class Gateway:
    """`python -m appgateway serve` on ephemeral ports, with its JSON log lines collected."""

    def __init__(
        self, registry: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.registry = registry
        self.args = list(args)
        self.env = dict(env or {})
        """Set on top of `gateway_environment()`, e.g. SSL_CERT_FILE for a test CA."""
        self.logs: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "appgateway",
            "serve",
            "--registry",
            str(self.registry),
            "--proxy-port",
            "0",
            "--proxy-port-compass",
            "0",
            "--admin-port",
            "0",
            *self.args,
        ]

    def start(self, timeout: float = 20.0) -> Gateway:
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**gateway_environment(), **self.env},
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not {"proxy", "compass", "admin"} <= self.ports.keys():
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None or remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
        if not {"proxy", "compass", "admin"} <= self.ports.keys():
            self.close()
            raise RuntimeError(
                f"gateway did not start (exit {self.proc.returncode}):\n" + self.stderr_text()
            )
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.raw_lines.append(text)
                try:
                    line = json.loads(text)
                except ValueError:
                    line = None
                if isinstance(line, dict):
                    self.logs.append(line)
                    if line.get("msg") == "listening":
                        listener = str(line.get("listener"))
                        self.ports.setdefault(listener, int(line["port"]))
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def proxy_port(self) -> int:
        return self.ports["proxy"]

    @property
    def compass_port(self) -> int:
        return self.ports["compass"]

    @property
    def admin_port(self) -> int:
        return self.ports["admin"]

    def stderr_text(self) -> str:
        with self._changed:
            return "\n".join(self.raw_lines[-200:])

    def access_lines(self) -> list[dict[str, Any]]:
        with self._changed:
            return [line for line in self.logs if line.get("msg") == "request"]

    def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.logs:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.1))

    def rss_peak_kb(self) -> int:
        """Peak resident set size (VmHWM) of the gateway process."""
        return self._status_kb("VmHWM:")

    def rss_kb(self) -> int:
        """Resident set size (VmRSS) of the gateway process now."""
        return self._status_kb("VmRSS:")

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc status")

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the exit status."""
        self.sigterm()
        return self.wait(timeout)

    def close(self) -> None:
        """Kill if still running and release the pipe; safe to call twice."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def gateway_environment() -> dict[str, str]:
    """This environment without proxies, CA overrides or APPGATEWAY_* settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in PROXY_AND_TLS_VARIABLES and not key.startswith("APPGATEWAY_")
    }


GatewayFactory = Callable[..., Gateway]


@contextlib.contextmanager
def gateway_factory_for(folder: Path) -> Iterator[GatewayFactory]:
    """Start gateways on registry folders under `folder`; all are killed on exit."""
    started: list[Gateway] = []
    counter = itertools.count()

    def make(docs: Sequence[Doc] = (), args: Sequence[str] = (), *, start: bool = True) -> Gateway:
        registry = folder / f"registry{next(counter)}"
        registry.mkdir()
        if docs:
            write_manifest(registry, "apps.yaml", docs)
        gateway = Gateway(registry, args)
        started.append(gateway)
        return gateway.start() if start else gateway

    try:
        yield make
    finally:
        for gateway in started:
            gateway.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """`make(docs, args)` starts a gateway on a fresh registry folder holding `docs`."""
    with gateway_factory_for(tmp_path) as make:
        yield make


# --------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: sends exactly the bytes asked for.


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    interim: list[int] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    def json(self) -> Any:
        return json.loads(self.body)


class ConnectionClosed(Exception):
    """The peer closed the connection before a complete message."""


def build_request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    host: str | None = None,
) -> bytes:
    """Request bytes with only the given headers, plus Host (unless given or `host` is "")
    and Content-Length when there is a body without framing."""
    names = {n.lower() for n, _ in headers}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names and host != "":
        lines.append(f"Host: {host or 'gateway.test'}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Client:
    """One TCP connection to a listener, reading responses by hand."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.port = port
        self._buf = bytearray()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        host: str | None = None,
    ) -> Response:
        if host is None:
            host = f"127.0.0.1:{self.port}"
        self.send(build_request(method, target, headers, body, host=host))
        return self.read_response(method)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionClosed(bytes(self._buf[:200]))
        self._buf += data

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            self._fill()

    def _exact(self, size: int, sink: Callable[[bytes], None] | None) -> bytes:
        out = bytearray()
        while size:
            if not self._buf:
                self._fill()
            take = bytes(self._buf[:size])
            del self._buf[: len(take)]
            size -= len(take)
            if sink is None:
                out += take
            else:
                sink(take)
        return bytes(out)

    def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        """One response head, interim or final."""
        status_line = self._line().decode("latin-1")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip(" \t")))
        return int(status), (reason[0] if reason else ""), headers

    def read_response(
        self, method: str = "GET", sink: Callable[[bytes], None] | None = None
    ) -> Response:
        """The final response; interim 1xx heads are collected in `.interim`."""
        interim: list[int] = []
        while True:
            status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        response = Response(status, reason, headers, interim=interim)
        if method == "HEAD" or status in (101, 204, 304):
            return response
        codings = ",".join(response.values("transfer-encoding")).lower()
        if "chunked" in codings:
            parts: list[bytes] = []
            while True:
                size = int(self._line().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exact(size, sink))
                assert self._line() == b""
            response.body = b"".join(parts)
        elif (length := response.header("content-length")) is not None:
            response.body = self._exact(int(length), sink)
        else:
            response.body = self.read_to_eof()
        return response

    def read_to_eof(self) -> bytes:
        """Everything until the peer closes (a reset counts as closing)."""
        out = bytearray(self._buf)
        self._buf.clear()
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(out)
            if not data:
                return bytes(out)
            out += data

    def closed_within(self, timeout: float) -> bool:
        """True if the peer closes within `timeout`; bytes sent before closing are ignored."""
        self.sock.settimeout(timeout)
        try:
            self.read_to_eof()
        except TimeoutError:
            return False
        return True


def request(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    host: str | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection."""
    with Client(port, timeout) as client:
        return client.request(method, target, headers, body, host=host)


def error_body(status: int, message: str) -> bytes:
    """A gateway error body as behaviour.md §11 spells it."""
    text = json.dumps({"code": status, "error": message}, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode() + b"\n"


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until `check()` first held, or None if it never did within `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)
