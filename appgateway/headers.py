"""Header filtering in both directions, the Access-Token override and request-parameter headers.

Everything works on the raw `(name, value)` byte pairs of `model.Headers`; names compare
ignoring ASCII case, and order and repeats are kept because some APIs care (Set-Cookie, Via).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

from appgateway.model import Headers, ParamMap

PROXY_AUTHORIZATION: Final = b"proxy-authorization"
"""The caller's own credential for the gateway (`--caller-auth`): hop-by-hop, never sent on."""

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        PROXY_AUTHORIZATION,
    }
)

# Removed from the caller's request (behaviour.md §4 step 2). Content-Length too: the gateway
# frames the outbound body itself, and a stale length would corrupt the exchange.
_OUTBOUND_DROP: Final = HOP_BY_HOP | {
    b"host",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-client-cert",
    b"content-length",
}

# The server re-frames the response body, so the upstream length is not relayed either.
_RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length"}

IGNORED_PARAMETER_HEADERS: Final = frozenset(
    {"host", "content-length"} | {name.decode() for name in HOP_BY_HOP}
)
"""Lower-case request-parameter header names that the gateway controls and never adds."""

ACCESS_TOKEN: Final = b"access-token"
REQUEST_ID: Final = b"x-request-id"
VIA: Final = b"via"

# Lower-cased field names by their spelling on the wire. A request looks up about ten names;
# a dict hit costs a fraction of a `bytes.lower()` call and its new object. Bounded: names a
# caller or an upstream makes up are lowered afresh once it is full.
_LOWER: Final[dict[bytes, bytes]] = {}
_LOWER_MAX: Final = 1024


def lower_name(name: bytes) -> bytes:
    """`name.lower()`, remembered for the names seen first."""
    low = _LOWER.get(name)
    if low is None:
        low = name.lower()
        if len(_LOWER) < _LOWER_MAX:
            _LOWER[name] = low
    return low


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]")


def _without(headers: Headers, drop: frozenset[bytes]) -> Headers:
    """Drop `drop` and every field named by a Connection field, in one pass.

    `drop` always contains `connection`, so the named fields are collected while dropping.
    """
    out: Headers = []
    named: set[bytes] | None = None
    for name, value in headers:
        low = lower_name(name)
        if low in drop:
            if low == b"connection":
                named = _named_by(value, named)
            continue
        out.append((name, value))
    return _drop_named(out, named)


def _named_by(connection: bytes, named: set[bytes] | None) -> set[bytes]:
    """Adds the field names a Connection value lists to `named` (made when None)."""
    named = set() if named is None else named
    named.update(token.strip().lower() for token in connection.split(b","))
    return named


def _drop_named(fields: Headers, named: set[bytes] | None) -> Headers:
    return [(n, v) for n, v in fields if lower_name(n) not in named] if named else fields


def outbound_headers(caller: Headers) -> Headers:
    """The caller's fields that may travel upstream (behaviour.md §4 steps 1-2)."""
    return caller_fields(caller)[0]


def caller_fields(
    caller: Headers, hop: bytes = b"\x00"
) -> tuple[Headers, bytes | None, bytes | None, bytes | None, bool]:
    """`outbound_headers`, with the first Host, X-Request-Id and Proxy-Authorization values,
    and whether a Via field names `hop` (this gateway's pseudonym: the request went round in
    a loop), in one pass."""
    out: Headers = []
    named: set[bytes] | None = None
    host: bytes | None = None
    request_id: bytes | None = None
    proxy_authorization: bytes | None = None
    looped = False
    for name, value in caller:
        low = lower_name(name)
        if low in _OUTBOUND_DROP:
            if low == b"host":
                if host is None:
                    host = value
            elif low == b"connection":
                named = _named_by(value, named)
            elif low == PROXY_AUTHORIZATION and proxy_authorization is None:
                proxy_authorization = value
            continue
        if low == REQUEST_ID:
            if request_id is None:
                request_id = value
        elif low == VIA and value.find(hop) >= 0:  # (`bytes in bytes` pays for a TypeError)
            looped = True
        out.append((name, value))
    return _drop_named(out, named), host, request_id, proxy_authorization, looped


def response_headers(upstream: Headers) -> Headers:
    """The upstream fields relayed to the caller (behaviour.md §10.4)."""
    return _without(upstream, _RESPONSE_DROP)


def take_access_token(headers: Headers) -> bytes | None:
    """Apply the first half of the Access-Token override (behaviour.md §5.1).

    Only the first field decides; an empty one leaves every Access-Token field in place, so
    it is forwarded like any other header.
    """
    first = get_header(headers, ACCESS_TOKEN)
    if not first:
        return None
    headers[:] = [(n, v) for n, v in headers if lower_name(n) != ACCESS_TOKEN]
    return first


def _check(name: bytes, value: bytes) -> None:
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"header {name.decode()} has a value with CR, LF or NUL")


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Make `name` occur exactly once, keeping the position of its first occurrence."""
    _check(name, value)
    put_header(headers, name, value)


def put_header(headers: Headers, name: bytes, value: bytes) -> None:
    """`set_header` without the field check, for values valid by construction."""
    low = lower_name(name)
    out: Headers = []
    placed = False
    for n, v in headers:
        if lower_name(n) != low:
            out.append((n, v))
        elif not placed:
            out.append((name, value))
            placed = True
    if not placed:
        out.append((name, value))
    headers[:] = out


def has_header(headers: Headers, name: bytes) -> bool:
    low = lower_name(name)
    return any(lower_name(n) == low for n, _ in headers)


def get_header(headers: Headers, name: bytes) -> bytes | None:
    low = lower_name(name)
    for n, v in headers:
        if lower_name(n) == low:
            return v
    return None


def is_ignored_parameter_header(name: str) -> bool:
    return name.lower() in IGNORED_PARAMETER_HEADERS


def add_parameter_headers(headers: Headers, params: ParamMap) -> None:
    """Add request-parameter headers not already set (behaviour.md §4 step 4).

    Presence ignores ASCII case, so a caller's or an auth header always wins. Every field is
    checked before the list changes, so a bad value leaves `headers` untouched.
    """
    if not params:
        return
    present = {lower_name(n) for n, _ in headers}
    added: Headers = []
    for low, fields in _parameter_fields(params):
        if low not in present and fields:
            added.extend(fields)
            present.add(low)
    headers.extend(added)


@lru_cache(maxsize=4096)
def _parameter_fields(params: ParamMap) -> tuple[tuple[bytes, Headers], ...]:
    """Per parameter header (ignored names left out): its lower-case name and its fields,
    encoded and checked once. A bad field raises here, before any list changes."""
    out: list[tuple[bytes, Headers]] = []
    for name, values in params:
        if is_ignored_parameter_header(name):
            continue
        raw_name = name.encode("utf-8")
        fields: Headers = []
        for value in values:
            raw_value = value.encode("utf-8")
            _check(raw_name, raw_value)
            fields.append((raw_name, raw_value))
        out.append((raw_name.lower(), fields))
    return tuple(out)
