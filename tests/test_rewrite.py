from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appgateway.model import Headers
from appgateway.rewrite import (
    MAX_LOCATION,
    _remove_dot_segments,
    rewrite_location,
    rewrite_status,
    should_rewrite_location,
)
from appgateway.urls import parse_target


@pytest.mark.parametrize(
    ("status", "before", "expected_status", "after"),
    [
        (500, [], 502, [(b"Target-System-Status", b"500")]),
        (503, [(b"A", b"1")], 502, [(b"A", b"1"), (b"Target-System-Status", b"503")]),
        (599, [], 502, [(b"Target-System-Status", b"599")]),
        (
            504,
            [(b"target-system-status", b"x"), (b"B", b"2"), (b"Target-System-Status", b"y")],
            502,
            [(b"Target-System-Status", b"504"), (b"B", b"2")],
        ),
        (200, [], 200, []),
        (404, [(b"Target-System-Status", b"x")], 404, [(b"Target-System-Status", b"x")]),
        (499, [], 499, []),
        (600, [], 600, []),
        (301, [], 301, []),
    ],
)
def test_rewrite_status(status: int, before: Headers, expected_status: int, after: Headers) -> None:
    headers = list(before)
    assert rewrite_status(status, headers) == expected_status
    assert headers == after


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (300, True),
        (301, True),
        (302, True),
        (303, True),
        (307, True),
        (308, True),
        (399, True),
        (201, True),
        (200, False),
        (202, False),
        (204, False),
        (400, False),
        (500, False),
    ],
)
def test_should_rewrite_location(status: int, expected: bool) -> None:
    assert should_rewrite_location(status) is expected


# behaviour.md §10.3: (targetUrl, URL sent upstream, upstream Location, base, new Location).
SPEC_ROWS = [
    (
        "http://h/v1/orders",
        "http://h/v1/orders",
        "/v1/orders/42",
        "/shop/orders",
        "/shop/orders/42",
    ),
    (
        "https://h/api/v1",
        "https://h/api/v1/x",
        "https://H:9443/api/v1/some?x=1#f",
        "/app/service",
        "/app/service/some?x=1#f",
    ),
    (
        "https://h/api/v1",
        "https://h/api/v1",
        "https://h/api/v1/a%2Fb",
        "/app/svc/entry",
        "/app/svc/entry/a%2Fb",
    ),
    ("https://h/api", "https://h/api/orders", "https://h/api/orders/7", "", "/orders/7"),
    ("https://h/api/v1", "https://h/api/v1", "https://h/api/v10/x", "/a/s", "https://h/api/v10/x"),
    (
        "https://h/api/v1",
        "https://h/api/v1",
        "https://other/api/v1/x",
        "/a/s",
        "https://other/api/v1/x",
    ),
    ("https://h/api/v1", "https://h/api/v1", "ftp://h/api/v1", "/a/s", "ftp://h/api/v1"),
    ("https://h/api/v1", "https://h/api/v1", "https://h/api/v10/x", "", "https://h/api/v10/x"),
    ("https://h/api/v1", "https://h/api/v1", "ftp://h/api/v1", "/a/s/e", "ftp://h/api/v1"),
]

MORE_ROWS = [
    # Relative references resolve against the URL sent upstream.
    ("http://h/v1/orders", "http://h/v1/orders/1", "2", "/shop/orders", "/shop/orders/2"),
    ("http://h/v1/orders", "http://h/v1/orders/a/b", "../c", "/shop/orders", "/shop/orders/c"),
    ("http://h/v1/orders", "http://h/v1/orders/a?q=1", "?page=2", "/s/o", "/s/o/a?page=2"),
    ("http://h/v1/orders", "http://h/v1/orders/a", "//h/v1/orders/z", "/s/o", "/s/o/z"),
    ("http://h/v1/orders", "http://h/v1/orders/a", "//x/v1/orders/z", "/s/o", "//x/v1/orders/z"),
    ("http://h/v1/orders", "http://h/v1/orders", "/v1/other", "/s/o", "/v1/other"),
    ("http://h/v1/orders", "http://h/v1/orders/a", "/v1/orders/./b/../c", "/s/o", "/s/o/c"),
    # The target itself, with and without a trailing slash; the caller's base alone.
    ("http://h/api", "http://h/api", "http://h/api", "/a/s", "/a/s"),
    ("http://h/api", "http://h/api", "http://h/api/", "/a/s", "/a/s/"),
    ("http://h/api/", "http://h/api/", "http://h/api/x", "/a/s", "/a/s/x"),
    ("http://h/api/", "http://h/api/", "http://h/api", "/a/s", "/a/s"),
    ("http://h/api", "http://h/api", "http://h/api?x=1", "", "/?x=1"),
    ("http://h/api", "http://h/api", "http://h/api", "", "/"),
    ("http://h/api", "http://h/api", "http://h/api/#top", "", "/#top"),
    # A root or empty target path matches every path.
    ("http://h", "http://h/", "/x/y", "/a/s", "/a/s/x/y"),
    ("http://h/", "http://h/", "http://h/x%20y?q", "/a/s", "/a/s/x%20y?q"),
    ("http://h", "http://h/", "http://h", "", "/"),
    # Decoded comparison of the leading segments; the remaining escaping is kept.
    ("http://h/caf%C3%A9", "http://h/caf%C3%A9", "/caf%c3%a9/r%2fx", "/a/s", "/a/s/r%2fx"),
    ("http://h/a%2Fb", "http://h/a%2Fb", "/a/b/x", "/a/s", "/a/b/x"),
    ("http://h/Api", "http://h/Api", "/api/x", "/a/s", "/api/x"),
    # Hostname compare ignores case and port, not scheme.
    (
        "https://H.Example/api",
        "https://h.example/api",
        "http://h.EXAMPLE:81/api/x",
        "/a/s",
        "/a/s/x",
    ),
    ("http://[::1]:8080/api", "http://[::1]:8080/api", "http://[::1]/api/x", "/a/s", "/a/s/x"),
    ("http://h/api", "http://h/api", "mailto:h/api/x", "/a/s", "mailto:h/api/x"),
    # Unparsable values are left unchanged.
    ("http://h/api", "http://h/api", "http://h/api/%zz", "/a/s", "http://h/api/%zz"),
    ("http://h/api", "http://h/api", "http://h/api/x#%zz", "/a/s", "http://h/api/x#%zz"),
    # A query is verbatim, so a stray `%` there (in either URL) does not block the rewrite.
    ("http://h/api", "http://h/api?q=100%", "/api/x?p=5%", "/a/s", "/a/s/x?p=5%"),
    ("http://h/api", "http://h/api", "http://h:port/api/x", "/a/s", "http://h:port/api/x"),
    ("http://h/api", "http://h/api", "http://[::1/api/x", "/a/s", "http://[::1/api/x"),
    ("http://h/api", "http://h/api", "http://h/api/\x01", "/a/s", "http://h/api/\x01"),
    ("http://h/api", "http://h/api", "1http://h/api/x", "/a/s", "1http://h/api/x"),
]


@pytest.mark.parametrize(
    ("target_url", "sent", "location", "base", "expected"), SPEC_ROWS + MORE_ROWS
)
def test_rewrite_location(
    target_url: str, sent: str, location: str, base: str, expected: str
) -> None:
    target = parse_target(target_url)
    assert rewrite_location(location, sent, target, base) == expected


# Hostile Location values (hardening): open redirects in host routing, and size.
HOSTILE_ROWS = [
    # An empty first remaining segment would make `//evil.example/x`, a network-path
    # reference: the result stays path-absolute on the gateway.
    ("http://h/api", "http://h/api", "http://h/api//evil.example/x", "", "/.//evil.example/x"),
    ("http://h/api", "http://h/api", "/api//evil.example", "", "/.//evil.example"),
    ("http://h", "http://h/", "//h//evil.example/x", "", "/.//evil.example/x"),
    ("http://h/api", "http://h/api", "/api/\\evil.example/x", "", "/./\\evil.example/x"),
    # With a path base the result cannot start with `//`.
    ("http://h/api", "http://h/api", "/api//evil.example/x", "/a/s", "/a/s//evil.example/x"),
]


@pytest.mark.parametrize(("target_url", "sent", "location", "base", "expected"), HOSTILE_ROWS)
def test_rewritten_location_stays_on_the_gateway(
    target_url: str, sent: str, location: str, base: str, expected: str
) -> None:
    target = parse_target(target_url)
    new = rewrite_location(location, sent, target, base)
    assert new == expected
    assert not new.startswith(("//", "/\\"))


def test_location_over_the_limit_is_left_untouched() -> None:
    target = parse_target("http://h/api")
    location = "/api/" + "x" * MAX_LOCATION
    assert rewrite_location(location, "http://h/api", target, "/a/s") == location
    short = "/api/" + "x" * (MAX_LOCATION - 5)
    assert rewrite_location(short, "http://h/api", target, "/a/s") == "/a/s/" + "x" * (
        MAX_LOCATION - 5
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/" + "../" * 340_000, "/"),
        ("/" + "./" * 500_000, "/"),
        ("/a" * 500_000, "/a" * 500_000),
        ("/x/.." * 200_000, "/"),
    ],
    ids=["dotdot", "dot", "segments", "pairs"],
)
def test_dot_segment_removal_of_a_megabyte_is_linear(path: str, expected: str) -> None:
    """A 3xx with a 1 MB Location blocked the event loop for 11-14 s (quadratic slicing);
    linear, these take milliseconds. (Not a benchmark: the bound is 100x the expected.)"""
    start = time.process_time()
    result = _remove_dot_segments(path)
    assert time.process_time() - start < 1.0
    assert result == expected


def test_megabyte_location_is_answered_at_once() -> None:
    target = parse_target("http://h/api")
    location = "/" + "../" * 340_000
    start = time.process_time()
    assert rewrite_location(location, "http://h/api", target, "/a/s") == location
    assert time.process_time() - start < 0.1


def reference_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 written as the RFC states it (input and output buffers)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            out = out[: max(out.rfind("/"), 0)]
        elif inp == "/..":
            inp = "/"
            out = out[: max(out.rfind("/"), 0)]
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end < 0 else end
            out, inp = out + inp[:end], inp[end:]
    return out


RFC_EXAMPLES = [
    ("/a/b/c/./../../g", "/a/g"),
    ("mid/content=5/../6", "mid/6"),
    ("/./", "/"),
    ("/..", "/"),
    ("/a/..", "/"),
    ("a/..", "/"),
    ("../a", "a"),
    ("./a/./b/.", "a/b/"),
    ("/a/b/..", "/a/"),
    (".", ""),
    ("..", ""),
    ("", ""),
]


@pytest.mark.parametrize(("path", "expected"), RFC_EXAMPLES)
def test_remove_dot_segments_rfc_examples(path: str, expected: str) -> None:
    assert _remove_dot_segments(path) == expected
    assert reference_remove_dot_segments(path) == expected


@given(st.text(alphabet="./a", max_size=40))
def test_remove_dot_segments_agrees_with_the_rfc_text(path: str) -> None:
    assert _remove_dot_segments(path) == reference_remove_dot_segments(path)
