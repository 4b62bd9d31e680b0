from __future__ import annotations

import errno
import socket
import ssl

import pytest

from appgateway import failures
from appgateway.errors import UpstreamUnavailable


def _verify_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "x")
    error.verify_message = "unable to get local issuer certificate"
    return error


@pytest.mark.parametrize(
    ("exc", "message", "kind"),
    [
        (ConnectionRefusedError(), "connection refused", "connect"),
        (ConnectionResetError(), "connection reset", "connect"),
        (socket.gaierror(-2, "Name or service not known"), "host not found", "connect"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable", "connect"),
        (OSError(errno.EMFILE, "Too many open files"), "too many open files", "connect"),
        (EOFError(), "EOFError", "connect"),
        (
            _verify_error(),
            "TLS handshake failed: certificate verify failed: unable to get local issuer "
            "certificate",
            "tls",
        ),
    ],
)
def test_connect_failed(exc: BaseException, message: str, kind: str) -> None:
    error = failures.connect_failed(exc)
    assert isinstance(error, UpstreamUnavailable)
    assert (error.message, error.kind, error.status, error.body()) == (message, kind, 502, b"")


@pytest.mark.parametrize(
    ("exc", "tls", "got_bytes", "message", "kind"),
    [
        (None, False, False, "connection closed before response headers", "protocol"),
        (None, False, True, "connection closed before response headers", "protocol"),
        (
            None,
            True,
            False,
            "TLS: connection closed by the target before response headers"
            " (client certificate rejected?)",
            "tls",
        ),
        (None, True, True, "connection closed before response headers", "protocol"),
        (
            ConnectionResetError(),
            False,
            False,
            "connection lost before response headers: connection reset",
            "protocol",
        ),
    ],
)
def test_lost_before_head(
    exc: Exception | None, tls: bool, got_bytes: bool, message: str, kind: str
) -> None:
    error = failures.lost_before_head(exc, tls, got_bytes)
    assert (error.message, error.kind) == (message, kind)


@pytest.mark.parametrize(
    ("exc", "until_eof", "message", "kind"),
    [
        (None, True, "response body truncated: TLS connection closed without close_notify", "tls"),
        (None, False, "connection lost during response body", "protocol"),
        (ConnectionResetError(), True, "connection lost during response body", "protocol"),
    ],
)
def test_lost_in_body(exc: Exception | None, until_eof: bool, message: str, kind: str) -> None:
    error = failures.lost_in_body(exc, until_eof)
    assert (error.message, error.kind) == (message, kind)


def test_invalid_response_names_the_parser_error() -> None:
    error = failures.invalid_response("Invalid status code")
    assert (error.message, error.kind) == ("invalid response: Invalid status code", "protocol")
