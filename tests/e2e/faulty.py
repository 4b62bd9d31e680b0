"""Misbehaving targets for the fault tests, on raw sockets with one blocking thread each.

A fault is exactly the bytes, the silence or the reset written here: an HTTP library would
tidy up the very mistakes the gateway has to survive. Every server records what reached it
and when its peer (the gateway) went away, so the tests can tell "closed" from "leaked".
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

POLL = 0.05
"""How often a blocked socket call looks at the stop flag."""


class PeerGone(Exception):
    """The gateway closed or reset the connection (or the server is stopping)."""


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    conn: int
    index: int
    """0 for the first request on its connection, 1 for the next, ..."""
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None


class Malformed(Exception):
    """The gateway sent something that is not an HTTP/1.1 request."""


class RawConnection:
    """One accepted connection with blocking helpers that notice the peer leaving."""

    def __init__(self, sock: socket.socket, ident: int, server: RawServer) -> None:
        self.sock = sock
        self.id = ident
        self.server = server
        self.count = 0
        self.sent = 0
        self.opened = time.monotonic()
        self.gone_at: float | None = None
        """When a read or write first saw the peer close or reset."""
        self._buf = bytearray()
        sock.settimeout(POLL)

    def _gone(self) -> PeerGone:
        if self.gone_at is None:
            self.gone_at = time.monotonic()
        return PeerGone()

    def _recv(self) -> bytes:
        while True:
            if self.server.stopping:
                raise PeerGone()
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                raise self._gone() from None
            if not data:
                raise self._gone()
            return data

    def read_head(self) -> RawRequest | None:
        """The next request head; None when the peer closes cleanly between requests."""
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            try:
                self._buf += self._recv()
            except PeerGone:
                if self._buf:
                    raise
                return None
        head = bytes(self._buf[:end])
        del self._buf[: end + 4]
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3 or parts[2] != "HTTP/1.1" or not parts[1]:
            raise Malformed(lines[0])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise Malformed(line)
            headers.append((name, value.strip(" \t")))
        request = RawRequest(parts[0], parts[1], headers, self.id, self.count)
        self.count += 1
        request.body = self._read_body(request)
        return request

    def _exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._buf += self._recv()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._buf += self._recv()
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _read_body(self, request: RawRequest) -> bytes:
        if "chunked" in ",".join(request.values("transfer-encoding")).lower():
            parts: list[bytes] = []
            while size := int(self._line().split(b";", 1)[0], 16):
                parts.append(self._exact(size))
                self._line()
            while self._line():
                pass
            return b"".join(parts)
        length = request.value("content-length")
        return self._exact(int(length)) if length else b""

    def send(self, data: bytes) -> None:
        """Write all of `data`; raises PeerGone as soon as the peer stops taking it."""
        view = memoryview(data)
        while view:
            if self.server.stopping:
                raise PeerGone()
            try:
                n = self.sock.send(view)
            except TimeoutError:
                continue
            except OSError:
                raise self._gone() from None
            self.sent += n
            view = view[n:]

    def wait_gone(self) -> None:
        """Read and drop everything until the peer leaves: a target that never answers."""
        while True:
            self._recv()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Handler = Callable[[RawConnection], None]


class RawServer:
    """A TCP listener on 127.0.0.1 running `handler` in a thread per connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        """Server-side TLS: the same faults, written inside a TLS session."""
        self.connections: list[RawConnection] = []
        self.requests: list[RawRequest] = []
        self.malformed: list[bytes] = []
        self.stopping = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"

    def start(self) -> RawServer:
        if not self._acceptor.is_alive():
            self._acceptor.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget the requests; connections stay known, as the gateway may reuse them."""
        with self._lock:
            self.requests.clear()
            self.malformed.clear()

    def matching(self, needle: str) -> list[RawRequest]:
        with self._lock:
            return [r for r in self.requests if needle in r.target]

    def connection_of(self, request: RawRequest) -> RawConnection:
        with self._lock:
            return next(c for c in self.connections if c.id == request.conn)

    def record(self, request: RawRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _accept(self) -> None:
        ids = 0
        while not self.stopping:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            ids += 1
            conn = RawConnection(sock, ids, self)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            with self._lock:
                self.connections.append(conn)
                self._threads.append(thread)
            thread.start()

    def _run(self, conn: RawConnection) -> None:
        try:
            if self.tls is not None:
                conn.sock.settimeout(5)
                try:
                    conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
                except (OSError, ssl.SSLError):
                    return
                conn.sock.settimeout(POLL)
            self.handler(conn)
        except PeerGone:
            pass
        except Malformed as exc:
            with self._lock:
                self.malformed.append(exc.args[0] if exc.args else b"")
        finally:
            conn.sock.close()


# --------------------------------------------------------------------------------------------
# Responses.


def response(status: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """A complete response with Content-Length."""
    lines = [f"HTTP/1.1 {status} Whatever", *(f"{n}: {v}" for n, v in headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


OK = response(200, [("Content-Type", "text/plain")], b"ok")
OK_HEAD = OK[:-2]


# --------------------------------------------------------------------------------------------
# The fault server: the first path segment naming a fault decides what happens.

FaultFn = Callable[[RawConnection, RawRequest, list[str]], bool]
"""Handles one request; True keeps the connection for the next one."""

MIB = 1024 * 1024


def _ok(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(OK)
    return True


def _reset_head(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
    time.sleep(0.1)  # let the gateway read the partial head before the reset
    conn.reset()
    return False


def _reset_body(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"b" * 1000)
    time.sleep(0.2)  # the gateway relays the head and the first bytes
    conn.reset()
    return False


def _reset_chunked(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"c" * 1000)
    conn.send(b"\r\n")
    time.sleep(0.2)
    conn.reset()
    return False


def _garbage(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(b"\x16\x03\x01\x02\x00 this is not HTTP at all \xff\xfe\r\n\r\n")
    return False


def _huge_header(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """One header whose value is `args[0]` MiB long."""
    conn.send(b"HTTP/1.1 200 OK\r\nX-Huge: ")
    piece = b"h" * 65536
    for _ in range(int(args[0]) * 16):
        conn.send(piece)
    conn.send(b"\r\nContent-Length: 2\r\n\r\nok")
    return False


def _many_headers(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """`args[0]` MiB of 1 KiB header fields."""
    conn.send(b"HTTP/1.1 200 OK\r\n")
    value = b"m" * 1000
    for index in range(int(args[0]) * 1024):
        conn.send(b"X-M%07d: %s\r\n" % (index, value))
    conn.send(b"Content-Length: 2\r\n\r\nok")
    return False


def _slow_head(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """A status line, then one byte of a header every 100 ms for 10 s."""
    conn.send(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100):
        conn.send(b"X")
        time.sleep(0.1)
    conn.send(b": y\r\nContent-Length: 2\r\n\r\nok")
    return False


def _endless(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """A body of a terabyte: only the gateway closing the connection ends it."""
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    piece = b"e" * 65536
    while True:
        conn.send(piece)


def _close_after(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """Offer keep-alive, then close right after the answer."""
    conn.send(OK)
    return False


def _drop_next(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """Offer keep-alive; close the connection, unanswered, on its next request."""
    if req.index > 0:
        return False
    conn.send(OK)
    return True


def _hang(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.wait_gone()
    return False


FORGED = response(200, [("X-Forged", "1")], b"FORGED")
"""What a hostile target glues behind its real answer, hoping it is read as the next one."""


def _glued(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """A complete answer and a second response in the same write; keep-alive offered, so a
    gateway that pools the connection would read FORGED as the answer to its next request.
    (To a HEAD, even "first" is surplus: a HEAD answer has no body.)"""
    conn.send(response(200, [("X-First", "1")], b"first") + FORGED)
    return True


def _trailing_garbage(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(response(200, [("X-First", "1")], b"first") + b"\x00\x01garbage\r\n\r\n")
    return True


def _bodyless_surplus(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """A 204 (no body by definition) followed by body-like bytes and a second response."""
    conn.send(b"HTTP/1.1 204 No Content\r\nX-First: 1\r\n\r\nsurplus" + FORGED)
    return True


def _trailers(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """A chunked body whose trailer section names fields a caller must never see as headers."""
    conn.send(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer-Secret\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer-Secret: t1\r\nSet-Cookie: evil=1\r\n\r\n"
    )
    return True


def _te_gzip(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """`Transfer-Encoding: gzip` without chunked: the body runs until the connection closes
    (RFC 9112 §6.3), and it is still gzip-coded."""
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + GZIP_BODY)
    return False


GZIP_BODY = bytes(range(256)) * 40 + b"0\r\n\r\n" + b"\x1f\x8b-the-end"
"""Arbitrary bytes, with a chunked terminator inside: nothing may be taken for framing."""


def _close_delimited(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """No Content-Length, not chunked: the body ends when the connection does. `args[0]`
    says how: `notify` (TLS close_notify first), `fin` (a bare TCP FIN)."""
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"d" * 10000)
    time.sleep(0.2)
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket) and args[:1] == ["notify"]:
        conn.sock = sock.unwrap()
    else:
        sock.shutdown(socket.SHUT_WR)  # a TLS socket sends no close_notify here
    time.sleep(0.2)
    return False


def _reason_del(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """An unregistered status (its reason phrase would be relayed) with a DEL in the reason."""
    conn.send(b"HTTP/1.1 299 Fine\x7fX\r\nContent-Length: 2\r\n\r\nok")
    return True


HUGE_LOCATION = "/" + "../" * 340_000
"""1 MB: a quadratic dot-segment removal spends seconds on it."""


def _huge_location(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(response(302, [("Location", HUGE_LOCATION)]))
    return True


def _status(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    body = json.dumps({"error": "server_error", "status": args[0]}).encode()
    conn.send(response(int(args[0]), [("Content-Type", "application/json")], body))
    return True


TOKEN_BODIES: dict[str, bytes] = {
    "badjson": b'{"access_token": "tok-SECRET-1", ',
    "noaccess": json.dumps(
        {"token_type": "bearer", "expires_in": 60, "id": "tok-SECRET-2"}
    ).encode(),
    "emptyaccess": json.dumps({"access_token": "", "expires_in": 60}).encode(),
    "crlf": json.dumps(
        {"access_token": "tok-SECRET-3\r\nX-Injected: 1", "expires_in": 60}
    ).encode(),
}


def _token_body(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    conn.send(response(200, [("Content-Type", "application/json")], TOKEN_BODIES[args[0]]))
    return True


def _redirect(conn: RawConnection, req: RawRequest, args: list[str]) -> bool:
    """302 to `/stolen` on the loopback port `args[0]`."""
    location = f"http://127.0.0.1:{args[0]}/stolen"
    conn.send(response(302, [("Location", location), ("X-Csrf-Token", "csrf-SECRET")], b""))
    return True


FAULTS: dict[str, FaultFn] = {
    "ok": _ok,
    "reset-head": _reset_head,
    "reset-body": _reset_body,
    "reset-chunked": _reset_chunked,
    "garbage": _garbage,
    "huge-header": _huge_header,
    "many-headers": _many_headers,
    "slow-head": _slow_head,
    "endless": _endless,
    "close-after": _close_after,
    "drop-next": _drop_next,
    "hang": _hang,
    "status": _status,
    "glued": _glued,
    "trailing-garbage": _trailing_garbage,
    "bodyless-surplus": _bodyless_surplus,
    "trailers": _trailers,
    "te-gzip": _te_gzip,
    "close-delimited": _close_delimited,
    "reason-del": _reason_del,
    "huge-location": _huge_location,
    "token-body": _token_body,
    "redirect": _redirect,
}


def _find_fault(path: str) -> tuple[FaultFn, list[str]]:
    segments = path.split("/")
    for index, segment in enumerate(segments):
        fault = FAULTS.get(segment)
        if fault is not None:
            return fault, segments[index + 1 :]
    return _ok, []


def serve_faults(conn: RawConnection) -> None:
    while (req := conn.read_head()) is not None:
        conn.server.record(req)
        fault, args = _find_fault(req.path)
        if not fault(conn, req, args):
            return


def serve_ok(conn: RawConnection) -> None:
    """A well-behaved target: records each request and answers 200 `ok`, keeping alive."""
    while (req := conn.read_head()) is not None:
        conn.server.record(req)
        conn.send(OK_HEAD if req.method == "HEAD" else OK)


def fault_server(tls: ssl.SSLContext | None = None) -> RawServer:
    return RawServer(serve_faults, tls).start()


def recorder() -> RawServer:
    return RawServer(serve_ok).start()


# --------------------------------------------------------------------------------------------
# Checks on a gateway's own output.


def crash_signs(lines: Sequence[str]) -> list[str]:
    """Log lines that show the gateway failed internally instead of answering a fault.

    At info level the gateway names an exception's class (`exc_type`) rather than printing
    its traceback, so both are looked for, as is anything asyncio reports on its own.
    """
    found: list[str] = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if line.strip():
                found.append(line)  # a crash or a warning printed past the JSON logger
            continue
        if (
            "Traceback" in line
            or "exc_type" in doc
            or "internal error" in str(doc.get("msg"))
            or doc.get("logger") == "asyncio"
            or doc.get("level") == "critical"
        ):
            found.append(line)
    return found


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The sum of the samples of `name` whose labels include `labels` (Prometheus text
    format), or None when there is none."""
    wanted = set((labels or {}).items())
    total: float | None = None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        if sample != name:
            continue
        have = set()
        for pair in rest.rstrip("}").split(","):
            label, _, quoted = pair.partition("=")
            if label:
                have.add((label.strip(), quoted.strip('"')))
        if wanted <= have:
            total = (total or 0.0) + float(value)
    return total
