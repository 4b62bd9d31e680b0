"""Path safety: no request target or Host header steers the gateway anywhere but the target.

Two well-behaved servers listen on loopback: the configured target and a decoy that nothing
in the registry names. Whatever path, absolute-form target or Host header a caller sends, a
request that leaves the gateway reaches only the target, with the target's own authority as
`Host` and the target's base path in front; the decoy never sees a connection. The gateway
may refuse (400, 404, 431) but never fails (5xx) on its own (behaviour.md §2, §3, §11).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import (
    Client,
    ConnectionClosed,
    Gateway,
    api,
    application,
    gateway_factory_for,
    request,
    service,
)
from tests.e2e.faulty import RawServer, crash_signs, recorder

pytestmark = pytest.mark.timeout(120)

DECOY = "DECOYPORT"
"""Replaced by the decoy's port when the request is sent."""
TARGET = "TARGETPORT"
BASE = "/base"


@dataclass
class Setup:
    gateway: Gateway
    target: RawServer
    decoy: RawServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder: Path = tmp_path_factory.mktemp("path-safety")
    with recorder() as target, recorder() as decoy, gateway_factory_for(folder) as make:
        confined = application("c", [service("s", [api(target.base + BASE)], id="t3")])
        confined["metadata"]["annotations"] = {"appgateway.io/confine-path": "true"}
        docs = [
            application("p", [service("s", [api(target.base + BASE)], id="t1")]),
            application(
                "q", [service("s", [api(target.base + BASE + "/")], id="t2")], encode_url=False
            ),
            confined,
        ]
        args = ["--proxy-timeout", "2", "--request-timeout", "1"]
        yield Setup(make(docs, args), target, decoy)


TRICKY_SEGMENTS = [
    "..",
    ".",
    "",
    "//",
    "@",
    "%2F",
    "%2f",
    "%2e",
    "%2E%2E",
    "%2e%2e%2f",
    "%00",
    ":",
    "?",
    ";",
    "~",
    "%40",
    "%3A",
    "%5C",
    "p",
    "s",
    "q",
    "http:",
    "evil.example",
    "@evil.example",
    f"127.0.0.1:{DECOY}",
    f"http://127.0.0.1:{DECOY}",
    f"@127.0.0.1:{DECOY}",
    "%C3%A9",
    "%0D%0AHost:%20evil.example",
    "'()*!$&+,=",
]
"""Bytes a strict parser accepts: these requests get routed, and must stay on the target."""

INVALID_SEGMENTS = [
    "%",
    "%zz",
    "%%32%65",
    "\\",
    "..\\..",
    "#",
    "é",
    "\u202e",
    " ",
    "\t",
    "\x00",
    f"x\r\nHost: 127.0.0.1:{DECOY}\r\nX: y",
]
"""Bytes a caller may send but that may be refused (400)."""

URL_CHARS = "abcxyzABC019-._~!$&'()*+,;=:@%/"

segments = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS),
    st.sampled_from(TRICKY_SEGMENTS),
    st.text(alphabet=URL_CHARS, max_size=6),
    st.sampled_from(INVALID_SEGMENTS),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=4),
)

prefixes = st.sampled_from(["/p/s", "/q/s", "/p/s/", "//p/s", "/P/S", "/p", "", "/"])

paths = st.builds(
    lambda prefix, parts, query, fragment: prefix + "/" + "/".join(parts) + query + fragment,
    prefixes,
    st.lists(segments, max_size=5),
    st.one_of(st.just(""), st.builds(lambda s: "?" + s, segments)),
    st.one_of(st.just(""), st.builds(lambda s: "#" + s, segments)),
)

AUTHORITIES = [
    "http://evil.example",
    "https://evil.example:443",
    f"http://127.0.0.1:{DECOY}",
    f"http://user@127.0.0.1:{DECOY}",
    f"http://127.0.0.1:{DECOY}@evil.example",
    f"http://evil.example@127.0.0.1:{DECOY}",
    "http://p-t1.evil.example",
    f"http://p-t1:{DECOY}",
    f"http://[::1]:{DECOY}",
    "HTTP://P-T1",
    "http://q-t2.",
    "http:",
    "//evil.example",
]

targets = st.one_of(
    paths,
    st.builds(lambda a, p: a + p, st.sampled_from(AUTHORITIES), paths),
    st.sampled_from(["*", f"127.0.0.1:{DECOY}", "evil.example:80", "p-t1"]),
)

HOSTS = [
    "p-t1",
    "P-T1:80",
    "q-t2",
    "p-t1.evil.example",
    "p-t1.",
    ".p-t1",
    f"127.0.0.1:{DECOY}",
    f"127.0.0.1:{TARGET}",
    f"localhost:{DECOY}",
    "evil.example",
    f"evil.example:{DECOY}",
    f"[::1]:{DECOY}",
    "[::1]",
    "[p-t1]",
    f"user@127.0.0.1:{DECOY}",
    "p-t1@evil.example",
    "evil.example@p-t1",
    "..",
    "",
    f"p-t1:{DECOY}",
]

hosts = st.one_of(
    st.lists(st.sampled_from(HOSTS), min_size=1, max_size=1),
    st.lists(
        st.one_of(
            st.sampled_from(HOSTS),
            st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8),
        ),
        max_size=2,
    ),
)

methods = st.sampled_from(["GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST"])


def raw_request(method: str, target: str, host_values: list[str], s: Setup) -> bytes:
    def fill(text: str) -> str:
        return text.replace(DECOY, str(s.decoy.port)).replace(TARGET, str(s.target.port))

    lines = [f"{method} {fill(target)} HTTP/1.1".encode()]
    lines += [b"Host: " + fill(value).encode() for value in host_values]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(method=methods, target=targets, host_values=hosts)
def test_requests_reach_only_the_target(
    setup: Setup, method: str, target: str, host_values: list[str]
) -> None:
    s = setup
    s.target.reset()
    contacted = len(s.decoy.connections)
    raw = raw_request(method, target, host_values, s)
    with Client(s.gateway.proxy_port, timeout=5) as client:
        client.send(raw)
        try:
            response = client.read_response(method)
        except ConnectionClosed:
            pytest.fail(f"the gateway closed without answering {raw!r}")
    event(f"status {response.status}, {len(s.target.requests)} forwarded")
    assert response.status < 500, (raw, response.status, response.body)
    assert len(s.decoy.connections) == contacted, f"the decoy was contacted for {raw!r}"
    assert s.target.malformed == [], (raw, s.target.malformed)
    for got in s.target.requests:
        assert got.values("host") == [s.target.authority], (raw, got)
        assert got.target == BASE or got.target.startswith((BASE + "/", BASE + "?")), (raw, got)
    assert s.gateway.proc is not None and s.gateway.proc.poll() is None


def test_gateway_survived_the_property_run(setup: Setup) -> None:
    """Runs after the property test in file order: still serving, and nothing crashed."""
    s = setup
    assert s.gateway.proc is not None and s.gateway.proc.poll() is None
    assert request(s.gateway.proxy_port, "GET", "/p/s/after").status == 200
    assert s.decoy.connections == []
    assert crash_signs(list(s.gateway.raw_lines)) == []


# -- the opt-in confinement of an Application (annotation appgateway.io/confine-path) --------


def confined_path(path: str) -> str:
    """The path a target would serve: decoded once, `\\` and `/` as separators, dot segments
    resolved (the most permissive reading any server might apply)."""
    decoded = unquote(path.split("?", 1)[0]).replace("\\", "/")
    out: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    return "/" + "/".join(out)


@settings(max_examples=200, deadline=None, database=None)
@given(method=methods, parts=st.lists(segments, max_size=6))
def test_confined_application_never_leaves_its_base_path(
    setup: Setup, method: str, parts: list[str]
) -> None:
    s = setup
    s.target.reset()
    raw = raw_request(method, "/c/s/" + "/".join(parts), ["c-host"], s)
    with Client(s.gateway.proxy_port, timeout=5) as client:
        client.send(raw)
        response = client.read_response(method)
    assert response.status < 500, (raw, response.status, response.body)
    for got in s.target.requests:
        assert (confined_path(got.target) + "/").startswith(BASE + "/"), (raw, got.target)


@pytest.mark.parametrize(
    "rest", ["../admin", "a/../../admin", "%2e%2e/admin", "a%2f..%2f..%2fadmin", ".."]
)
def test_confined_application_refuses_a_path_above_its_base(setup: Setup, rest: str) -> None:
    s = setup
    s.target.reset()
    with Client(s.gateway.proxy_port, timeout=5) as client:
        client.send(b"GET /c/s/%s HTTP/1.1\r\nHost: h\r\n\r\n" % rest.encode())
        response = client.read_response()
    assert response.status == 400
    assert response.json() == {"code": 400, "error": "request path leaves the API's base path"}
    assert s.target.requests == []


def test_unconfined_application_forwards_dot_segments_as_sent(setup: Setup) -> None:
    """Kyma's behaviour, kept on purpose (README "Security"): the base path of a targetUrl
    is no boundary unless the Application opts in."""
    s = setup
    s.target.reset()
    with Client(s.gateway.proxy_port, timeout=5) as client:
        client.send(b"GET /p/s/a/../../admin HTTP/1.1\r\nHost: h\r\n\r\n")
        assert client.read_response().status == 200
    (got,) = s.target.requests
    assert got.target == BASE + "/a/../../admin"
