from __future__ import annotations

import pytest

from appgateway.headers import (
    IGNORED_PARAMETER_HEADERS,
    add_parameter_headers,
    caller_fields,
    get_header,
    has_header,
    is_ignored_parameter_header,
    lower_name,
    outbound_headers,
    response_headers,
    set_header,
    take_access_token,
)
from appgateway.model import Headers, ParamMap

HOP_BY_HOP = [
    b"Connection",
    b"Proxy-Connection",
    b"Keep-Alive",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authenticate",
    b"Proxy-Authorization",
]


@pytest.mark.parametrize(
    "name",
    [
        *HOP_BY_HOP,
        b"Host",
        b"Expect",
        b"X-Forwarded-Proto",
        b"X-Forwarded-For",
        b"X-Forwarded-Host",
        b"X-Forwarded-Client-Cert",
        b"Content-Length",
        b"host",
        b"CONTENT-LENGTH",
        b"x-forwarded-for",
    ],
)
def test_outbound_drops(name: bytes) -> None:
    caller: Headers = [(b"Accept", b"*/*"), (name, b"v"), (b"X-Request-Id", b"r1")]
    assert outbound_headers(caller) == [(b"Accept", b"*/*"), (b"X-Request-Id", b"r1")]


@pytest.mark.parametrize(
    "name",
    [
        b"Forwarded",
        b"X-Request-Id",
        b"Traceparent",
        b"Cookie",
        b"User-Agent",
        b"Authorization",
        b"Access-Token",
        b"Accept-Encoding",
        b"X-Forwarded-Port",
        b"Content-Type",
    ],
)
def test_outbound_keeps(name: bytes) -> None:
    assert outbound_headers([(name, b"v")]) == [(name, b"v")]


def test_outbound_keeps_order_repeats_and_case() -> None:
    caller: Headers = [
        (b"cookie", b"a=1"),
        (b"Host", b"gw"),
        (b"X-Multi", b"1"),
        (b"Cookie", b"b=2"),
        (b"x-multi", b"2"),
    ]
    assert outbound_headers(caller) == [
        (b"cookie", b"a=1"),
        (b"X-Multi", b"1"),
        (b"Cookie", b"b=2"),
        (b"x-multi", b"2"),
    ]


def test_outbound_drops_connection_named_fields() -> None:
    caller: Headers = [
        (b"Connection", b"keep-alive, X-Secret ,x-other"),
        (b"X-Secret", b"s"),
        (b"X-Keep", b"k"),
        (b"X-OTHER", b"o"),
        (b"connection", b"X-Third"),
        (b"X-Third", b"t"),
    ]
    assert outbound_headers(caller) == [(b"X-Keep", b"k")]


def test_outbound_does_not_mutate_input() -> None:
    caller: Headers = [(b"Host", b"h"), (b"A", b"1")]
    outbound_headers(caller)
    assert caller == [(b"Host", b"h"), (b"A", b"1")]


@pytest.mark.parametrize(
    ("before", "token", "after"),
    [
        (
            [(b"Access-Token", b"Bearer abc"), (b"A", b"1")],
            b"Bearer abc",
            [(b"A", b"1")],
        ),
        (
            [(b"a", b"1"), (b"access-token", b"t1"), (b"ACCESS-TOKEN", b"t2")],
            b"t1",
            [(b"a", b"1")],
        ),
        # An empty first value disables the override; every field is forwarded.
        (
            [(b"Access-Token", b""), (b"Access-Token", b"t2")],
            None,
            [(b"Access-Token", b""), (b"Access-Token", b"t2")],
        ),
        ([(b"A", b"1")], None, [(b"A", b"1")]),
        ([], None, []),
    ],
)
def test_take_access_token(before: Headers, token: bytes | None, after: Headers) -> None:
    headers = list(before)
    assert take_access_token(headers) == token
    assert headers == after


@pytest.mark.parametrize(
    ("before", "name", "value", "after"),
    [
        ([], b"Authorization", b"Basic x", [(b"Authorization", b"Basic x")]),
        (
            [(b"A", b"1"), (b"authorization", b"old"), (b"B", b"2"), (b"AUTHORIZATION", b"o2")],
            b"Authorization",
            b"new",
            [(b"A", b"1"), (b"Authorization", b"new"), (b"B", b"2")],
        ),
        (
            [(b"A", b"1")],
            b"X-Csrf-Token",
            b"",
            [(b"A", b"1"), (b"X-Csrf-Token", b"")],
        ),
    ],
)
def test_set_header(before: Headers, name: bytes, value: bytes, after: Headers) -> None:
    headers = list(before)
    set_header(headers, name, value)
    assert headers == after


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"X-A", b"a\r\nX-Evil: 1"),
        (b"X-A", b"a\nb"),
        (b"X-A", b"a\rb"),
        (b"X-A", b"a\x00b"),
        (b"X A", b"v"),
        (b"X-A:", b"v"),
        (b"", b"v"),
        (b"X\r\nA", b"v"),
    ],
)
def test_set_header_rejects_unsafe(name: bytes, value: bytes) -> None:
    headers: Headers = [(b"X-A", b"old")]
    with pytest.raises(ValueError):
        set_header(headers, name, value)
    assert headers == [(b"X-A", b"old")]


def test_get_and_has_header() -> None:
    headers: Headers = [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert get_header(headers, b"SET-COOKIE") == b"a=1"
    assert has_header(headers, b"set-Cookie")
    assert get_header(headers, b"Cookie") is None
    assert not has_header(headers, b"Cookie")
    assert get_header([(b"X", b"")], b"x") == b""


@pytest.mark.parametrize(
    ("before", "params", "after"),
    [
        ([], (("X-Api-Key", ("k-123",)),), [(b"X-Api-Key", b"k-123")]),
        (
            [(b"A", b"1")],
            (("X-Api-Key", ("k-123",)), ("X-Multi", ("a", "b"))),
            [(b"A", b"1"), (b"X-Api-Key", b"k-123"), (b"X-Multi", b"a"), (b"X-Multi", b"b")],
        ),
        # Present names (any case) win: the caller's or the auth header.
        (
            [(b"authorization", b"Bearer t"), (b"x-api-key", b"mine")],
            (("Authorization", ("Basic x",)), ("X-API-KEY", ("k",)), ("X-New", ("n",))),
            [(b"authorization", b"Bearer t"), (b"x-api-key", b"mine"), (b"X-New", b"n")],
        ),
        # Secret order, not sorted.
        ([], (("Z", ("1",)), ("A", ("2",))), [(b"Z", b"1"), (b"A", b"2")]),
        # The same name twice in other case: the first spelling wins.
        ([], (("X-A", ("1",)), ("x-a", ("2",))), [(b"X-A", b"1")]),
        # Names the gateway controls are ignored.
        (
            [],
            (
                ("Host", ("evil",)),
                ("content-length", ("5",)),
                ("Transfer-Encoding", ("chunked",)),
                ("Connection", ("close",)),
                ("X-Ok", ("1",)),
            ),
            [(b"X-Ok", b"1")],
        ),
        ([], (("X-None", ()),), []),
        ([], (("X-Utf8", ("caf\u00e9",)),), [(b"X-Utf8", "caf\u00e9".encode())]),
        ([], (("X-Empty", ("",)),), [(b"X-Empty", b"")]),
    ],
)
def test_add_parameter_headers(before: Headers, params: ParamMap, after: Headers) -> None:
    headers = list(before)
    add_parameter_headers(headers, params)
    assert headers == after


@pytest.mark.parametrize(
    "params",
    [
        (("X-Ok", ("1",)), ("X-Bad", ("a\r\nb",))),
        (("X-Bad", ("a\x00",)),),
        (("Bad Name", ("v",)),),
    ],
)
def test_add_parameter_headers_rejects_unsafe(params: ParamMap) -> None:
    headers: Headers = [(b"A", b"1")]
    with pytest.raises(ValueError):
        add_parameter_headers(headers, params)
    assert headers == [(b"A", b"1")]


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("Host", True),
        ("content-length", True),
        ("Content-Length", True),
        ("Connection", True),
        ("Keep-Alive", True),
        ("Proxy-Connection", True),
        ("TE", True),
        ("Trailer", True),
        ("Transfer-Encoding", True),
        ("Upgrade", True),
        ("Proxy-Authorization", True),
        ("Proxy-Authenticate", True),
        ("X-Api-Key", False),
        ("Authorization", False),
        ("Accept", False),
    ],
)
def test_is_ignored_parameter_header(name: str, ignored: bool) -> None:
    assert is_ignored_parameter_header(name) is ignored
    assert all(n == n.lower() for n in IGNORED_PARAMETER_HEADERS)


@pytest.mark.parametrize("name", [*HOP_BY_HOP, b"Content-Length", b"content-length"])
def test_response_drops(name: bytes) -> None:
    upstream: Headers = [(b"Content-Type", b"text/plain"), (name, b"v")]
    assert response_headers(upstream) == [(b"Content-Type", b"text/plain")]


def test_response_keeps_repeats_order_and_other_fields() -> None:
    upstream: Headers = [
        (b"Set-Cookie", b"a=1"),
        (b"Connection", b"X-Hop"),
        (b"X-Hop", b"h"),
        (b"Location", b"/x"),
        (b"Set-Cookie", b"b=2"),
        (b"Host", b"kept"),
        (b"X-Forwarded-For", b"kept"),
        (b"Server", b"up"),
    ]
    assert response_headers(upstream) == [
        (b"Set-Cookie", b"a=1"),
        (b"Location", b"/x"),
        (b"Set-Cookie", b"b=2"),
        (b"Host", b"kept"),
        (b"X-Forwarded-For", b"kept"),
        (b"Server", b"up"),
    ]


@pytest.mark.parametrize(
    ("caller", "host", "request_id", "proxy_authorization"),
    [
        ([], None, None, None),
        ([(b"Host", b"gw"), (b"host", b"other")], b"gw", None, None),
        ([(b"x-request-id", b"r1"), (b"X-Request-Id", b"r2")], None, b"r1", None),
        ([(b"X-Request-Id", b"")], None, b"", None),
        ([(b"Connection", b"x-request-id"), (b"X-Request-Id", b"r1")], None, b"r1", None),
        (
            [(b"Connection", b"keep-alive, X-Drop"), (b"X-Drop", b"1"), (b"HOST", b"h:80")],
            b"h:80",
            None,
            None,
        ),
        (
            [(b"Proxy-Authorization", b"Bearer a"), (b"proxy-authorization", b"Bearer b")],
            None,
            None,
            b"Bearer a",
        ),
        ([(b"PROXY-AUTHORIZATION", b"")], None, None, b""),
        (
            [(b"Connection", b"Proxy-Authorization"), (b"Proxy-Authorization", b"x")],
            None,
            None,
            b"x",
        ),
        ([(b"X-Proxy-Authorization", b"x"), (b"Authorization", b"y")], None, None, None),
    ],
)
def test_caller_fields_is_outbound_headers_plus_host_request_id_and_proxy_authorization(
    caller: Headers, host: bytes | None, request_id: bytes | None, proxy_authorization: bytes | None
) -> None:
    assert caller_fields(caller) == (
        outbound_headers(caller),
        host,
        request_id,
        proxy_authorization,
        False,
    )


HOP = b"appgateway-0123abcd"


@pytest.mark.parametrize(
    ("caller", "looped"),
    [
        ([], False),
        ([(b"Via", b"1.1 proxy-a")], False),
        ([(b"Via", b"1.1 appgateway-ffff")], False),
        ([(b"via", b"1.0 x, 1.1 " + HOP)], True),
        ([(b"Via", b"1.1 a"), (b"VIA", b"1.1 " + HOP + b" (comment)")], True),
        ([(b"X-Via", b"1.1 " + HOP)], False),
    ],
)
def test_caller_fields_tells_a_request_that_came_back(caller: Headers, looped: bool) -> None:
    fields, _, _, _, seen = caller_fields(caller, HOP)
    assert seen is looped
    assert fields == outbound_headers(caller)  # Via travels on either way


def test_lower_name_beyond_what_it_remembers() -> None:
    # More distinct names than the memo keeps: every answer is still bytes.lower().
    names = [b"X-Made-Up-%d" % i for i in range(3000)] + [b"Content-TYPE", b"\xc4-Non-ASCII"]
    for _ in range(2):
        assert [lower_name(n) for n in names] == [n.lower() for n in names]
