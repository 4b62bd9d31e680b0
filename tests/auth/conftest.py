"""Loopback token/CSRF servers that record what they received, certificates made at test
time, and `AuthDeps` wired to a real `Upstream` and `TlsContexts`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appgateway.auth.deps import AuthDeps, make_deps
from appgateway.metrics import Metrics
from appgateway.model import API, APIRef, ClientCert, Credentials, Headers, RequestParameters
from appgateway.tls import TlsContexts, load_client_cert
from appgateway.upstream import Upstream
from appgateway.urls import parse_target

ENV = (
    *("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR"),
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def make_api(
    credentials: Credentials,
    csrf_url: str | None = None,
    *,
    skip_verify: bool = False,
    target_url: str = "http://127.0.0.1:9/api",
) -> API:
    ref = APIRef("erp", "orders", "sales", "orders", "id-1", "Orders", "Sales")
    target = parse_target(target_url)
    params = RequestParameters()
    return API(ref, target_url, target, credentials, csrf_url, params, skip_verify, True)


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name.lower()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def crt_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def client_cert(self) -> ClientCert:
        return load_client_cert(self.crt_pem, self.key_pem)


def make_pair(cn: str, issuer: Pair | None = None, *, ca: bool = False) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Pair(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Pair
    server: Pair
    client: Pair
    stranger: Pair  # signed by another CA
    ca_file: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = make_pair("auth test CA", ca=True)
    other_ca = make_pair("other CA", ca=True)
    ca_file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca_file.write_bytes(ca.crt_pem)
    return Pki(
        ca,
        make_pair("127.0.0.1", ca),
        make_pair("client", ca),
        make_pair("client", other_ca),
        ca_file,
    )


def server_context(pki: Pki, tmp: Path, *, client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chain = tmp / "server.pem"
    chain.write_bytes(pki.server.crt_pem + pki.server.key_pem)
    ctx.load_cert_chain(chain)
    chain.unlink()
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pki.ca.crt_pem.decode())
    return ctx


# -- recording server -----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # raw path and query
    headers: Headers
    body: bytes
    peer_cn: str | None  # subject CN of the client certificate, if one was presented


Handler = Callable[[Seen], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """Answers by path with the handler in `routes`; 404 otherwise. Records every request."""

    scheme: str = "http"
    port: int = 0
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def authority(self) -> bytes:
        return f"127.0.0.1:{self.port}".encode()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer_cn = None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is not None:
            peer = ssl_object.getpeercert()
            if peer:
                peer_cn = dict(x[0] for x in peer["subject"])["commonName"]
        seen = Seen(request.method, request.raw_path, list(request.raw_headers), body, peer_cn)
        self.seen.append(seen)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(seen)


class TokenIssuer:
    """A token endpoint: issues t1, t2, ... with `expires_in`; `status`/`body` override it."""

    def __init__(self, expires_in: int | None = 3600) -> None:
        self.expires_in = expires_in
        self.issued = 0
        self.status = 200
        self.body: bytes | None = None
        self.delay = 0.0

    async def __call__(self, seen: Seen) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200 or self.body is not None:
            return web.Response(status=self.status, body=self.body or b"")
        self.issued += 1
        data: dict[str, object] = {"access_token": f"t{self.issued}", "token_type": "bearer"}
        if self.expires_in is not None:
            data["expires_in"] = self.expires_in
        return web.json_response(data)


async def _start(server: Server, ctx: ssl.SSLContext | None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    return runner


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    runner = await _start(srv, None)
    yield srv
    await runner.cleanup()


@pytest.fixture
async def tls_server(pki: Pki, tmp_path: Path) -> AsyncIterator[Server]:
    """https, no client certificate asked for."""
    srv = Server("https")
    runner = await _start(srv, server_context(pki, tmp_path, client_cert=False))
    yield srv
    await runner.cleanup()


@pytest.fixture
async def mtls_server(pki: Pki, tmp_path: Path) -> AsyncIterator[Server]:
    """https that requires a client certificate issued by the test CA."""
    srv = Server("https")
    runner = await _start(srv, server_context(pki, tmp_path, client_cert=True))
    yield srv
    await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def deps(clock: FakeClock) -> AsyncIterator[AuthDeps]:
    upstream = Upstream(asyncio.get_running_loop())
    yield make_deps(
        upstream=upstream,
        tls=TlsContexts(),
        metrics=Metrics(),
        clock=clock,
        proxy_timeout=1.0,
        token_default_ttl=300.0,
    )
    upstream.close()
