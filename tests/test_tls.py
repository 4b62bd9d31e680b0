from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appgateway.tls import (
    QUIET_MESSAGE,
    ClientContext,
    TlsContexts,
    client_context,
    load_client_cert,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Pair:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def crt_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(
        self, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8
    ) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def make_pair(
    cn: str,
    issuer: Pair | None = None,
    *,
    ca: bool = False,
    server: bool = False,
    key: PrivateKey | None = None,
    expired: bool = False,
) -> Pair:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=10 if expired else 1)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Pair(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def ca() -> Pair:
    return make_pair("test CA", ca=True)


@pytest.fixture(scope="module")
def client(ca: Pair) -> Pair:
    return make_pair(
        "client", ca, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )


def test_loads_pem_with_preamble_and_chain(ca: Pair, client: Pair) -> None:
    crt = b"notBefore=Jan 1 00:00:00 2024 GMT\nsubject=CN=client\n" + client.crt_pem
    crt += b"\nbetween blocks\n" + ca.crt_pem
    key = b"Bag Attributes\n" + client.key_pem(serialization.PrivateFormat.TraditionalOpenSSL)
    cert = load_client_cert(crt, key)
    assert cert.crt_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert cert.crt_pem.count(b"BEGIN CERTIFICATE") == 2
    assert b"notBefore" not in cert.crt_pem and b"Bag" not in cert.key_pem
    assert len(cert.fingerprint) == 64
    # Normalised PEM loads again, to the same fingerprint, and differs from another key's.
    assert load_client_cert(cert.crt_pem, cert.key_pem).fingerprint == cert.fingerprint
    other = make_pair("client", ca)
    assert load_client_cert(other.crt_pem, other.key_pem()).fingerprint != cert.fingerprint
    assert "key_pem" not in repr(cert) and b"PRIVATE" not in repr(cert).encode()


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_ec_keys_and_crlf(ca: Pair, fmt: serialization.PrivateFormat) -> None:
    pair = make_pair("ec", ca)
    crt = pair.crt_pem.replace(b"\n", b"\r\n")
    assert load_client_cert(crt, pair.key_pem(fmt)).fingerprint


def test_expired_certificate_loads(ca: Pair) -> None:
    pair = make_pair("old", ca, expired=True)
    assert load_client_cert(pair.crt_pem, pair.key_pem()).fingerprint


def test_no_key_file_left_behind(client: Pair) -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("appgateway-*"))
    load_client_cert(client.crt_pem, client.key_pem())
    TlsContexts().get(True, load_client_cert(client.crt_pem, client.key_pem()))
    assert set(tmp.glob("appgateway-*")) == before


def _bad_inputs(client: Pair, ca: Pair) -> list[tuple[bytes, bytes, str]]:
    other_ec = make_pair("x", ca)
    encrypted = client.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    legacy_encrypted = other_ec.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )
    block = b"-----BEGIN %s-----\n%s\n-----END %s-----\n"
    return [
        (client.crt_pem, other_ec.key_pem(), "private key does not match certificate"),
        (other_ec.crt_pem, make_pair("y", ca).key_pem(), "private key does not match certificate"),
        (b"garbage", client.key_pem(), "no CERTIFICATE block in crt"),
        (client.key_pem(), client.key_pem(), "no CERTIFICATE block in crt"),
        (b"", b"", "no CERTIFICATE block in crt"),
        (client.crt_pem, b"garbage", "no PRIVATE KEY block in key"),
        (client.crt_pem, client.crt_pem, "no PRIVATE KEY block in key"),
        (client.crt_pem, client.key_pem() * 2, "more than one private key in key"),
        (client.crt_pem, encrypted, "encrypted private keys are not supported"),
        (other_ec.crt_pem, legacy_encrypted, "encrypted private keys are not supported"),
        (
            block % (b"CERTIFICATE", b"AAAA", b"CERTIFICATE"),
            client.key_pem(),
            "invalid certificate in crt",
        ),
        (
            block % (b"CERTIFICATE", b"!!!!", b"CERTIFICATE"),
            client.key_pem(),
            "invalid base64 in CERTIFICATE block",
        ),
        (
            client.crt_pem,
            block % (b"PRIVATE KEY", b"AAAA", b"PRIVATE KEY"),
            "invalid private key in key",
        ),
    ]


def test_bad_pem_raises_value_error(client: Pair, ca: Pair) -> None:
    for crt, key, reason in _bad_inputs(client, ca):
        with pytest.raises(ValueError) as info:
            load_client_cert(crt, key)
        assert str(info.value) == reason, (crt[:40], key[:40])


def test_contexts_are_cached_and_retained(client: Pair) -> None:
    cert = load_client_cert(client.crt_pem, client.key_pem())
    contexts = TlsContexts()
    plain = contexts.get(True, None)
    assert contexts.get(True, None) is plain
    assert contexts.get(False, None) is not plain
    with_cert = contexts.get(True, cert)
    assert contexts.get(True, cert) is with_cert and len(contexts) == 3
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.check_hostname and plain.verify_mode == ssl.CERT_REQUIRED
    insecure = contexts.get(False, None)
    assert not insecure.check_hostname and insecure.verify_mode == ssl.CERT_NONE
    contexts.retain([cert.fingerprint])
    assert contexts.get(True, cert) is with_cert
    contexts.retain([])
    assert len(contexts) == 2  # contexts without a certificate always stay
    assert contexts.get(True, cert) is not with_cert


@pytest.fixture
async def tls_server(
    ca: Pair, tmp_path: Path
) -> AsyncIterator[tuple[int, list[str | None], list[str | None]]]:
    """A loopback TLS server that asks for (but does not require) a client certificate."""
    server = make_pair("server", ca, server=True)
    (tmp_path / "server.pem").write_bytes(server.crt_pem + server.key_pem())
    (tmp_path / "ca.pem").write_bytes(ca.crt_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    context.load_verify_locations(tmp_path / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2", "http/1.1"])
    peers: list[str | None] = []
    protocols: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        peers.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else None)
        protocols.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        writer.write(b"ok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = srv.sockets[0].getsockname()[1]
    yield port, peers, protocols
    srv.close()
    await srv.wait_closed()


async def _talk(port: int, context: ssl.SSLContext, host: str = "localhost") -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=host
    )
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_handshakes_against_loopback_server(
    tls_server: tuple[int, list[str | None], list[str | None]],
    ca: Pair,
    client: Pair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, peers, protocols = tls_server
    cert = load_client_cert(client.crt_pem, client.key_pem())
    # The default trust store does not know the test CA: verification fails ...
    with pytest.raises(ssl.SSLCertVerificationError):
        await _talk(port, TlsContexts().get(True, None))
    # ... unless verification is off.
    assert await _talk(port, TlsContexts().get(False, cert)) == b"ok"
    # SSL_CERT_FILE is honoured when a context is built.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    contexts = TlsContexts()
    assert await _talk(port, contexts.get(True, None)) == b"ok"
    assert await _talk(port, contexts.get(True, cert)) == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        await _talk(port, contexts.get(True, None), host="other.example")
    assert peers == ["client", None, "client"]
    assert protocols == ["http/1.1"] * 3


# The client's quiet read must answer exactly as OpenSSL does. Each script below runs twice over
# in-memory BIOs against the same server, once through the stdlib's SSLObject and once through
# ClientContext's; the outcome of every step (data, exception type, bytes the client wants to
# send) must be equal. Steps: "w:<text>" the server sends text (delivered at once), "h:<text>"
# it sends text but only half of the bytes arrive, "rest" delivers what is held back,
# "r<n>" the client reads n bytes, "rb<n>" it reads into a buffer, "close" the server sends
# close_notify, "eof" the connection ends, "junk" bytes that are not a TLS record arrive.
TLS_SCRIPTS: list[tuple[str, ssl.TLSVersion, list[str]]] = [
    ("read before the handshake", ssl.TLSVersion.TLSv1_3, ["r64", "hs", "r64"]),
    ("one response, then empty", ssl.TLSVersion.TLSv1_3, ["hs", "w:hello", "r64", "r64", "r64"]),
    ("two responses", ssl.TLSVersion.TLSv1_3, ["hs", "w:a", "r64", "r64", "w:b", "r64", "r64"]),
    ("short reads", ssl.TLSVersion.TLSv1_3, ["hs", "w:0123456789", "r4", "r4", "r4", "r4"]),
    ("buffer reads", ssl.TLSVersion.TLSv1_3, ["hs", "w:0123456789", "rb4", "rb64", "rb64"]),
    ("split record", ssl.TLSVersion.TLSv1_3, ["hs", "h:abcdef", "r64", "rest", "r64", "r64"]),
    ("close_notify", ssl.TLSVersion.TLSv1_3, ["hs", "w:x", "r64", "close", "r64", "r64"]),
    ("close before read", ssl.TLSVersion.TLSv1_3, ["hs", "w:x", "close", "r64", "r64", "r64"]),
    ("eof after data", ssl.TLSVersion.TLSv1_3, ["hs", "w:x", "r64", "r64", "eof", "r64", "r64"]),
    ("eof mid-record", ssl.TLSVersion.TLSv1_3, ["hs", "w:x", "r64", "h:yz", "eof", "r64", "r64"]),
    ("junk", ssl.TLSVersion.TLSv1_3, ["hs", "w:x", "r64", "r64", "junk", "r64", "r64"]),
    ("TLS 1.2", ssl.TLSVersion.TLSv1_2, ["hs", "w:a", "r64", "r64", "h:bc", "r64", "rest", "r1"]),
    ("TLS 1.2 close", ssl.TLSVersion.TLSv1_2, ["hs", "w:a", "r64", "r64", "close", "r64"]),
]


def _run_tls_script(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, steps: list[str]
) -> tuple[list[tuple[str, object, bool]], list[str]]:
    """(outcome of each step, messages of the "want read" errors) for one client context."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    held = b""
    outcomes: list[tuple[str, object, bool]] = []
    want_read: list[str] = []

    def handshake() -> None:
        for _ in range(10):
            done = 0
            for end in (client, server):
                try:
                    end.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
            if done == 2:
                return
        raise AssertionError("handshake did not finish")

    for step in steps:
        result: object = None
        if step == "hs":
            handshake()
        elif step.startswith(("w:", "h:")):
            server.write(step[2:].encode())
            wire = s_out.read()
            cut = len(wire) // 2 if step[0] == "h" else len(wire)
            c_in.write(wire[:cut])
            held += wire[cut:]
        elif step == "rest":
            c_in.write(held)
            held = b""
        elif step == "close":
            with contextlib.suppress(ssl.SSLWantReadError):
                server.unwrap()
            c_in.write(s_out.read())
        elif step == "eof":
            c_in.write_eof()
        elif step == "junk":
            c_in.write(b"\x00" * 40)
        else:
            try:
                if step.startswith("rb"):
                    buffer = bytearray(int(step[2:]))
                    count = cast(int, client.read(len(buffer), buffer))  # typeshed: bytes
                    result = bytes(buffer[:count])
                else:
                    result = client.read(int(step[1:]))
            except ssl.SSLError as exc:
                result = type(exc).__name__
                if isinstance(exc, ssl.SSLWantReadError):
                    want_read.append(str(exc))
        sent = c_out.pending > 0
        s_in.write(c_out.read())
        outcomes.append((step, result, sent))
    return outcomes, want_read


@pytest.mark.parametrize(
    ("version", "steps"), [(v, s) for _, v, s in TLS_SCRIPTS], ids=[n for n, _, _ in TLS_SCRIPTS]
)
def test_quiet_read_answers_as_openssl(
    ca: Pair, tmp_path: Path, version: ssl.TLSVersion, steps: list[str]
) -> None:
    server_pair = make_pair("server", ca, server=True)
    (tmp_path / "server.pem").write_bytes(server_pair.crt_pem + server_pair.key_pem())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem")
    server_ctx.maximum_version = version
    quiet = client_context(False, None)
    stdlib = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stdlib.check_hostname = False
    stdlib.verify_mode = ssl.CERT_NONE
    assert isinstance(quiet, ClientContext)
    expected, openssl_messages = _run_tls_script(stdlib, server_ctx, steps)
    got, quiet_messages = _run_tls_script(quiet, server_ctx, steps)
    assert got == expected
    assert QUIET_MESSAGE not in openssl_messages
    # The shortcut is taken after a read returned data and the buffers ran empty: in every
    # script where OpenSSL answered "want read" in that state.
    after_data = [
        i
        for i, (step, result, _) in enumerate(expected)
        if step.startswith("r")
        and result == "SSLWantReadError"
        and isinstance(expected[i - 1][1], bytes)
        and expected[i - 1][1]
    ]
    assert quiet_messages.count(QUIET_MESSAGE) >= (1 if after_data else 0)
