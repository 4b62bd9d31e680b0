"""A CONNECT tunnel through an HTTP proxy, for https targets behind HTTPS_PROXY.

The tunnel is opened on a plain connection to the proxy; TLS to the target then runs inside
it (`loop.start_tls`), with the target's name for SNI and verification.
"""

from __future__ import annotations

import asyncio

from appgateway.errors import UpstreamUnavailable
from appgateway.model import Target

MAX_ANSWER = 65536


class Tunnel(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; nothing after it (the TLS layer takes over)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" in self._buffer and not self._done.done():
            self._done.set_result(self._buffer)
        elif len(self._buffer) > MAX_ANSWER and not self._done.done():
            self._done.set_exception(UpstreamUnavailable("proxy answer too large", "connect"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(UpstreamUnavailable("proxy closed the tunnel", "connect"))

    async def open(self, target: Target, authorization: bytes | None) -> None:
        """Send CONNECT (with the proxy's own credentials, never the API's) and check 2xx."""
        assert self.transport is not None
        authority = b"%s:%d" % (target.host.encode("idna"), target.port)
        if ":" in target.host:
            authority = b"[%s]:%d" % (target.host.encode(), target.port)
        lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        if authorization is not None:
            lines.append(b"Proxy-Authorization: " + authorization)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = await self._done
        status_line = answer.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].startswith(b"2"):
            code = status_line[1].decode("latin-1") if len(status_line) > 1 else "?"
            raise UpstreamUnavailable(f"proxy refused CONNECT: status {code}", "connect")
