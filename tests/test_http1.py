from __future__ import annotations

import json

import pytest

from appgateway import http1
from appgateway.errors import NotFound, UpstreamTimeout, UpstreamUnavailable


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        (200, b"", b"HTTP/1.1 200 OK\r\n"),
        (200, b"Fine", b"HTTP/1.1 200 OK\r\n"),  # the standard phrase wins for known codes
        (502, b"", b"HTTP/1.1 502 Bad Gateway\r\n"),
        (299, b"Custom", b"HTTP/1.1 299 Custom\r\n"),
        (299, b"", b"HTTP/1.1 299 Unknown\r\n"),
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


@pytest.mark.parametrize("error", [UpstreamUnavailable("refused"), UpstreamTimeout("slow")])
def test_transport_errors_have_empty_body(error: UpstreamUnavailable | UpstreamTimeout) -> None:
    data = http1.error_response(error, close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b""
    assert b"Content-Length: 0" in head and b"Connection: close" in head
    assert b"Content-Type" not in head


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
