"""HTTP/1.1 framing helpers: header blocks as bytes, chunked encoding, status lines. [pure]

Header blocks are assembled with one `b"".join` so the data path never formats text per field.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from appgateway.errors import JSON_CONTENT_TYPE, GatewayError, render_json
from appgateway.model import Headers

CRLF: Final = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """The status line: the standard phrase for known codes (a cached constant), else the
    upstream's own phrase, when it holds only what RFC 9112 §4 allows (HTAB, SP, VCHAR,
    obs-text: no other control byte reaches the caller)."""
    line = _STATUS_LINES.get(status)
    if line is not None:
        return line
    if not reason or _BAD_REASON.search(reason) is not None:
        reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_BAD_REASON: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_IDEMPOTENCY_KEYS: Final = (b"idempotency-key", b"x-idempotency-key")


def replayable(method: bytes, headers: Headers) -> bool:
    """May a request the target may have received be sent again on another connection?

    Only when repeating it changes nothing (RFC 9110 §9.2.2), or the caller marked it with
    an idempotency key (as Go's Transport also honours): a POST on a keep-alive connection
    the target closed without answering may already have been processed.
    """
    if method in _IDEMPOTENT:
        return True
    return any(name.lower() in _IDEMPOTENCY_KEYS for name, _ in headers)


def split_transfer_codings(value: bytes) -> tuple[bytes | None, bool]:
    """A Transfer-Encoding value as (the codings before a final `chunked`, or all of them
    when `chunked` is not last; whether the body is chunked). `gzip, chunked` is
    (b"gzip", True), `chunked` (None, True), `gzip` (b"gzip", False)."""
    codings = [c.strip() for c in value.split(b",") if c.strip()]
    chunked = bool(codings) and codings[-1].lower() == b"chunked"
    if chunked:
        codings.pop()
    return (b", ".join(codings) or None), chunked


def _fields_and_framing(
    parts: list[bytes],
    headers: Headers,
    content_length: int | None,
    chunked: bool,
    codings: bytes | None = None,
) -> None:
    """Appends each field as four pieces and the framing field: the head is then joined once,
    where a `name + b": " + value + CRLF` per field would allocate three times each."""
    for name, value in headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(CRLF)
    if chunked:
        if codings:
            parts.append(b"Transfer-Encoding: %s, chunked\r\n" % codings)
        else:
            parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts.append(b"Content-Length: ")
        parts.append(str(content_length).encode())
        parts.append(CRLF)


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    content_length: int | None,
    chunked: bool,
    close: bool,
    codings: bytes | None = None,
    keep_alive: bytes = b"",
) -> bytes:
    """Status line, relayed headers and the framing the gateway chose. `codings` are the
    target's transfer codings other than chunked (gzip), which stay on the body.
    `keep_alive` (a `keep_alive_field`) goes on a response that keeps the connection."""
    parts = [status_line(status, reason)]
    _fields_and_framing(parts, headers, content_length, chunked, codings)
    if close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive:
        parts.append(keep_alive)
    parts.append(CRLF)
    return b"".join(parts)


def request_head(
    method: bytes, target: bytes, headers: Headers, *, content_length: int | None, chunked: bool
) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _fields_and_framing(parts, headers, content_length, chunked)
    parts.append(CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _complete(
    status: int,
    body: bytes,
    close: bool,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    keep_alive: bytes = b"",
) -> bytes:
    headers: Headers = [(b"Content-Type", JSON_CONTENT_TYPE)] if body else []
    headers.extend(extra)
    head = response_head(
        status,
        b"",
        headers,
        content_length=len(body),
        chunked=False,
        close=close,
        keep_alive=keep_alive,
    )
    return head + body


def error_response(error: GatewayError, *, close: bool, keep_alive: bytes = b"") -> bytes:
    """A complete gateway-made response: JSON body, or empty for transport failures, and the
    fields its class needs (Proxy-Authenticate for a 407)."""
    return _complete(error.status, error.body(), close, error.response_headers, keep_alive)


def keep_alive_field(seconds: float) -> bytes:
    """`Keep-Alive: timeout=N` (RFC 9112 appendix: the de facto field), one second short of
    the real idle limit, so that a client which honours it closes first."""
    return b"Keep-Alive: timeout=%d\r\n" % max(1, int(seconds) - 1)


def simple_error(status: int, message: str, *, close: bool = True) -> bytes:
    """Errors raised by the HTTP layer itself (malformed request, head too large)."""
    return _complete(status, render_json(status, message), close)


def body_allowed(status: int, method: bytes) -> bool:
    """HEAD, 1xx, 204 and 304 responses never carry a body (RFC 9112 §6.3)."""
    return not (method == b"HEAD" or status < 200 or status in (204, 304))
