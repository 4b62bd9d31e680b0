"""HTTP_PROXY/HTTPS_PROXY/NO_PROXY: the rules by table, and real tunnels through a test proxy."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from appgateway.errors import UpstreamUnavailable
from appgateway.model import Target
from appgateway.proxy import ProxyConfig, ProxyServer, parse_proxy_url
from appgateway.tls import TlsContexts
from appgateway.upstream import Upstream
from tests.conftest import RawServer, ServerFactory
from tests.test_upstream import Pki, exchange, outbound, pki, target_of

__all__ = ["pki"]  # the module-scoped certificate fixture, shared with test_upstream


@pytest.mark.parametrize(
    ("url", "host", "port", "auth"),
    [
        ("http://proxy:3128", "proxy", 3128, None),
        ("proxy:8080", "proxy", 8080, None),
        ("http://proxy", "proxy", 80, None),
        ("http://u%40x:p%3Aw@proxy:1", "proxy", 1, b"Basic " + base64.b64encode(b"u@x:p:w")),
        ("http://[::1]:3128", "::1", 3128, None),
    ],
)
def test_parse_proxy_url(url: str, host: str, port: int, auth: bytes | None) -> None:
    assert parse_proxy_url(url) == ProxyServer(host, port, auth)


@pytest.mark.parametrize("url", ["https://proxy:1", "socks5://proxy:1", "http://"])
def test_unsupported_proxy_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_proxy_url(url)


def test_repr_hides_proxy_credentials() -> None:
    assert "secret" not in repr(parse_proxy_url("http://user:secret@proxy:1"))


@pytest.mark.parametrize(
    ("no_proxy", "scheme", "host", "port", "proxied"),
    [
        ("", "http", "api.example.com", 80, True),
        ("", "https", "api.example.com", 443, True),
        ("*", "http", "api.example.com", 80, False),
        ("example.com", "http", "api.example.com", 80, False),
        ("example.com", "http", "example.com", 80, False),
        (".example.com", "http", "api.example.com", 80, False),
        ("example.com", "http", "notexample.com", 80, True),
        ("api.example.com:8443", "https", "api.example.com", 443, True),
        ("api.example.com:8443", "https", "api.example.com", 8443, False),
        ("10.0.0.0/8", "http", "10.1.2.3", 80, False),
        ("10.0.0.0/8", "http", "11.1.2.3", 80, True),
        ("127.0.0.1", "http", "127.0.0.1", 9, False),
        ("::1", "http", "::1", 9, False),
        ("[::1]:9", "http", "::1", 9, False),
        (" a.com , b.com ", "http", "B.COM", 80, False),
    ],
)
def test_no_proxy_rules(no_proxy: str, scheme: str, host: str, port: int, proxied: bool) -> None:
    config = ProxyConfig.from_environment(
        {"http_proxy": "http://p:1", "https_proxy": "http://p:2", "no_proxy": no_proxy}
    )
    assert (config.proxy_for(scheme, host, port) is not None) is proxied


def test_scheme_selects_the_proxy() -> None:
    config = ProxyConfig.from_environment({"https_proxy": "http://p:2"})
    assert config.proxy_for("http", "h", 80) is None
    assert config.proxy_for("https", "h", 443) == ProxyServer("p", 2, None)


@dataclass
class ForwardProxy:
    """A tiny HTTP proxy: absolute-form requests are relayed, CONNECT opens a tunnel."""

    port: int = 0
    lines: list[bytes] = field(default_factory=list)
    auth: list[bytes | None] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head.split(b"\r\n")
        self.lines.append(line)
        found = [f.split(b": ", 1)[1] for f in fields if f.lower().startswith(b"proxy-auth")]
        self.auth.append(found[0] if found else None)
        method, target, _ = line.split(b" ")
        if method == b"CONNECT":
            host, _, port = target.rpartition(b":")
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            authority = target.split(b"/")[2]
            host, _, port = authority.rpartition(b":")
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    yield proxy
    server.close()
    await server.wait_closed()


def _upstream_via(proxy: ForwardProxy, credentials: str = "") -> Upstream:
    url = f"http://{credentials}127.0.0.1:{proxy.port}"
    config = ProxyConfig.from_environment({"http_proxy": url, "https_proxy": url})
    return Upstream(asyncio.get_running_loop(), config)


async def test_plain_http_goes_through_the_proxy_in_absolute_form(
    forward_proxy: ForwardProxy, servers: ServerFactory
) -> None:
    server: RawServer = await servers()
    upstream = _upstream_via(forward_proxy, "user:pw@")
    try:
        pool = upstream.pool(target_of(server), True, "", None)
        resp, _ = await exchange(upstream, pool, outbound(server, b"/a?b=1"))
        assert resp.status == 200
    finally:
        upstream.close()
    assert forward_proxy.lines == [f"GET {server.base}/a?b=1 HTTP/1.1".encode()]
    assert forward_proxy.auth == [b"Basic " + base64.b64encode(b"user:pw")]
    (seen,) = server.requests
    assert seen.target == f"{server.base}/a?b=1"  # the proxy relays the absolute form


async def test_https_is_tunnelled_with_connect_and_verified_end_to_end(
    forward_proxy: ForwardProxy,
    servers: ServerFactory,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    server: RawServer = await servers(ssl_context=pki.server_ctx)
    upstream = _upstream_via(forward_proxy)
    try:
        pool = upstream.pool(target_of(server), True, "", TlsContexts().get(True, None))
        for path in (b"/one", b"/two"):
            resp, body = await exchange(upstream, pool, outbound(server, path))
            assert resp.status == 200 and path in body
    finally:
        upstream.close()
    # One tunnel, reused for both requests; the proxy never saw the request itself.
    assert forward_proxy.lines == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1".encode()]
    assert [seen.target for seen in server.requests] == ["/one", "/two"]


async def test_refused_connect_is_a_502() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    proxy_server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = proxy_server.sockets[0].getsockname()[1]
    config = ProxyConfig.from_environment({"https_proxy": f"http://127.0.0.1:{port}"})
    upstream = Upstream(asyncio.get_running_loop(), config)
    target = Target("https", "127.0.0.1", 9, "127.0.0.1:9", "/", "")
    try:
        pool = upstream.pool(target, False, "", TlsContexts().get(False, None))
        with pytest.raises(UpstreamUnavailable) as info:
            await upstream.connect(target, pool)
        assert info.value.status == 502
        assert info.value.message == "proxy refused CONNECT: status 403"
    finally:
        upstream.close()
        proxy_server.close()
        await proxy_server.wait_closed()
