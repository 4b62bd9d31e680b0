"""Socket and TLS failures towards a target, translated into gateway errors in one place.

Connecting and TLS handshakes raise the library's exceptions (OSError, ssl.SSLError,
EOFError); a lost connection reports one to `connection_lost`. Everything past this module
sees only UpstreamUnavailable, whose `kind` (connect, tls, protocol) feeds the metrics and
whose message says what went wrong without a stack trace or an address the caller gave.
"""

from __future__ import annotations

import errno
import socket
import ssl

from appgateway.errors import UpstreamUnavailable


def reason(exc: BaseException) -> str:
    """A short, fixed wording for a network failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or 'error'}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def connect_failed(exc: BaseException) -> UpstreamUnavailable:
    """A failure while connecting (or during the TLS handshake)."""
    kind = "tls" if isinstance(exc, ssl.SSLError) else "connect"
    return UpstreamUnavailable(reason(exc), kind)


def lost_before_head(exc: Exception | None, tls: bool, got_bytes: bool) -> UpstreamUnavailable:
    """The connection ended while we waited for the response head."""
    if exc is not None:
        return UpstreamUnavailable(
            f"connection lost before response headers: {reason(exc)}", "protocol"
        )
    if tls and not got_bytes:
        # With TLS 1.3 a rejected client certificate shows up only as the target closing
        # the connection after the handshake, before any response byte.
        return UpstreamUnavailable(
            "TLS: connection closed by the target before response headers"
            " (client certificate rejected?)",
            "tls",
        )
    return UpstreamUnavailable("connection closed before response headers", "protocol")


def lost_in_body(exc: Exception | None, until_eof: bool) -> UpstreamUnavailable:
    """The connection ended before the response body was complete."""
    if until_eof and exc is None:
        # RFC 9112 §9.8: a close-delimited body over TLS is complete only after a closure
        # alert (plain TCP reports its FIN as one); an attacker may have cut it.
        return UpstreamUnavailable(
            "response body truncated: TLS connection closed without close_notify", "tls"
        )
    return UpstreamUnavailable("connection lost during response body", "protocol")


def invalid_response(detail: object) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"invalid response: {detail}", "protocol")
