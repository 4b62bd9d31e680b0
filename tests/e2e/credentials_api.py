"""A mock external API for the credential tests, with certificates made at test time.

One aiohttp application is served on four loopback listeners: plain http, TLS that requires a
client certificate, TLS that asks for one but accepts none (so a test can see that the gateway
presented nothing), and TLS with an expired server certificate. It plays every part the
gateway talks to: OAuth token endpoint, CSRF endpoint, and Basic, Bearer and CSRF-protected
resources. Every request is recorded with the listener it came in on and the fingerprint of the
client certificate presented, so the tests assert on what crossed the wire.

It runs its own event loop in a thread, so the tests stay plain and blocking.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BASIC_USER = "e2e-user"
BASIC_PASSWORD = "pw-basic-Zq81cV"
"""The only Basic credential the mock accepts."""

# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def crt_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        """PKCS#8 (`PRIVATE KEY`)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @property
    def ec_key_pem(self) -> str:
        """The traditional OpenSSL form (`EC PRIVATE KEY`)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, as the mock records a presented certificate."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def issue(ca: Pair, cn: str, *, server: bool, expired: bool = False) -> Pair:
    """A leaf signed by `ca`; server leaves name 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    server_ca: Pair
    """Signs the server certificates; the gateway trusts it only through SSL_CERT_FILE."""
    client_ca: Pair
    """The only CA the mock accepts client certificates from."""
    rogue_ca: Pair
    """Same subject name as `client_ca`, another key: only a signature check tells them apart."""
    server: Pair
    expired_server: Pair
    client: Pair
    expired_client: Pair
    rogue_client: Pair
    """Same subject as `client`, signed by `rogue_ca`."""
    server_ca_file: Path


def make_pki(folder: Path) -> Pki:
    server_ca = make_ca("appgateway e2e server CA")
    client_ca = make_ca("appgateway e2e CA")
    rogue_ca = make_ca("appgateway e2e CA")
    ca_file = folder / "server-ca.pem"
    ca_file.write_text(server_ca.crt_pem)
    return Pki(
        server_ca=server_ca,
        client_ca=client_ca,
        rogue_ca=rogue_ca,
        server=issue(server_ca, "127.0.0.1", server=True),
        expired_server=issue(server_ca, "127.0.0.1", server=True, expired=True),
        client=issue(client_ca, "e2e client", server=False),
        expired_client=issue(client_ca, "e2e client", server=False, expired=True),
        rogue_client=issue(rogue_ca, "e2e client", server=False),
        server_ca_file=ca_file,
    )


def _server_context(
    folder: Path, pki: Pki, server: Pair, verify_mode: ssl.VerifyMode
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chain = folder / f"server-{server.fingerprint[:12]}.pem"
    chain.write_text(server.crt_pem + server.key_pem)
    ctx.load_cert_chain(chain)
    ctx.verify_mode = verify_mode
    ctx.load_verify_locations(cadata=pki.client_ca.crt_pem)
    return ctx


# -- recording ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the mock received it."""

    listener: str
    method: str
    target: str
    """Raw path and query."""
    headers: list[tuple[str, str]]
    body: bytes
    peer: str | None
    """SHA-256 of the client certificate presented on this connection, if any."""

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    def names(self) -> list[str]:
        return sorted(n.lower() for n, _ in self.headers)


@dataclass
class TokenConfig:
    """How `/token/{tag}` answers. `rejected`: the tokens it issues are refused by `/bearer`."""

    expires_in: int | None = 3600
    status: int = 200
    body: bytes | None = None
    delay: float = 0.0
    rejected: bool = False
    issued: list[str] = field(default_factory=list)


@dataclass
class CsrfConfig:
    """How `/csrf/{tag}/token` answers, and what `/csrf/{tag}/...` accepts."""

    status: int = 200
    cookies: tuple[str, ...] = ("sap-XSRF", "SAP_SESSIONID")
    issued: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)


class CredentialsAPI:
    """The mock. `url(listener, path)` builds an address; `at(path)` reads the record."""

    def __init__(self, pki: Pki, folder: Path) -> None:
        self.pki = pki
        self.ports: dict[str, int] = {}
        self.requests: list[Seen] = []
        self.tokens: dict[str, TokenConfig] = {}
        self.csrf: dict[str, CsrfConfig] = {}
        self.valid_tokens: set[str] = set()
        self.handed_out: list[str] = []
        """Every token, CSRF token and cookie value issued, whatever the configuration now."""
        self._flaky: dict[str, int] = {}
        self._folder = folder
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._by_port: dict[int, str] = {}

    # lifecycle ----------------------------------------------------------------------------------

    def start(self) -> CredentialsAPI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        pki, folder = self.pki, self._folder
        contexts: dict[str, ssl.SSLContext | None] = {
            "plain": None,
            "mtls": _server_context(folder, pki, pki.server, ssl.CERT_REQUIRED),
            "optional": _server_context(folder, pki, pki.server, ssl.CERT_OPTIONAL),
            "expired": _server_context(folder, pki, pki.expired_server, ssl.CERT_REQUIRED),
        }
        for name, ctx in contexts.items():
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            self.ports[name] = port
            self._by_port[port] = name
            await web.SockSite(self._runner, sock, ssl_context=ctx).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # test-side helpers --------------------------------------------------------------------------

    def url(self, listener: str, path: str) -> str:
        scheme = "http" if listener == "plain" else "https"
        return f"{scheme}://127.0.0.1:{self.ports[listener]}{path}"

    def token(self, tag: str, **options: Any) -> TokenConfig:
        """Configure `/token/{tag}` (before the gateway first asks it)."""
        config = TokenConfig(**options)
        self.tokens[tag] = config
        return config

    def csrf_endpoint(self, tag: str, **options: Any) -> CsrfConfig:
        config = CsrfConfig(**options)
        self.csrf[tag] = config
        return config

    def at(self, path: str) -> list[Seen]:
        """Requests to exactly `path` (the query is ignored), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.target.split("?", 1)[0] == path]

    def token_requests(self, tag: str) -> list[Seen]:
        return self.at(f"/token/{tag}")

    def csrf_fetches(self, tag: str) -> list[Seen]:
        return self.at(f"/csrf/{tag}/token")

    def expire_csrf(self, tag: str) -> None:
        """The server forgets its CSRF sessions: the next protected call gets 403."""
        self.csrf[tag].valid.clear()

    # server -------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer: str | None = None
        listener = "?"
        transport = request.transport
        if transport is not None:
            sockname = transport.get_extra_info("sockname")
            listener = self._by_port.get(sockname[1], "?") if sockname else "?"
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                der = ssl_object.getpeercert(binary_form=True)
                peer = hashlib.sha256(der).hexdigest() if der else None
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers]
        seen = Seen(listener, request.method, request.raw_path, headers, body, peer)
        with self._lock:
            self.requests.append(seen)
        segments = seen.target.split("?", 1)[0].split("/")[1:]
        kind, args = segments[0], segments[1:]
        if kind == "token":
            return await self._token(args[0])
        if kind == "csrf":
            return self._csrf(seen, args[0], args[1:])
        if kind == "basic" and not self._basic_ok(seen):
            return self._unauthorized('Basic realm="mock"')
        if kind == "bearer" and not self._bearer_ok(seen):
            return self._unauthorized("Bearer")
        if kind == "status":
            code = int(args[0])
            return web.Response(status=code, body=f"status {code}".encode())
        if kind == "flaky":
            # /flaky/{tag}/{n}[/{then}]: 401 to the first n calls, then `then` (or the echo)
            tag, failures = args[0], int(args[1])
            calls = self._flaky.get(tag, 0)
            self._flaky[tag] = calls + 1
            if calls < failures:
                return self._unauthorized("Bearer")
            if len(args) > 2 and args[2]:
                code = int(args[2])
                return web.Response(status=code, body=f"then {code}".encode())
        return self._echo(seen)

    @staticmethod
    def _unauthorized(challenge: str) -> web.Response:
        return web.Response(
            status=401, body=b"who are you?", headers={"WWW-Authenticate": challenge}
        )

    @staticmethod
    def _echo(seen: Seen) -> web.Response:
        data = {
            "listener": seen.listener,
            "method": seen.method,
            "target": seen.target,
            "headers": seen.headers,
            "body_len": len(seen.body),
            "peer": seen.peer,
        }
        return web.Response(body=json.dumps(data).encode(), content_type="application/json")

    @staticmethod
    def _basic_ok(seen: Seen) -> bool:
        good = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        return seen.values("authorization") == [f"Basic {good}"]

    def _bearer_ok(self, seen: Seen) -> bool:
        values = seen.values("authorization")
        return len(values) == 1 and values[0].removeprefix("Bearer ") in self.valid_tokens

    async def _token(self, tag: str) -> web.Response:
        config = self.tokens.setdefault(tag, TokenConfig())
        if config.delay:
            await asyncio.sleep(config.delay)
        if config.status != 200 or config.body is not None:
            return web.Response(
                status=config.status, body=config.body or b"", content_type="application/json"
            )
        token = f"at-{tag}-{len(config.issued) + 1}-{secrets.token_hex(6)}"
        config.issued.append(token)
        self.handed_out.append(token)
        if not config.rejected:
            self.valid_tokens.add(token)
        data: dict[str, object] = {"access_token": token, "token_type": "bearer"}
        if config.expires_in is not None:
            data["expires_in"] = config.expires_in
        return web.json_response(data)

    def _csrf(self, seen: Seen, tag: str, rest: list[str]) -> web.Response:
        config = self.csrf.setdefault(tag, CsrfConfig())
        if rest[:1] == ["token"]:
            if config.status != 200:
                return web.Response(status=config.status, body=b"no CSRF for you")
            authorised = self._basic_ok(seen) or self._bearer_ok(seen) or seen.peer is not None
            if not authorised:
                return self._unauthorized("Basic")
            token = f"csrf-{tag}-{len(config.issued) + 1}-{secrets.token_hex(6)}"
            cookies = {name: f"ck{secrets.token_hex(6)}" for name in config.cookies}
            config.issued.append((token, cookies))
            self.handed_out += [token, *cookies.values()]
            config.valid.add(token)
            response = web.Response(body=b"", headers={"X-CSRF-Token": token})
            for name, value in cookies.items():
                response.headers.add("Set-Cookie", f"{name}={value}; path=/; HttpOnly")
            return response
        token = seen.value("x-csrf-token") or ""
        sent = "; ".join(seen.values("cookie"))
        cookies = dict(config.issued).get(token, {})
        if token not in config.valid or any(f"{n}={v}" not in sent for n, v in cookies.items()):
            return web.Response(
                status=403,
                body=b"CSRF token validation failed",
                headers={"X-CSRF-Token": "Required"},
            )
        return self._echo(seen)
