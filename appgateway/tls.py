"""Client certificates from Secret PEM, and the client-side SSL contexts built on them.

The `ssl` module only loads key material from files, so PEM goes through a 0600 temporary
file that is deleted at once (architecture.md). Contexts are cached per (verify,
fingerprint): building one reads the trust store, which costs milliseconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Collection
from typing import TYPE_CHECKING

from appgateway.model import ClientCert

if TYPE_CHECKING:
    from typing_extensions import Buffer

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")


def _blocks(pem: bytes) -> list[tuple[bytes, bytes]]:
    """(label, DER) of every PEM block; text outside blocks is ignored."""
    out: list[tuple[bytes, bytes]] = []
    for match in _BLOCK.finditer(pem):
        label, body = match.group(1), match.group(2)
        if b":" in body:  # RFC 1421 headers: only legacy encrypted keys carry them
            if b"ENCRYPTED" in body:
                raise ValueError("encrypted private keys are not supported")
            raise ValueError(f"{label.decode()} block with headers is not supported")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"invalid base64 in {label.decode()} block") from None
        if not der:
            raise ValueError(f"empty {label.decode()} block")
        out.append((label, der))
    return out


def _pem(label: bytes, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN " + label + b"-----\n" + lines + b"\n-----END " + label + b"-----\n"


def _load_into(context: ssl.SSLContext, crt_pem: bytes, key_pem: bytes) -> None:
    fd, path = tempfile.mkstemp(prefix="appgateway-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(crt_pem + key_pem)
        context.load_cert_chain(path, password=lambda: b"")
    finally:
        os.unlink(path)


def load_client_cert(crt: bytes, key: bytes) -> ClientCert:
    """Check that `crt` (leaf first) and the unencrypted `key` form a usable pair.

    Raises ValueError with a short reason for the API's error message. Validity dates are
    not checked: the peer decides.
    """
    certs = [der for label, der in _blocks(crt) if label == b"CERTIFICATE"]
    if not certs:
        raise ValueError("no CERTIFICATE block in crt")
    key_blocks = _blocks(key)
    if any(label == b"ENCRYPTED PRIVATE KEY" for label, _ in key_blocks):
        raise ValueError("encrypted private keys are not supported")
    keys = [(label, der) for label, der in key_blocks if label in _KEY_LABELS]
    if not keys:
        raise ValueError("no PRIVATE KEY block in key")
    if len(keys) > 1:
        raise ValueError("more than one private key in key")
    crt_pem = b"".join(_pem(b"CERTIFICATE", der) for der in certs)
    key_pem = _pem(*keys[0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=b"".join(certs))  # parses each DER certificate
    except ssl.SSLError:
        raise ValueError("invalid certificate in crt") from None
    try:
        _load_into(context, crt_pem, key_pem)
    except ssl.SSLError as exc:
        # A key of another type than the leaf's lands in an empty slot: NO_CERTIFICATE_ASSIGNED.
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ValueError("private key does not match certificate") from None
        raise ValueError("invalid private key in key") from None
    except OSError as exc:
        raise ValueError(f"cannot load certificate: {exc.strerror or exc}") from None
    fingerprint = hashlib.sha256(crt_pem + key_pem).hexdigest()
    return ClientCert(crt_pem=crt_pem, key_pem=key_pem, fingerprint=fingerprint)


QUIET_MESSAGE = "no TLS record to read (answered without OpenSSL)"


class QuietReadSSLObject(ssl.SSLObject):
    """An SSLObject whose read that can only fail says so without asking OpenSSL.

    The event loop's TLS protocol reads until "want read": for each response, one read
    returns the data and the next fails. That failing `SSL_read` costs more than the
    successful one (OpenSSL's record layer and error queue, then `_ssl` formatting the
    exception's message), about 5 % of a client-certificate request. Once the handshake is
    over and a read has returned data, an empty incoming buffer (not at EOF) with no
    decrypted bytes pending can only give "want read", so that answer is raised directly.

    Only a read that returned data (so the handshake is done) arms the shortcut; any other
    outcome of a real read disarms it: after a close_notify (an empty result), an EOF or an
    error, OpenSSL no longer answers "want read" and must be asked. The class stays
    interpreted: mypyc compiles a subclass of a Python class into slower code than this.
    """

    _incoming: ssl.MemoryBIO
    _armed: bool

    def read(self, len: int = 1024, buffer: Buffer | None = None) -> bytes:
        sslobj = self._sslobj  # type: ignore[attr-defined]
        incoming = self._incoming
        if self._armed and not incoming.pending and not incoming.eof and not sslobj.pending():
            raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, QUIET_MESSAGE)
        try:
            data: bytes = sslobj.read(len) if buffer is None else sslobj.read(len, buffer)
        except ssl.SSLWantReadError:
            raise
        except BaseException:
            self._armed = False
            raise
        self._armed = bool(data)
        return data


class ClientContext(ssl.SSLContext):
    """The client context whose connections read through QuietReadSSLObject."""

    sslobject_class = QuietReadSSLObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(sslobj, QuietReadSSLObject):
            sslobj._incoming = incoming
            sslobj._armed = False
        return sslobj


def client_context(verify: bool, cert: ClientCert | None) -> ssl.SSLContext:
    """HTTP/1.1 over TLS >= 1.2 with the system trust store (SSL_CERT_FILE/SSL_CERT_DIR).

    The settings are `ssl.create_default_context`'s for a client, on a ClientContext.
    """
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        _load_into(context, cert.crt_pem, cert.key_pem)
    return context


class TlsContexts:
    """One SSLContext per (verify, client-certificate fingerprint), reused across requests."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    def get(self, verify: bool, cert: ClientCert | None) -> ssl.SSLContext:
        key = (verify, cert.fingerprint if cert is not None else None)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = client_context(verify, cert)
        return context

    def retain(self, fingerprints: Collection[str]) -> None:
        """Drop contexts of certificates no API uses any more (rotated or removed)."""
        keep = set(fingerprints)
        for key in [k for k in self._contexts if k[1] is not None and k[1] not in keep]:
            del self._contexts[key]

    def __len__(self) -> int:
        return len(self._contexts)
