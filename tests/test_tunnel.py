"""The CONNECT tunnel against scripted proxies on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from appgateway.errors import UpstreamUnavailable
from appgateway.model import Target
from appgateway.tunnel import MAX_ANSWER, Tunnel

pytestmark = pytest.mark.timeout(10)

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
TARGET = Target("https", "api.example", 8443, "api.example:8443", "/", "")


class Proxy:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        await self.answer(head, writer)
        await writer.drain()
        writer.close()


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[Answer], Awaitable[Proxy]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Proxy:
        proxy = Proxy(answer)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        proxy.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return proxy

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def open_tunnel(proxy: Proxy, target: Target, authorization: bytes | None) -> None:
    loop = asyncio.get_running_loop()
    transport, tunnel = await loop.create_connection(Tunnel, "127.0.0.1", proxy.port)
    try:
        await tunnel.open(target, authorization)
    finally:
        transport.close()


async def test_connect_is_sent_with_the_proxys_credentials_only(
    proxy_for: Callable[[Answer], Awaitable[Proxy]],
) -> None:
    async def ok(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

    proxy = await proxy_for(ok)
    await open_tunnel(proxy, TARGET, b"Basic dXNlcjpwdw==")
    assert proxy.heads == [
        b"CONNECT api.example:8443 HTTP/1.1\r\nHost: api.example:8443\r\n"
        b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n\r\n"
    ]


async def test_ipv6_authority_is_bracketed(
    proxy_for: Callable[[Answer], Awaitable[Proxy]],
) -> None:
    async def ok(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")

    proxy = await proxy_for(ok)
    await open_tunnel(proxy, Target("https", "::1", 443, "[::1]:443", "/", ""), None)
    assert proxy.heads == [b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", "proxy refused CONNECT: status 403"),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            "proxy refused CONNECT: status 407",
        ),
        (b"garbage\r\n\r\n", "proxy refused CONNECT: status ?"),
        (b"", "proxy closed the tunnel"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"x" * (MAX_ANSWER + 10), "proxy answer too large"),
    ],
    ids=["403", "407", "garbage", "closed", "endless"],
)
async def test_a_refusal_is_a_connect_failure(
    proxy_for: Callable[[Answer], Awaitable[Proxy]], answer: bytes, message: str
) -> None:
    async def reply(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)

    proxy = await proxy_for(reply)
    with pytest.raises(UpstreamUnavailable) as info:
        await open_tunnel(proxy, TARGET, None)
    assert (info.value.message, info.value.kind) == (message, "connect")
