"""Shared in-process fixtures: a recording raw HTTP server, a raw client and a registry folder.

Both ends work on raw bytes on the test's own event loop, so a test sees exactly what crossed
the wire (header order, case, repeats and framing) and can script misbehaviour that a real HTTP
library would refuse to produce: stalls, early answers, garbage, closing at the worst moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest

from appgateway.connections import ConnectionTracker
from appgateway.errors import CallerGone
from appgateway.exchange import Exchange
from appgateway.server import Handler as ExchangeHandler
from appgateway.server import serve
from appgateway.upstream import Upstream
from tests.kube import FaultProxy, KubeCluster, Objects, shared_cluster

pytest_plugins = ["tests.pipeline"]  # the in-process pipeline (make_rig, rig)

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


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may leave loopback, trust the developer's CA bundle or read their settings."""
    for name in PROXY_AND_TLS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("APPGATEWAY_"):
            monkeypatch.delenv(name)


# -- wire helpers -----------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as a test server read it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    conn: int
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


@dataclass
class Response:
    """One response as a test client read it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    def json(self) -> object:
        return json.loads(self.body)


def _fields(lines: Sequence[bytes]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        out.append((name, value.strip(" \t")))
    return out


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _framing(headers: Sequence[tuple[str, str]]) -> tuple[bool, int | None]:
    chunked = any(n.lower() == "transfer-encoding" and "chunked" in v.lower() for n, v in headers)
    lengths = [int(v) for n, v in headers if n.lower() == "content-length"]
    return chunked, (lengths[0] if lengths else None)


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    """Read one response; a body without framing is read until EOF (close-delimited)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    _version, status_text, *reason = lines[0].decode("latin-1").split(" ", 2)
    status = int(status_text)
    headers = _fields(lines[1:])
    chunked, length = _framing(headers)
    if method == "HEAD" or status < 200 or status in (204, 304):
        body = b""
    elif chunked:
        body = await read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = await reader.read()
    return Response(status, reason[0] if reason else "", headers, body, head)


def response(
    status: int,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    length: bool = True,
) -> bytes:
    """A raw response; `length=False` leaves the framing to the caller's headers."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Whatever"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{n}: {v}" for n, v in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def echo_body(seen: Seen) -> bytes:
    return json.dumps(
        {
            "method": seen.method,
            "target": seen.target,
            "headers": [[n, v] for n, v in seen.headers],
            "body": seen.body.decode("latin-1"),
        }
    ).encode()


# -- the recording server ---------------------------------------------------------------------


@dataclass
class Connection:
    """One accepted connection of a `RawServer`; reads record into the server's list."""

    server: RawServer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int

    async def head(self) -> Seen | None:
        """Read and record a request head (None at EOF); the body is left unread."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head[:-4].split(b"\r\n")
        method, target, _version = lines[0].decode("latin-1").split(" ", 2)
        seen = Seen(method, target, _fields(lines[1:]), self.index)
        self.server.requests.append(seen)
        return seen

    async def body(self, seen: Seen) -> None:
        chunked, length = _framing(seen.headers)
        if chunked:
            seen.body = await read_chunked(self.reader)
        elif length:
            seen.body = await self.reader.readexactly(length)

    async def request(self) -> Seen | None:
        seen = await self.head()
        if seen is not None:
            await self.body(seen)
        return seen

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_eof(self) -> None:
        """Discard whatever the peer sends until it closes."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


Respond = Callable[[Seen], Awaitable[bytes | None]]
"""Answer one request with raw bytes; None closes the connection without an answer."""

Handler = Callable[[Connection], Awaitable[None]]


async def echo(seen: Seen) -> bytes:
    return response(200, echo_body(seen), [("Content-Type", "application/json")])


class RawServer:
    """A loopback HTTP/1.1 server on the test's loop that records every request it reads."""

    def __init__(
        self,
        respond: Respond = echo,
        *,
        handler: Handler | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.respond = respond
        self.handler = handler or self._keep_alive
        self.ssl_context = ssl_context
        self.requests: list[Seen] = []
        self.errors: list[BaseException] = []
        self.connections = 0
        self.closed_connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, ssl=self.ssl_context, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = Connection(self, reader, writer, self.connections)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as exc:  # a broken test script: fail the test at teardown
            self.errors.append(exc)
        except asyncio.CancelledError:
            # Only close() cancels. Ending normally matters: Python 3.11's start_server
            # callback calls task.exception() on the finished task, which raises for a
            # cancelled one.
            pass
        finally:
            self.closed_connections += 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _keep_alive(self, conn: Connection) -> None:
        await serve_requests(conn, self.respond)


async def serve_requests(conn: Connection, respond: Respond) -> None:
    """Answer requests on `conn` until EOF, a None answer, or a `Connection: close` answer."""
    while True:
        seen = await conn.request()
        if seen is None:
            return
        data = await respond(seen)
        if data is None:
            return
        await conn.send(data)
        head = data.partition(b"\r\n\r\n")[0].lower()
        if b"\r\nconnection: close" in head:
            return


ServerFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def servers() -> AsyncIterator[ServerFactory]:
    """`await servers(respond, handler=..., ssl_context=...)` starts a RawServer."""
    started: list[RawServer] = []

    async def start(
        respond: Respond = echo,
        *,
        handler: Handler | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawServer:
        server = RawServer(respond, handler=handler, ssl_context=ssl_context)
        started.append(server)
        return await server.start()

    yield start
    for server in started:
        await server.close()
    errors = [error for server in started for error in server.errors]
    assert errors == [], f"test server handler failed: {errors!r}"


# -- the raw client ---------------------------------------------------------------------------


@dataclass
class Client:
    """A raw caller connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, method: str = "GET", within: float = 5.0) -> Response:
        return await asyncio.wait_for(read_response(self.reader, method=method), within)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (("Host", "gateway"),),
        body: bytes | None = None,
    ) -> Response:
        await self.send(request_bytes(method, target, headers, body))
        return await self.response(method=method)

    async def eof(self, within: float = 5.0) -> bytes:
        """Everything until the peer closes."""
        return await asyncio.wait_for(self.reader.read(), within)

    def close(self) -> None:
        self.writer.transport.abort()


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (("Host", "gateway"),),
    body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


ClientFactory = Callable[[int], Awaitable[Client]]


@pytest.fixture
async def clients() -> AsyncIterator[ClientFactory]:
    """`await clients(port)` opens a raw connection, aborted at teardown."""
    opened: list[Client] = []

    async def connect(port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = Client(reader, writer)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()
    await asyncio.sleep(0)


# -- registry folders -------------------------------------------------------------------------

APP_YAML = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata:
  name: shop
spec:
  services:
    - id: o1
      displayName: Orders
      entries:
        - type: API
          name: Orders Entry
          targetUrl: {base}/api
    - id: b1
      displayName: Basic
      entries:
        - type: API
          name: basic
          targetUrl: {base}/basic-api
          credentials: {{type: Basic, secretName: shop-basic}}
    - id: p1
      displayName: Params
      entries:
        - type: API
          name: params
          targetUrl: {base}/params-api?fixed=1
          requestParametersSecretName: shop-params
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-basic, namespace: kyma-system}}
stringData: {{username: alice, password: s3cret}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-params}}
stringData:
  headers: '{{"X-Api-Key":["k-123"],"X-Multi":["a","b"]}}'
  queryParameters: '{{"lang":["EN"]}}'
"""
"""Application `shop`: `orders` (no auth, host label shop-o1), `basic` (alice/s3cret) and
`params` (request parameters), all pointing below `{base}`."""

BASIC_ALICE = "Basic YWxpY2U6czNjcmV0"


def write_registry(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.yaml").write_text(APP_YAML.format(base=base))
    return folder


@pytest.fixture
def registry_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty registry folder; tests call `write_registry` with their upstream's base URL."""
    folder = tmp_path / "registry"
    folder.mkdir()
    yield folder


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The target-side client, closed after the test."""
    client = Upstream(asyncio.get_running_loop())
    yield client
    client.close()
    await asyncio.sleep(0)


# -- the caller-side server with small handlers (test_server.py, test_exchange.py) --------


@dataclass
class Listening:
    port: int
    tracker: ConnectionTracker


Listen = Callable[..., Awaitable[Listening]]
TaskHandler = Callable[[Exchange], Awaitable[None]]


def in_task(handler: TaskHandler) -> ExchangeHandler:
    """Runs a coroutine handler in a task that owns the exchange, as the gateway's relay
    runs its prelude: the caller leaving cancels it, and it ends the exchange when done."""

    def start(ex: Exchange) -> None:
        async def run() -> None:
            try:
                await handler(ex)
            except (asyncio.CancelledError, CallerGone):
                ex.abort()
            finally:
                ex.done()

        task = asyncio.get_running_loop().create_task(run())

        def cancel() -> None:
            task.cancel()

        ex.on_lost = cancel

    return start


async def write(ex: Exchange, data: bytes) -> None:
    """Send and, when the caller's buffer is full, wait until it takes more."""
    ex.send(data)
    if ex.conn.writing_paused:
        writable = asyncio.get_running_loop().create_future()
        ex.on_writable = lambda: writable.set_result(None)
        await writable


@pytest.fixture
async def listen() -> AsyncIterator[Listen]:
    """`await listen(handler, request_timeout=..., idle_timeout=...)` serves on 127.0.0.1:0."""
    started: list[tuple[asyncio.Server, ConnectionTracker]] = []

    async def start(
        handler: TaskHandler | ExchangeHandler,
        *,
        request_timeout: float = 5.0,
        idle_timeout: float = 5.0,
        body_min_rate: int = 0,
        keepalive_timeout: float | None = None,
        plain: bool = False,
    ) -> Listening:
        """`plain`: the handler is a plain function (the server's own interface)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        tracker = ConnectionTracker()
        server = await serve(
            asyncio.get_running_loop(),
            handler if plain else in_task(handler),  # type: ignore[arg-type]
            sock,
            request_timeout=request_timeout,
            idle_timeout=idle_timeout,
            tracker=tracker,
            body_min_rate=body_min_rate,
            keepalive_timeout=keepalive_timeout,
        )
        started.append((server, tracker))
        return Listening(sock.getsockname()[1], tracker)

    yield start
    for server, tracker in started:
        server.close()
        tracker.abort_all()
        await server.wait_closed()
    await asyncio.sleep(0.01)  # let cancelled handler tasks finish


# -- the suite's real Kubernetes API server (tests/kube.py), started on first use -----------


@pytest.fixture(scope="session")
def kube() -> KubeCluster:
    return shared_cluster()


@pytest.fixture
def objects(kube: KubeCluster) -> Iterator[Objects]:
    """Objects created through it are removed after the test."""
    tracker = Objects(kube)
    yield tracker
    tracker.cleanup()


@pytest.fixture
async def proxy(kube: KubeCluster) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of it."""
    server = await FaultProxy(kube).start()
    yield server
    await server.close()
