"""The fault matrix: every way a target, a token endpoint, a caller or the registry can misbehave.

Each test states what the caller sees, and then the same three checks run: no crash (the
process is alive and logged no exception), no hang (the failing request ended within a bound
and a normal request is answered at once) and no leak (nothing is left in flight, and no secret
reached a log line or a response body). Specification: behaviour.md §9-§14, README.md "Status
codes".
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    BASIC_ALICE,
    JSON_CONTENT_TYPE,
    Client,
    Doc,
    Gateway,
    GatewayFactory,
    MockUpstream,
    Response,
    api,
    application,
    closed_port,
    error_body,
    gateway_factory_for,
    request,
    secret,
    service,
    wait_until,
    write_manifest,
)
from tests.e2e.credentials_api import issue, make_ca
from tests.e2e.faulty import (
    GZIP_BODY,
    HUGE_LOCATION,
    RawServer,
    crash_signs,
    fault_server,
    metric,
    recorder,
)

pytestmark = pytest.mark.timeout(30)

PROXY_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
RETRY_LIMIT = 65536
ARGS = [
    "--proxy-timeout",
    str(PROXY_TIMEOUT),
    "--idle-timeout",
    str(IDLE_TIMEOUT),
    "--retry-body-limit",
    str(RETRY_LIMIT),
]

CLIENT_SECRET = "cs-SECRET-oauth"
PASSWORD = "pw-SECRET-basic"
SECRETS = (
    CLIENT_SECRET,
    PASSWORD,
    base64.b64encode(f"user-1:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"client-1:{CLIENT_SECRET}".encode()).decode(),
    "tok-SECRET",
    "csrf-SECRET",
)
"""Values that must never show in a log line or an error body."""

CRLF_VALUE = "a\r\nX-Injected: 1"


@dataclass
class Env:
    gateway: Gateway
    faults: RawServer
    decoy: RawServer
    upstream: MockUpstream
    tls_faults: RawServer


def tls_server_context(folder: Path) -> ssl.SSLContext:
    """A server certificate made now; the gateway reaches it with skipVerify."""
    pair = issue(make_ca("appgateway fault CA"), "127.0.0.1", server=True)
    chain = folder / "fault-server.pem"
    chain.write_text(pair.crt_pem + pair.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    return ctx


def registry(upstream: str, faults: str, decoy_port: int, tls_faults: str = "") -> list[Doc]:
    def oauth(path: str, secret_name: str = "oauth-creds") -> Doc:
        return {"type": "OAuth", "secretName": secret_name, "authenticationUrl": faults + path}

    def csrf(path: str) -> Doc:
        return {
            "type": "Basic",
            "secretName": "basic-creds",
            "csrfInfo": {"tokenEndpointURL": faults + path},
        }

    redirect = f"/redirect/{decoy_port}"
    tls = application("tls", [service("faults", [api(tls_faults)])])
    tls["spec"]["skipVerify"] = True
    return [
        application("ok", [service("mock", [api(upstream)])]),
        tls,
        application(
            "basic",
            [
                service(
                    "faults",
                    [api(faults, credentials={"type": "Basic", "secretName": "basic-creds"})],
                )
            ],
        ),
        application(
            "t",
            [
                service("faults", [api(faults)]),
                service("refused", [api(f"http://127.0.0.1:{closed_port()}/x")]),
            ],
        ),
        application(
            "tok",
            [
                service(name, [api(upstream + "/tok-target", credentials=oauth(path))])
                for name, path in (
                    ("s500", "/status/500"),
                    ("s503", "/status/503"),
                    ("hang", "/hang"),
                    ("badjson", "/token-body/badjson"),
                    ("noaccess", "/token-body/noaccess"),
                    ("emptyaccess", "/token-body/emptyaccess"),
                    ("crlf", "/token-body/crlf"),
                    ("redirect", redirect),
                )
            ],
        ),
        application(
            "csrf",
            [
                service(name, [api(upstream + "/csrf-target", credentials=csrf(path))])
                for name, path in (
                    ("s500", "/status/500"),
                    ("hang", "/hang"),
                    ("redirect", redirect),
                )
            ],
        ),
        application(
            "params",
            [
                service("crlf", [api(upstream + "/crlf-target", params="crlf-headers")]),
                service("crlfq", [api(upstream + "/crlfq-target", params="crlf-query")]),
                service(
                    "oauthcrlf",
                    [
                        api(
                            upstream + "/oauthcrlf-target",
                            credentials=oauth("/token-body/noaccess", "crlf-oauth"),
                        )
                    ],
                ),
            ],
        ),
        secret("oauth-creds", string_data={"clientId": "client-1", "clientSecret": CLIENT_SECRET}),
        secret("basic-creds", string_data={"username": "user-1", "password": PASSWORD}),
        secret("crlf-headers", string_data={"headers": json.dumps({"X-Evil": [CRLF_VALUE]})}),
        secret("crlf-query", string_data={"queryParameters": json.dumps({"q": [CRLF_VALUE]})}),
        secret(
            "crlf-oauth",
            string_data={
                "clientId": "client-1",
                "clientSecret": CLIENT_SECRET,
                "headers": json.dumps({"X-Evil": [CRLF_VALUE]}),
            },
        ),
    ]


@pytest.fixture(scope="module")
def module_env(
    upstream_server: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    folder: Path = tmp_path_factory.mktemp("faults")
    tls = tls_server_context(folder)
    with (
        fault_server() as faults,
        fault_server(tls) as tls_faults,
        recorder() as decoy,
        gateway_factory_for(folder) as make,
    ):
        docs = registry(upstream_server.base, faults.base, decoy.port, tls_faults.base)
        yield Env(make(docs, ARGS), faults, decoy, upstream_server, tls_faults)


@pytest.fixture
def env(module_env: Env, upstream: MockUpstream) -> Iterator[Env]:
    """The shared gateway; after the test, it must still be healthy (no crash, hang or leak)."""
    module_env.faults.reset()
    module_env.tls_faults.reset()
    module_env.decoy.reset()
    yield module_env
    assert_healthy(module_env.gateway, "/ok/mock/after-fault")
    assert module_env.decoy.connections == [], "the decoy was contacted"


def assert_healthy(gateway: Gateway, probe: str) -> None:
    """Alive, serving a normal request promptly, nothing in flight, no crash or secret logged."""
    assert gateway.proc is not None and gateway.proc.poll() is None, gateway.stderr_text()
    start = time.monotonic()
    response = request(gateway.proxy_port, "GET", probe, timeout=5)
    assert response.status == 200, (response.status, response.body)
    assert time.monotonic() - start < 2

    def idle() -> bool:
        text = request(gateway.admin_port, "GET", "/metrics").body.decode()
        return metric(text, "appgateway_inflight_requests") == 0

    assert wait_until(idle, 5) is not None, "requests still counted in flight"
    lines = list(gateway.raw_lines)  # a copy: the reader thread keeps appending
    assert crash_signs(lines) == []
    leaked = [line for line in lines if any(s in line for s in SECRETS)]
    assert leaked == []


def assert_no_secret(response: Response) -> None:
    text = response.body.decode("latin-1") + repr(response.headers)
    assert [s for s in SECRETS if s in text] == []


def timed(
    port: int, target: str, method: str = "GET", body: bytes | None = None
) -> tuple[Response, float]:
    """A request on a fresh connection, and how long it took."""
    start = time.monotonic()
    response = request(port, method, target, body=body, timeout=10)
    return response, time.monotonic() - start


def assert_nothing_reached(upstream: MockUpstream, needle: str) -> None:
    time.sleep(0.2)
    assert upstream.matching(needle) == []


# -- target faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/t/refused/x", "/t/faults/reset-head", "/t/faults/garbage"],
    ids=["connection-refused", "reset-mid-headers", "garbage-response"],
)
def test_unusable_target_gives_502_empty(env: Env, path: str) -> None:
    response, took = timed(env.gateway.proxy_port, path)
    assert (response.status, response.body) == (502, b"")
    assert took < 2


@pytest.mark.parametrize("fault", ["reset-body", "reset-chunked"])
def test_target_reset_mid_body_cuts_the_callers_response(env: Env, fault: str) -> None:
    """The head was already relayed, so the caller can only learn of the failure by the cut:
    the connection closes before the announced length, or without the last chunk."""
    with Client(env.gateway.proxy_port, timeout=10) as client:
        start = time.monotonic()
        client.send(b"GET /t/faults/%s HTTP/1.1\r\nHost: h\r\n\r\n" % fault.encode())
        status, _, headers = client.read_head()
        rest = client.read_to_eof()
        took = time.monotonic() - start
    assert status == 200
    fields = {n.lower(): v for n, v in headers}
    if fault == "reset-body":
        assert fields["content-length"] == "100000"
        assert len(rest) < 100000
    else:
        assert fields["transfer-encoding"] == "chunked"
        assert not rest.endswith(b"0\r\n\r\n")
    assert took < 3


def test_slow_response_headers_give_504_at_proxy_timeout(env: Env) -> None:
    response, took = timed(env.gateway.proxy_port, "/t/faults/slow-head")
    assert (response.status, response.body) == (504, b"")
    assert PROXY_TIMEOUT * 0.9 <= took < PROXY_TIMEOUT + 2, took


def test_stalled_body_is_cut_at_idle_timeout(env: Env) -> None:
    with Client(env.gateway.proxy_port, timeout=10) as client:
        client.send(b"GET /ok/mock/stall/1000 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, headers = client.read_head()
        start = time.monotonic()
        assert status == 200
        length = int({n.lower(): v for n, v in headers}["content-length"])
        body = client.read_to_eof()
        cut_after = time.monotonic() - start
    assert length == 1000 + 1_000_000
    assert len(body) == 1000
    assert IDLE_TIMEOUT * 0.9 <= cut_after < IDLE_TIMEOUT + 2, cut_after
    stalled = env.upstream.wait_for("/stall/", timeout=5)
    assert len(stalled) == 1, "the target's connection was not closed"


@pytest.mark.parametrize("fault", ["close-after", "drop-next"])
def test_target_closing_keep_alive_is_transparent(env: Env, fault: str) -> None:
    """`close-after` closes right after each answer (a race with the next request);
    `drop-next` takes the next request on the same connection and closes unanswered."""
    with Client(env.gateway.proxy_port) as client:
        for index in range(10):
            response = client.request("GET", f"/t/faults/{fault}/{index}")
            assert (response.status, response.body) == (200, b"ok"), index
    seen = env.faults.matching(f"/{fault}/")
    answered = {r.target for r in seen if fault == "close-after" or r.index == 0}
    assert answered == {f"/{fault}/{i}" for i in range(10)}
    if fault == "drop-next":
        assert any(r.index > 0 for r in seen), "a pooled connection was never reused"


RSS_GROWTH_LIMIT_KB = 6 * 1024
"""Well under the 10 MiB sent: the gateway may hold one bounded head (1 MiB from a target,
64 KiB from a caller), never the whole oversized one."""


@pytest.mark.parametrize("fault", ["huge-header/10", "many-headers/10"])
def test_huge_response_header_gives_502_in_bounded_memory(
    gateway_factory: GatewayFactory, upstream: MockUpstream, fault: str
) -> None:
    """10 MiB of response head, as one header field or as 1 KiB fields: 502, and the peak
    RSS grows by far less than the head."""
    with fault_server() as faults:
        docs = [
            application("ok", [service("mock", [api(upstream.base)])]),
            application("t", [service("faults", [api(faults.base)])]),
        ]
        gateway = gateway_factory(docs, ARGS)
        assert request(gateway.proxy_port, "GET", "/ok/mock/warm-up").status == 200
        before = gateway.rss_peak_kb()
        response, took = timed(gateway.proxy_port, f"/t/faults/{fault}")
        growth = gateway.rss_peak_kb() - before
        assert (response.status, response.body) == (502, b"")
        assert took < 5, took
        assert growth < RSS_GROWTH_LIMIT_KB, f"peak RSS grew by {growth} kB"
        assert_healthy(gateway, "/ok/mock/after-fault")


def test_huge_request_header_gives_431_in_bounded_memory(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    """The caller's side of the same fault: one 10 MiB header field (the head limit is 64 KiB,
    behaviour.md §11). A gateway that refuses early closes a socket with unread bytes, and the
    resulting reset may destroy its 431 before we read it: so a cut without an answer is
    accepted too. What counts here is memory, and that nothing is forwarded."""
    gateway = gateway_factory([application("ok", [service("mock", [api(upstream.base)])])])
    assert request(gateway.proxy_port, "GET", "/ok/mock/warm-up").status == 200
    before = gateway.rss_peak_kb()
    with Client(gateway.proxy_port) as client:
        client.send(b"GET /ok/mock/big HTTP/1.1\r\nHost: h\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(160):
                client.send(b"a" * 65536)
            client.send(b"\r\n\r\n")
        answer = client.read_to_eof()
    growth = gateway.rss_peak_kb() - before
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert growth < RSS_GROWTH_LIMIT_KB, f"peak RSS grew by {growth} kB"
    assert upstream.matching("/big") == []
    assert_healthy(gateway, "/ok/mock/after-fault")


# -- hostile targets (hardening) ----------------------------------------------------------------


def faults_of(env: Env, base: str) -> RawServer:
    return env.tls_faults if base.startswith("/tls/") else env.faults


def assert_connection_dropped(faults: RawServer, needle: str) -> None:
    (seen,) = faults.matching(needle)
    conn = faults.connection_of(seen)
    assert wait_until(lambda: conn.gone_at is not None, 3) is not None, "connection kept"


@pytest.mark.parametrize("base", ["/t/faults", "/tls/faults"], ids=["http", "https"])
@pytest.mark.parametrize(
    ("fault", "method", "status", "body"),
    [
        ("glued", "GET", 200, b"first"),
        ("glued", "HEAD", 200, b""),
        ("trailing-garbage", "GET", 200, b"first"),
        ("bodyless-surplus", "GET", 204, b""),
    ],
)
def test_bytes_after_a_response_never_reach_any_caller(
    env: Env, base: str, fault: str, method: str, status: int, body: bytes
) -> None:
    """A target that writes past the end of its response (a second response, or garbage)
    must not change this answer nor become the answer to anyone's next request: the caller
    gets the first response intact, and the connection is dropped, never pooled."""
    faults = faults_of(env, base)
    with Client(env.gateway.proxy_port) as client:
        first = client.request(method, f"{base}/{fault}/1")
        assert (first.status, first.body) == (status, body)
        assert first.header("x-first") == "1"
        assert first.header("x-forged") is None
        # The next request on this caller connection goes to another API...
        other = client.request("GET", "/ok/mock/next-api")
        assert (other.status, other.header("x-forged")) == (200, None)
        assert env.upstream.matching("/next-api"), "the real target was not called"
        # ...and the next one to the same target travels on a new target connection.
        again = client.request("GET", f"{base}/ok/again")
        assert (again.status, again.body, again.header("x-forged")) == (200, b"ok", None)
    (glued,) = faults.matching(f"/{fault}/1")
    (ok,) = faults.matching("/ok/again")
    assert ok.conn != glued.conn
    assert_connection_dropped(faults, f"/{fault}/1")


def test_response_trailers_never_become_headers(env: Env) -> None:
    response = request(env.gateway.proxy_port, "GET", "/t/faults/trailers")
    assert (response.status, response.body) == (200, b"hello")
    names = {name.lower() for name, _ in response.headers}
    assert not names & {"x-trailer-secret", "set-cookie", "trailer"}, response.headers


def test_request_trailers_never_become_headers(env: Env) -> None:
    """An Access-Token sent as a trailer, in the same read as the head, replaced the Basic
    credentials at the target: fields after the header block never join the headers."""
    with Client(env.gateway.proxy_port) as client:
        client.send(
            b"POST /basic/faults/ok/trailer HTTP/1.1\r\nHost: h\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            b"Access-Token: Bearer caller-token\r\nX-Trailer: 1\r\n\r\n"
        )
        response = client.read_response()
    assert response.status == 200
    (seen,) = env.faults.matching("/trailer")
    assert seen.body == b"hello"
    assert (
        seen.value("authorization")
        == "Basic " + base64.b64encode(f"user-1:{PASSWORD}".encode()).decode()
    )
    assert seen.value("access-token") is None
    assert seen.value("x-trailer") is None


@pytest.mark.parametrize("body", [None, b"payload"], ids=["no-body", "buffered-body"])
def test_post_is_not_replayed_when_a_pooled_connection_drops_it(
    env: Env, body: bytes | None
) -> None:
    """The target got the whole POST on a reused connection and closed without answering:
    it may have processed it, so the caller gets 502 rather than a second copy sent."""
    with Client(env.gateway.proxy_port) as client:
        assert client.request("GET", "/t/faults/drop-next/0").status == 200
        response = client.request("POST", "/t/faults/drop-next/1", body=body)
    assert (response.status, response.body) == (502, b"")
    assert len(env.faults.matching("/drop-next/1")) == 1


def test_idempotent_request_is_replayed_when_a_pooled_connection_drops_it(env: Env) -> None:
    with Client(env.gateway.proxy_port) as client:
        assert client.request("GET", "/t/faults/drop-next/0").status == 200
        response = client.request("PUT", "/t/faults/drop-next/1", body=b"payload")
    assert (response.status, response.body) == (200, b"ok")
    assert [r.index for r in env.faults.matching("/drop-next/1")] == [1, 0]


def test_non_chunked_transfer_coding_is_relayed_whole(env: Env) -> None:
    """`Transfer-Encoding: gzip` alone means "read until close": all of it reaches the
    caller, still marked gzip (the gateway never decodes)."""
    response = request(env.gateway.proxy_port, "GET", "/t/faults/te-gzip")
    assert response.status == 200
    assert response.header("transfer-encoding") == "gzip, chunked"
    assert response.body == GZIP_BODY


def test_non_chunked_transfer_coding_to_an_http10_caller_is_502(env: Env) -> None:
    with Client(env.gateway.proxy_port) as client:
        client.send(b"GET /t/faults/te-gzip HTTP/1.0\r\n\r\n")
        answer = client.read_to_eof()
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:100]


def test_control_bytes_in_a_reason_phrase_are_not_relayed(env: Env) -> None:
    with Client(env.gateway.proxy_port) as client:
        client.send(b"GET /t/faults/reason-del HTTP/1.1\r\nHost: h\r\n\r\n")
        client.sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += client.sock.recv(4096)
    assert data.split(b"\r\n", 1)[0] == b"HTTP/1.1 299 Unknown"


def test_megabyte_location_does_not_stall_the_gateway(env: Env) -> None:
    """A 1 MB `../` Location kept the event loop busy for 11-14 s (every API stalled).
    Now it is relayed untouched (over 8 KiB) at once, and health answers meanwhile."""
    done: list[float] = []

    def health() -> None:
        time.sleep(0.05)
        start = time.monotonic()
        request(env.gateway.admin_port, "GET", "/v1/health", timeout=10)
        done.append(time.monotonic() - start)

    prober = threading.Thread(target=health)
    prober.start()
    response, took = timed(env.gateway.proxy_port, "/t/faults/huge-location")
    prober.join(15)
    assert response.status == 302
    assert response.header("location") == HUGE_LOCATION
    assert took < 3, took
    assert done and done[0] < 2, done


def test_token_with_crlf_is_never_cached(env: Env) -> None:
    """A token the gateway can never send is a token error (502), fetched afresh each time."""
    for _ in range(2):
        response = request(env.gateway.proxy_port, "GET", "/tok/crlf/x")
        assert response.status == 502
        assert response.json()["error"] == (
            "failed to unmarshal token response body: "
            "access_token has characters not allowed in a header"
        )
        assert_no_secret(response)
    assert len(env.faults.matching("/token-body/crlf")) == 2
    assert_nothing_reached(env.upstream, "/tok-target")


def test_close_delimited_tls_body_with_close_notify_is_complete(env: Env) -> None:
    response = request(env.gateway.proxy_port, "GET", "/tls/faults/close-delimited/notify")
    assert (response.status, response.body) == (200, b"d" * 10000)


def test_close_delimited_tls_body_cut_by_a_bare_fin_is_cut(env: Env) -> None:
    """RFC 9112 §9.8: a body that ends with the connection is complete only after a TLS
    closure alert. A bare FIN may be an attacker's truncation: the caller's response is cut
    (no last chunk), and the access line says why."""
    with Client(env.gateway.proxy_port) as client:
        client.send(b"GET /tls/faults/close-delimited/fin HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, headers = client.read_head()
        rest = client.read_to_eof()
    assert status == 200
    assert ("Transfer-Encoding", "chunked") in headers
    assert not rest.endswith(b"0\r\n\r\n")
    line = env.gateway.wait_log(
        lambda doc: doc.get("msg") == "request" and "close-delimited/fin" in str(doc.get("path"))
    )
    assert line is not None and "truncated" in str(line.get("error")), line


def test_close_delimited_plain_body_ends_with_fin(env: Env) -> None:
    response = request(env.gateway.proxy_port, "GET", "/t/faults/close-delimited/fin")
    assert (response.status, response.body) == (200, b"d" * 10000)


# -- token and CSRF endpoint faults ----------------------------------------------------------


def token_error(env: Env, service_name: str) -> tuple[str, float] | None:
    """The expected message for a token/CSRF fault, and the longest it may take."""
    base = env.faults.base
    slow = PROXY_TIMEOUT + 2
    redirect = f"{base}/redirect/{env.decoy.port}"
    expected: dict[str, tuple[str, float]] = {
        "s500": (f"incorrect response code '500' while getting token from {base}/status/500", 2),
        "s503": (f"incorrect response code '503' while getting token from {base}/status/503", 2),
        "hang": (f"failed to make a request to '{base}/hang': timeout after 1s", slow),
        "redirect": (f"incorrect response code '302' while getting token from {redirect}", 2),
    }
    return expected.get(service_name)


@pytest.mark.parametrize(
    "path",
    [
        "/tok/s500/x",
        "/tok/s503/x",
        "/tok/hang/x",
        "/tok/badjson/x",
        "/tok/noaccess/x",
        "/tok/emptyaccess/x",
        "/tok/crlf/x",
        "/tok/redirect/x",
        "/csrf/s500/x",
        "/csrf/hang/x",
        "/csrf/redirect/x",
    ],
)
def test_token_and_csrf_endpoint_faults_give_502_json(env: Env, path: str) -> None:
    """The target is never called, a redirect is never followed, and the fetch is bounded by
    --proxy-timeout. Unusable token bodies share one message prefix (behaviour.md §11)."""
    response, took = timed(env.gateway.proxy_port, path, "POST", b"payload")
    assert response.status == 502, response.body
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert_no_secret(response)
    answer = response.json()
    assert answer["code"] == 502
    known = token_error(env, path.split("/")[2])
    if known is None:
        assert answer["error"].startswith("failed to unmarshal token response body: "), answer
        assert took < 2
    else:
        message, bound = known
        assert response.body == error_body(502, message)
        if path.split("/")[2] == "hang":
            assert PROXY_TIMEOUT * 0.9 <= took, took
        assert took < bound, took
    assert len(env.faults.requests) == 1, "the token/CSRF endpoint was called more than once"
    assert_nothing_reached(env.upstream, "-target")
    assert env.decoy.requests == []


# -- caller faults ----------------------------------------------------------------------------


def test_caller_disconnects_mid_upload(env: Env) -> None:
    """A body over --retry-body-limit streams; when the caller leaves, so does the upstream
    request, and the target sees its connection closed."""
    total = 10 * 1024 * 1024
    with Client(env.gateway.proxy_port) as client:
        client.send(
            b"POST /ok/mock/upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % total
        )
        client.send(b"u" * (1024 * 1024))
        assert wait_until(lambda: bool(env.upstream.matching("/upload")), 5) is not None
    got = env.upstream.wait_for("/upload", timeout=5)
    assert len(got) == 1, "the target's connection was not closed within 5 s"
    assert not got[0].complete
    assert got[0].body_len < total


STALLED_CALLERS = 40
STALLED_LIMIT_KB = 300
"""Per download a caller stops reading: b0cd6fb held ~980 KB (a 256 KB read queued to the
caller and 256 KB buffered from the target); bounded buffers hold some tens of KiB."""


def test_stalled_downloads_hold_bounded_memory(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(
        [application("ok", [service("mock", [api(upstream.base)])])], ["--idle-timeout", "30"]
    )
    assert request(gateway.proxy_port, "GET", "/ok/mock/warm-up").status == 200
    before = gateway.rss_kb()
    callers: list[socket.socket] = []
    try:
        for _ in range(STALLED_CALLERS):
            sock = socket.create_connection(("127.0.0.1", gateway.proxy_port))
            sock.sendall(b"GET /ok/mock/download/%d HTTP/1.1\r\nHost: h\r\n\r\n" % (50 << 20))
            callers.append(sock)
        assert wait_until(lambda: len(upstream.matching("/download/")) == STALLED_CALLERS, 10)
        readings: list[int] = []
        # Settled: the buffers along the way are full and nothing moves any more.
        wait_until(lambda: len(readings) > 3 and readings[-1] == readings[-4], 10, 0.3)
        readings.append(gateway.rss_kb())
        while len(readings) < 4 or abs(readings[-1] - readings[-4]) > 512:
            time.sleep(0.3)
            readings.append(gateway.rss_kb())
            assert len(readings) < 60, readings
        per_download = (readings[-1] - before) / STALLED_CALLERS
    finally:
        for sock in callers:
            sock.close()
    assert per_download < STALLED_LIMIT_KB, f"{per_download:.0f} kB per stalled download"
    assert_healthy(gateway, "/ok/mock/after-stall")


def test_connections_over_the_cap_are_refused_and_counted(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(
        [application("ok", [service("mock", [api(upstream.base)])])],
        ["--max-connections", "3", "--request-timeout", "30"],
    )

    def open_connections() -> float | None:
        text = request(gateway.admin_port, "GET", "/metrics").body.decode()
        return metric(text, "appgateway_open_connections")

    held = [Client(gateway.proxy_port) for _ in range(3)]
    try:
        assert wait_until(lambda: open_connections() == 3, 5) is not None
        with Client(gateway.proxy_port) as extra:
            extra.send(b"GET /ok/mock/over HTTP/1.1\r\nHost: h\r\n\r\n")
            refused = extra.read_response()
            assert extra.closed_within(2)
        assert refused.status == 503
        assert refused.json() == {"code": 503, "error": "too many connections"}
        assert upstream.matching("/over") == []
        text = request(gateway.admin_port, "GET", "/metrics").body.decode()
        assert metric(text, "appgateway_connections_refused_total") == 1
        line = gateway.wait_log(lambda doc: "connection limit reached" in str(doc.get("msg")))
        assert line is not None and line["level"] == "warn" and line["max_connections"] == 3
        # The ones already open are served, and a freed place is taken again.
        assert held[0].request("GET", "/ok/mock/held").status == 200
        held.pop().close()
        assert wait_until(lambda: open_connections() == 2, 5) is not None
        assert request(gateway.proxy_port, "GET", "/ok/mock/again").status == 200
    finally:
        for client in held:
            client.close()


def test_request_body_below_the_minimum_rate_gets_408(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    """1 byte every 0.3 s never trips the idle timeout, and would hold the connection (and,
    streamed, a target connection) for as long as the caller likes: below --body-min-rate
    for a --request-timeout of waiting, it gets 408 and both connections close."""
    gateway = gateway_factory(
        [application("ok", [service("mock", [api(upstream.base)])])],
        ["--request-timeout", "1", "--body-min-rate", "100", "--retry-body-limit", "10"],
    )
    stop = threading.Event()
    with Client(gateway.proxy_port) as client:
        client.send(b"POST /ok/mock/slow-body HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.3):
                    client.send(b"x")

        sender = threading.Thread(target=trickle)
        sender.start()
        start = time.monotonic()
        try:
            response = client.read_response("POST")
            took = time.monotonic() - start
        finally:
            stop.set()
            sender.join(5)
        assert client.closed_within(2)
    assert response.status == 408
    assert response.json() == {"code": 408, "error": "request body slower than 100 bytes/s"}
    assert 0.9 <= took < 4, took
    # The body (over --retry-body-limit) was streaming: the target's connection is closed too.
    (seen,) = upstream.wait_for("/slow-body", timeout=5)
    assert not seen.complete


def test_request_body_at_a_steady_rate_is_not_cut(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(
        [application("ok", [service("mock", [api(upstream.base)])])],
        ["--request-timeout", "1", "--body-min-rate", "100"],
    )
    with Client(gateway.proxy_port) as client:
        client.send(b"POST /ok/mock/steady HTTP/1.1\r\nHost: h\r\nContent-Length: 600\r\n\r\n")
        for _ in range(12):  # 50 bytes every 0.2 s: 250 B/s for 2.4 s
            client.send(b"y" * 50)
            time.sleep(0.2)
        response = client.read_response("POST")
    assert response.status == 200
    assert upstream.only("/steady").body == b"y" * 600


def test_target_pointing_at_the_gateway_is_a_loop_not_a_storm(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    """A targetUrl that leads back to the gateway turned one request into ~2,000. The
    gateway's Via entry makes the second pass a 508, which the first relays as a 5xx."""
    gateway = gateway_factory([application("ok", [service("mock", [api(upstream.base)])])])
    own = f"http://127.0.0.1:{gateway.proxy_port}/loop/self"
    write_manifest(
        gateway.registry, "loop.yaml", [application("loop", [service("self", [api(own)])])]
    )
    loaded = gateway.wait_log(
        lambda doc: doc.get("msg") == "registry updated" and doc.get("applications") == 2, 10
    )
    assert loaded is not None
    before = len(gateway.access_lines())
    response = request(gateway.proxy_port, "GET", "/loop/self/x", timeout=10)
    assert response.status == 502
    assert response.header("target-system-status") == "508"
    time.sleep(0.5)
    passes = [
        line for line in gateway.access_lines()[before:] if line.get("path") == "/loop/self/x"
    ]
    assert [line["status"] for line in passes] == [508, 502], passes


def test_caller_disconnects_mid_download(env: Env) -> None:
    with Client(env.gateway.proxy_port) as client:
        client.send(b"GET /t/faults/endless HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, _ = client.read_head()
        assert status == 200
        received = 0
        while received < 1024 * 1024:
            received += len(client.sock.recv(65536))
        left = time.monotonic()
    [endless] = env.faults.matching("/endless")
    conn = env.faults.connection_of(endless)
    assert wait_until(lambda: conn.gone_at is not None, 5) is not None, (
        "the gateway kept the target's connection open"
    )
    assert conn.gone_at is not None and conn.gone_at - left < 5


def test_body_over_retry_limit_to_401_target_is_relayed_without_retry(env: Env) -> None:
    body = b"z" * (RETRY_LIMIT * 3)
    response = request(env.gateway.proxy_port, "POST", "/ok/mock/auth401/faults-big", body=body)
    assert (response.status, response.body) == (401, b"denied")
    time.sleep(0.3)
    got = env.upstream.matching("/auth401/faults-big")
    assert len(got) == 1
    assert got[0].body_len == len(body)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /ok/mock/x\r\n\r\n",
        b"GET /ok/mock/x HTTP/9.9\r\nHost: h\r\n\r\n",
        b"GET /ok/mock/x y HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        b"GET /ok/mock/x HTTP/1.1\nHost: h\n\n",
    ],
    ids=["no-target", "no-version", "bad-version", "space-in-target", "binary", "bare-lf"],
)
def test_malformed_request_line_is_400(env: Env, raw: bytes) -> None:
    with Client(env.gateway.proxy_port, timeout=5) as client:
        client.send(raw)
        response = client.read_response()
        assert response.status == 400
        assert client.closed_within(3)
    assert_nothing_reached(env.upstream, "/x")


@pytest.mark.parametrize("path", ["/ok/mock/%zz", "/ok/mock/a%", "/ok/mock/a%4", "/ok%2/mock/x"])
def test_invalid_percent_escape_is_400_json(env: Env, path: str) -> None:
    response = request(env.gateway.proxy_port, "GET", path)
    assert response.status == 400
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert response.body == error_body(400, "invalid URL escape in request path")
    assert_nothing_reached(env.upstream, "/")


@pytest.mark.parametrize(
    "field",
    [
        b"X-A: a\rX-Injected: 1",
        b"X-A: a\nX-Injected: 1",
        b"X-A: a\r\n X-Injected: 1",
        b"X-A: a\x00X-Injected: 1",
        b"X-A\r\n: 1",
    ],
    ids=["cr", "lf", "obs-fold", "nul", "cr-in-name"],
)
def test_header_injection_by_the_caller_is_400(env: Env, field: bytes) -> None:
    with Client(env.gateway.proxy_port, timeout=5) as client:
        client.send(b"GET /ok/mock/inject HTTP/1.1\r\nHost: h\r\n" + field + b"\r\n\r\n")
        response = client.read_response()
    assert response.status == 400
    assert_nothing_reached(env.upstream, "/inject")


@pytest.mark.parametrize("svc", ["crlf", "oauthcrlf"])
def test_secret_header_value_with_crlf_is_a_config_error(env: Env, svc: str) -> None:
    """A request-parameter or token-request header with CR/LF would split the header block:
    the API is unusable (500), and nothing is sent anywhere."""
    response = request(env.gateway.proxy_port, "GET", f"/params/{svc}/x")
    assert response.status == 500
    assert response.header("content-type") == JSON_CONTENT_TYPE
    message = response.json()["error"]
    assert message.startswith(
        f"failed to read API for {svc} service, Failed to unmarshal headers, "
    )
    assert env.faults.requests == [], "the token endpoint was called"
    assert_nothing_reached(env.upstream, "-target")


def test_secret_query_value_with_crlf_is_encoded(env: Env) -> None:
    response = request(env.gateway.proxy_port, "GET", "/params/crlfq/x")
    assert response.status == 200
    [got] = env.upstream.wait_for("/crlfq-target")
    assert got.target == "/crlfq-target/x?q=a%0D%0AX-Injected%3A+1"
    assert "x-injected" not in got.names()


# -- registry faults --------------------------------------------------------------------------

APPLY_WITHIN = 2.0
SLACK = 0.5


def error_logged(gateway: Gateway, *needles: str) -> dict[str, object] | None:
    return gateway.wait_log(
        lambda line: line.get("level") == "error" and all(n in json.dumps(line) for n in needles),
        APPLY_WITHIN + SLACK,
    )


def test_malformed_yaml_while_serving(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    docs = [application("kept", [service("svc", [api(upstream.base)])])]
    gateway = gateway_factory(docs)
    port = gateway.proxy_port
    assert request(port, "GET", "/kept/svc/x").status == 200
    write_manifest(gateway.registry, "other.yaml", "kind: [unclosed\n  - : :\n\t")
    assert error_logged(gateway, "other.yaml") is not None, gateway.stderr_text()
    write_manifest(gateway.registry, "apps.yaml", "apiVersion: v1\n  kind: :\n- [")
    assert error_logged(gateway, "apps.yaml") is not None, gateway.stderr_text()
    for _ in range(5):
        assert request(port, "GET", "/kept/svc/x").status == 200
        time.sleep(0.1)
    assert_healthy(gateway, "/kept/svc/after-fault")


# Hostile files: whatever anyone who can write to the folder drops there. Each one used to crash
# the process (nesting: SIGSEGV, exit 139), stall its reload thread for ever (a FIFO), read for
# ever (/dev/zero) or take memory without end (an alias bomb; 30 MB -> 905 MB). Now each is
# reported and skipped, the last valid state keeps serving and later changes still apply.

_CAP_MEMORY = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class CappedGateway(Gateway):
    """The gateway with its address space capped at 2 GiB, so that a gateway that still read
    /dev/zero or expanded an alias bomb would fail alone, not take the machine's memory."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _CAP_MEMORY, *super().command()[1:]]


@contextlib.contextmanager
def capped_gateway(folder: Path, files: dict[str, list[Doc]]) -> Iterator[Gateway]:
    folder.mkdir(exist_ok=True)
    for name, docs in files.items():
        write_manifest(folder, name, docs)
    gateway = CappedGateway(folder)
    try:
        yield gateway.start()
    finally:
        gateway.close()


def _swap_in(path: Path, make: Callable[[Path], object]) -> None:
    """Makes the hostile file beside `path`, then renames it over `path` in one step."""
    temporary = path.with_name(f".{path.name}.new")
    make(temporary)
    os.replace(temporary, path)


def _nested(path: Path) -> str:
    _swap_in(path, lambda p: p.write_text("[" * 60_000))
    return "invalid YAML at line 1, column 101: nested more than 100 levels deep"


def _alias_bomb(path: Path) -> str:
    lines = ["apiVersion: v1", "kind: List", "items:", "- &l0 {apiVersion: v1, kind: List}"]
    for level in range(1, 10):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"- &l{level} {{apiVersion: v1, kind: List, items: [{refs}]}}")
    _swap_in(path, lambda p: p.write_text("\n".join(lines) + "\n"))
    return (
        "invalid YAML at line 4, column 3: "
        "anchors and aliases are not allowed (the node anchored here is used again)"
    )


def _huge(path: Path) -> str:
    head = "apiVersion: v1\nkind: Secret\nmetadata: {name: huge}\nstringData:\n"
    text = head + "".join(f"  k{i:06d}: {'v' * 90}\n" for i in range(300_000))
    _swap_in(path, lambda p: p.write_text(text))
    return f"too large: {len(text)} bytes, the limit is 1048576 (--manifest-size-limit): not read"


def _fifo(path: Path) -> str:
    _swap_in(path, os.mkfifo)
    return "not a regular file but a FIFO: not read"


def _dev_zero(path: Path) -> str:
    _swap_in(path, lambda p: p.symlink_to("/dev/zero"))
    return "not a regular file but a character device: not read"


HOSTILE_FILES = [_nested, _alias_bomb, _huge, _fifo, _dev_zero]


def _issue_logged(gateway: Gateway, issue: str) -> bool:
    line = gateway.wait_log(lambda x: x.get("issue") == issue, APPLY_WITHIN + SLACK)
    return line is not None and line["level"] == "error" and line["msg"] == "registry error"


@pytest.mark.parametrize("hostile", HOSTILE_FILES, ids=lambda f: f.__name__[1:])
def test_hostile_file_replacing_a_manifest_keeps_its_last_valid_state(
    tmp_path: Path, upstream: MockUpstream, hostile: Callable[[Path], str]
) -> None:
    files = {"apps.yaml": [application("kept", [service("svc", [api(upstream.base)])])]}
    with capped_gateway(tmp_path / "registry", files) as gateway:
        port = gateway.proxy_port
        assert request(port, "GET", "/kept/svc/x").status == 200
        peak_kb = gateway.rss_peak_kb()
        problem = hostile(gateway.registry / "apps.yaml")
        assert _issue_logged(gateway, f"apps.yaml: {problem}"), gateway.stderr_text()
        assert request(port, "GET", "/kept/svc/x").status == 200  # apps.yaml's last valid state
        # The reload thread is free: a later change still applies within 2 s.
        fresh = [application("fresh", [service("svc", [api(upstream.base)])])]
        write_manifest(gateway.registry, "fresh.yaml", fresh)
        ok = wait_until(lambda: request(port, "GET", "/fresh/svc/x").status == 200, 2.5)
        assert ok is not None, gateway.stderr_text()
        assert gateway.rss_peak_kb() - peak_kb < 64 * 1024
        assert_healthy(gateway, "/kept/svc/after-fault")


@pytest.mark.parametrize("hostile", HOSTILE_FILES, ids=lambda f: f.__name__[1:])
def test_hostile_file_at_startup_is_skipped(
    tmp_path: Path, upstream: MockUpstream, hostile: Callable[[Path], str]
) -> None:
    """`serve` exited 139 on the nested file, and never got ready on the FIFO or /dev/zero."""
    folder = tmp_path / "registry"
    folder.mkdir()
    problem = hostile(folder / "hostile.yaml")
    files = {"apps.yaml": [application("kept", [service("svc", [api(upstream.base)])])]}
    with capped_gateway(folder, files) as gateway:
        assert _issue_logged(gateway, f"hostile.yaml: {problem}"), gateway.stderr_text()
        assert request(gateway.proxy_port, "GET", "/kept/svc/x").status == 200
        assert_healthy(gateway, "/kept/svc/after-fault")


def test_check_exits_1_with_the_reason_on_the_nested_file(tmp_path: Path) -> None:
    """It crashed with SIGSEGV (exit 139) in libyaml's composer."""
    problem = _nested(tmp_path / "nested.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "appgateway", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == f"error: nested.yaml: {problem}"


def test_duplicate_names_keep_the_first(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    basic = {"type": "Basic", "secretName": "creds"}
    first = [
        application("dup", [service("svc", [api(upstream.base + "/one", credentials=basic)])]),
        secret("creds", string_data={"username": "alice", "password": "s3cret"}),
    ]
    gateway = gateway_factory()
    write_manifest(gateway.registry, "a.yaml", first)
    port = gateway.proxy_port
    assert wait_until(lambda: request(port, "GET", "/dup/svc/x").status == 200, 3) is not None
    second = [
        application("dup", [service("svc", [api(upstream.base + "/two", credentials=basic)])]),
        secret("creds", string_data={"username": "mallory", "password": "other"}),
    ]
    write_manifest(gateway.registry, "b.yaml", second)
    assert error_logged(gateway, "b.yaml", "Application/dup", "duplicate") is not None
    assert error_logged(gateway, "b.yaml", "Secret/creds", "duplicate") is not None
    upstream.reset()
    response = request(port, "GET", "/dup/svc/basic")
    assert response.status == 200, response.body
    got = upstream.only("/basic")
    assert got.target == "/one/basic"
    assert got.value("authorization") == BASIC_ALICE
    assert_healthy(gateway, "/dup/svc/after-fault")


def test_secret_deleted_while_in_use(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    basic = {"type": "Basic", "secretName": "creds"}
    gateway = gateway_factory()
    write_manifest(
        gateway.registry,
        "secret.yaml",
        [secret("creds", string_data={"username": "alice", "password": "s3cret"})],
    )
    write_manifest(
        gateway.registry,
        "apps.yaml",
        [
            application("sec", [service("svc", [api(upstream.base, credentials=basic)])]),
            application("ok", [service("mock", [api(upstream.base)])]),
        ],
    )
    port = gateway.proxy_port
    assert wait_until(lambda: request(port, "GET", "/sec/svc/basic").status == 200, 3) is not None
    results: list[Response | BaseException] = []

    def slow() -> None:
        try:
            results.append(request(port, "GET", "/sec/svc/delay/1.5", timeout=10))
        except BaseException as exc:  # reported below
            results.append(exc)

    caller = threading.Thread(target=slow)
    caller.start()
    try:
        assert wait_until(lambda: bool(upstream.matching("/delay/")), 5) is not None
        (gateway.registry / "secret.yaml").unlink()
        deleted = time.monotonic()
        expected = error_body(500, "failed to read API for svc service, secret 'creds' not found")

        def config_error() -> bool:
            return request(port, "GET", "/sec/svc/x").body == expected

        took = wait_until(config_error, APPLY_WITHIN + SLACK)
        assert took is not None and time.monotonic() - deleted < APPLY_WITHIN + SLACK
    finally:
        caller.join(10)
    [result] = results
    assert isinstance(result, Response), result
    assert result.status == 200
    assert_healthy(gateway, "/ok/mock/after-fault")


# -- shutdown ---------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_sigterm_with_100_requests_in_flight(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    count = 100
    gateway = gateway_factory(
        [application("ok", [service("mock", [api(upstream.base)])])],
        ["--shutdown-timeout", "10"],
    )
    results: dict[int, Response | BaseException] = {}

    def call(index: int) -> None:
        try:
            results[index] = request(
                gateway.proxy_port, "GET", f"/ok/mock/delay/1/{index}", timeout=15
            )
        except BaseException as exc:  # reported below
            results[index] = exc

    callers = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for caller in callers:
        caller.start()
    try:
        accepted = wait_until(lambda: len(upstream.matching("/delay/1/")) >= count, 10)
        assert accepted is not None, len(upstream.matching("/delay/1/"))
        gateway.sigterm()
        signalled = time.monotonic()
    finally:
        for caller in callers:
            caller.join(20)
    failed = {i: r for i, r in results.items() if not isinstance(r, Response) or r.status != 200}
    assert failed == {}
    assert len(results) == count
    for index, result in results.items():
        assert isinstance(result, Response)
        assert result.json()["target"] == f"/delay/1/{index}"
    assert gateway.wait(10) == 0
    assert time.monotonic() - signalled < 5
    assert crash_signs(list(gateway.raw_lines)) == []
