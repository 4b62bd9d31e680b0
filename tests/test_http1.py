from __future__ import annotations

import json

import pytest

from appgateway import http1
from appgateway.errors import (
    CallerForbidden,
    CallerUnauthenticated,
    GatewayError,
    NotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        (200, b"", b"HTTP/1.1 200 OK\r\n"),
        (200, b"Fine", b"HTTP/1.1 200 OK\r\n"),  # the standard phrase wins for known codes
        (502, b"", b"HTTP/1.1 502 Bad Gateway\r\n"),
        (299, b"Custom", b"HTTP/1.1 299 Custom\r\n"),
        (299, b"", b"HTTP/1.1 299 Unknown\r\n"),
        (299, b"Fine \xe9\ttab", b"HTTP/1.1 299 Fine \xe9\ttab\r\n"),  # obs-text, HTAB
        (299, b"Fine\x7fX", b"HTTP/1.1 299 Unknown\r\n"),  # DEL
        (299, b"a\x00b", b"HTTP/1.1 299 Unknown\r\n"),
        (299, b"a\x1bb", b"HTTP/1.1 299 Unknown\r\n"),
    ],
)
def test_status_line(status: int, reason: bytes, line: bytes) -> None:
    assert http1.status_line(status, reason) == line


@pytest.mark.parametrize(
    ("kwargs", "framing"),
    [
        ({"content_length": 5, "chunked": False, "close": False}, b"Content-Length: 5\r\n"),
        (
            {"content_length": None, "chunked": True, "close": False},
            b"Transfer-Encoding: chunked\r\n",
        ),
        ({"content_length": None, "chunked": False, "close": True}, b"Connection: close\r\n"),
        (
            {"content_length": 0, "chunked": False, "close": True},
            b"Content-Length: 0\r\nConnection: close\r\n",
        ),
        (
            {"content_length": None, "chunked": True, "close": False, "codings": b"gzip"},
            b"Transfer-Encoding: gzip, chunked\r\n",
        ),
    ],
)
def test_response_head_framing(kwargs: dict[str, object], framing: bytes) -> None:
    head = http1.response_head(200, b"", [(b"X-A", b"1"), (b"x-a", b"2")], **kwargs)  # type: ignore[arg-type]
    assert head == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\n" + framing + b"\r\n"


@pytest.mark.parametrize(
    ("length", "chunked", "expected"),
    [
        (None, False, b"GET /p?q HTTP/1.1\r\nHost: h\r\n\r\n"),
        (3, False, b"GET /p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"),
        (None, True, b"GET /p?q HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
)
def test_request_head(length: int | None, chunked: bool, expected: bytes) -> None:
    head = http1.request_head(
        b"GET", b"/p?q", [(b"Host", b"h")], content_length=length, chunked=chunked
    )
    assert head == expected


@pytest.mark.parametrize(
    ("data", "encoded"),
    [(b"abc", b"3\r\nabc\r\n"), (b"x" * 26, b"1a\r\n" + b"x" * 26 + b"\r\n")],
)
def test_chunk(data: bytes, encoded: bytes) -> None:
    assert http1.chunk(data) == encoded


def test_error_response_json() -> None:
    data = http1.error_response(NotFound("service with name x not found"), close=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Type: application/json;charset=UTF-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" not in head
    assert json.loads(body) == {"code": 404, "error": "service with name x not found"}


class _Teapot(GatewayError):
    """A class with two extra fields and no JSON body: both kinds of error carry them."""

    status = 418
    json_body = False
    response_headers = ((b"X-One", b"1"), (b"Retry-After", b"5"))


@pytest.mark.parametrize(
    ("error", "close", "expected"),
    [
        (
            NotFound("gone"),
            False,
            b"HTTP/1.1 404 Not Found\r\n"
            b"Content-Type: application/json;charset=UTF-8\r\n"
            b"Content-Length: 28\r\n\r\n"
            b'{"code":404,"error":"gone"}\n',
        ),
        (
            CallerUnauthenticated("Proxy-Authorization is missing"),
            False,
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Content-Type: application/json;charset=UTF-8\r\n"
            b'Proxy-Authenticate: Bearer realm="appgateway"\r\n'
            b"Content-Length: 54\r\n\r\n"
            b'{"code":407,"error":"Proxy-Authorization is missing"}\n',
        ),
        (
            CallerForbidden("no"),
            True,
            b"HTTP/1.1 403 Forbidden\r\n"
            b"Content-Type: application/json;charset=UTF-8\r\n"
            b"Content-Length: 26\r\n"
            b"Connection: close\r\n\r\n"
            b'{"code":403,"error":"no"}\n',
        ),
        (
            _Teapot("x"),
            True,
            b"HTTP/1.1 418 I'm a Teapot\r\n"
            b"X-One: 1\r\nRetry-After: 5\r\n"
            b"Content-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
        ),
    ],
)
def test_error_response_carries_the_class_fields(
    error: GatewayError, close: bool, expected: bytes
) -> None:
    assert http1.error_response(error, close=close) == expected


@pytest.mark.parametrize("error", [UpstreamUnavailable("refused"), UpstreamTimeout("slow")])
def test_transport_errors_have_empty_body(error: UpstreamUnavailable | UpstreamTimeout) -> None:
    data = http1.error_response(error, close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b""
    assert b"Content-Length: 0" in head and b"Connection: close" in head
    assert b"Content-Type" not in head


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"chunked", (None, True)),
        (b"Chunked", (None, True)),
        (b"gzip, chunked", (b"gzip", True)),
        (b"gzip,chunked", (b"gzip", True)),
        (b"gzip", (b"gzip", False)),
        (b"chunked, gzip", (b"chunked, gzip", False)),  # not final: read until close
        (b"gzip,  deflate , chunked", (b"gzip, deflate", True)),
        (b" , ", (None, False)),
    ],
)
def test_split_transfer_codings(value: bytes, expected: tuple[bytes | None, bool]) -> None:
    assert http1.split_transfer_codings(value) == expected


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        (b"GET", [], True),
        (b"HEAD", [], True),
        (b"OPTIONS", [], True),
        (b"TRACE", [], True),
        (b"PUT", [], True),
        (b"DELETE", [], True),
        (b"POST", [], False),
        (b"PATCH", [], False),
        (b"LOCK", [], False),
        (b"POST", [(b"Idempotency-Key", b"k")], True),
        (b"PATCH", [(b"x-idempotency-key", b"k")], True),
        (b"POST", [(b"X-Idempotency", b"k")], False),
    ],
)
def test_replayable(method: bytes, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert http1.replayable(method, headers) is expected


@pytest.mark.parametrize(
    ("status", "method", "allowed"),
    [
        (200, b"GET", True),
        (200, b"HEAD", False),
        (204, b"GET", False),
        (304, b"GET", False),
        (100, b"GET", False),
        (404, b"POST", True),
    ],
)
def test_body_allowed(status: int, method: bytes, allowed: bool) -> None:
    assert http1.body_allowed(status, method) is allowed
