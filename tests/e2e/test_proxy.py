"""The proxy and Compass listeners end to end, checked by what the mock external API received."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import (
    BASIC_ALICE,
    JSON_CONTENT_TYPE,
    Client,
    Doc,
    Gateway,
    MockUpstream,
    Recorded,
    Response,
    api,
    application,
    closed_port,
    error_body,
    gateway_factory_for,
    request,
    secret,
    service,
)

pytestmark = pytest.mark.timeout(60)


def registry(u: str) -> list[Doc]:
    """One Application per concern; `u` is the mock API's base URL."""
    encoding_services = [
        service("s", [api(u)]),
        service("somepath", [api(u + "/somepath")]),
        service("sq", [api(u + "/somepath/Xyz('123')")]),
        service("xyz", [api(u + "/Xyz('1')")]),
        service("api", [api(u + "/api")]),
        service("apislash", [api(u + "/api/")]),
    ]
    basic = {"type": "Basic", "secretName": "alice-basic"}
    return [
        application("enc-true", encoding_services),
        application("enc-false", encoding_services, encode_url=False),
        application(
            "erp",
            [
                service("Customer master data", [api(u + "/api", name="customers")], id="77aa01"),
                service(
                    "Orders API (v2)",
                    [
                        api(u + "/orders", name="Sales Orders"),
                        {"type": "Events", "name": "Order events"},
                    ],
                    id="3f1c",
                ),
            ],
        ),
        application(
            "averyveryverylongapplicationname", [service("Long", [api(u + "/long")], id="abc")]
        ),
        application(
            "dup",
            [
                service("Twin", [api(u + "/one", name="one")], id="t1"),
                service("twin!", [api(u + "/two", name="two")], id="t2"),
                service(
                    "Two Entries",
                    [api(u + "/first", name="first"), api(u + "/second", name="second")],
                    id="two",
                ),
                service("Same A", [api(u + "/same-a", name="a")], id="same"),
                service("Same B", [api(u + "/same-b", name="b")], id="same"),
            ],
        ),
        application(
            "sec",
            [
                service("Basic", [api(u, credentials=basic)]),
                service("Params", [api(u + "/q?sap-client=100", params="params1")]),
                service("Params2", [api(u + "/p", params="params2")]),
                service("Basic Params", [api(u, credentials=basic, params="params3")]),
                service(
                    "Broken",
                    [api(u, credentials={"type": "Basic", "secretName": "missing-secret"})],
                    name="broken-svc",
                ),
            ],
        ),
        application("loc", [service("svc", [api(u + "/v1/orders", name="entry")], id="loc1")]),
        application("down", [service("closed", [api(f"http://127.0.0.1:{closed_port()}")])]),
        secret(
            "alice-basic",
            data={
                "username": base64.b64encode(b"alice").decode(),
                "password": base64.b64encode(b"s3cret").decode(),
            },
        ),
        secret(
            "params1",
            string_data={
                "headers": json.dumps({"X-Api-Key": ["k-123"], "X-Multi": ["a", "b"]}),
                "queryParameters": json.dumps(
                    {"tag": ["x", "y"], "sap-language": ["EN"], "$top": ["9"]}
                ),
            },
        ),
        secret(
            "params2",
            string_data={
                "queryParameters": json.dumps(
                    {"param2": ["v2.1", "v2.2"], "param1": ["v1"], "sp ace": ["a b/c&d"]}
                ),
            },
        ),
        secret(
            "params3",
            string_data={"headers": json.dumps({"Authorization": ["nope"], "X-Api-Key": ["k"]})},
        ),
    ]


@pytest.fixture(scope="module")
def gateway(
    upstream_server: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("proxy")
    with gateway_factory_for(folder) as make:
        yield make(registry(upstream_server.base), ["--proxy-timeout", "1"])


def received(upstream: MockUpstream) -> Recorded:
    """The single request the mock API got during this test."""
    deadline = time.monotonic() + 5
    while not any(r.done for r in upstream.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(upstream.requests) == 1, upstream.requests
    return upstream.requests[0]


def target_sent(
    gateway: Gateway,
    upstream: MockUpstream,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    compass: bool = False,
) -> str:
    port = gateway.compass_port if compass else gateway.proxy_port
    response = request(port, "GET", path, headers)
    assert response.status == 200, (response.status, response.body)
    return received(upstream).target


# -- path algorithm (behaviour.md §3.4) -------------------------------------------------------

PATH_ROWS = [
    # service, caller rest, wire target with encodeUrl false, with encodeUrl true
    (
        "s",
        "/orders/hello('%7Cworld%7C')",
        "/orders/hello('%7Cworld%7C')",
        "/orders/hello%28%27%7Cworld%7C%27%29",
    ),
    ("s", "/x%2Fy", "/x%2Fy", "/x/y"),
    ("s", "/caf%c3%a9", "/caf%c3%a9", "/caf%C3%A9"),
    ("somepath", "/Xyz('123')", "/somepath/Xyz('123')", "/somepath/Xyz%28%27123%27%29"),
    ("sq", "?$search=XXX", "/somepath/Xyz('123')?$search=XXX", None),
    ("xyz", "/x", "/Xyz%28%271%27%29/x", None),
    ("s", "", "/", None),
    ("api", "", "/api", None),
    ("api", "/", "/api/", None),
    ("api", "/x/", "/api/x/", None),
    ("apislash", "", "/api/", None),
    ("api", "//x", "/api/x", None),
    ("api", "/x//y", "/api/x//y", None),
    ("api", "///h/x", "/api//h/x", None),
    ("api", "/a:b/c", "/api/a:b/c", None),
    ("api", "/../x", "/api/../x", None),
    ("api", "/x|y", "/api/x%7Cy", None),
]


@pytest.mark.parametrize("encode", [False, True], ids=["encodeUrl-false", "encodeUrl-true"])
@pytest.mark.parametrize(("svc", "rest", "wire_false", "wire_true"), PATH_ROWS)
def test_path_routing_wire_path(
    gateway: Gateway,
    upstream: MockUpstream,
    encode: bool,
    svc: str,
    rest: str,
    wire_false: str,
    wire_true: str | None,
) -> None:
    app = "enc-true" if encode else "enc-false"
    expected = (wire_true or wire_false) if encode else wire_false
    assert target_sent(gateway, upstream, f"/{app}/{svc}{rest}") == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/enc-false/s/api/x%2Fy", "/x%2Fy"),
        ("/enc-true/s/api/x%2Fy", "/x/y"),
        ("/erp/customer-master-data/customers/x?a=1", "/api/x?a=1"),
        ("/erp/orders-api-v2/sales-orders", "/orders"),
        ("/dup/twin/one/z", "/one/z"),
        ("/dup/twin/two/z", "/two/z"),
        ("/dup/two-entries/second/x", "/second/x"),
    ],
)
def test_compass_routing(
    gateway: Gateway, upstream: MockUpstream, path: str, expected: str
) -> None:
    assert target_sent(gateway, upstream, path, compass=True) == expected


def test_compass_listener_does_not_route_by_host(gateway: Gateway, upstream: MockUpstream) -> None:
    path = "/erp/customer-master-data/customers/q"
    assert target_sent(gateway, upstream, path, [("Host", "erp-77aa01")], compass=True) == "/api/q"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/enc-true/s/a?x=1&y=%20z&x=2", "/a?x=1&y=%20z&x=2"),
        ("/enc-true/s?only=query", "/?only=query"),
        ("/enc-true/somepath/a?q='x'", "/somepath/a?q='x'"),
    ],
)
def test_query_is_forwarded_verbatim(
    gateway: Gateway, upstream: MockUpstream, path: str, expected: str
) -> None:
    assert target_sent(gateway, upstream, path) == expected


# -- host routing (behaviour.md §2.1) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("erp-77aa01.kyma-system.svc.cluster.local", "/customers/42", "/api/customers/42"),
        ("erp-77aa01", "/", "/api/"),
        ("ERP-77AA01:8080", "/a?x=1", "/api/a?x=1"),
        ("erp-77aa01.ns.svc:80", "/erp/customer-master-data/x", "/api/erp/customer-master-data/x"),
        ("erp-3f1c", "/o/1", "/orders/o/1"),
        ("averyveryverylongapplicati-abc.kyma-system", "/z", "/long/z"),
        ("unknown-label.example", "/erp/customer-master-data/x", "/api/x"),
        ("erp-77aa0", "/erp/orders-api-v2/y", "/orders/y"),
    ],
)
def test_host_routing(
    gateway: Gateway, upstream: MockUpstream, host: str, path: str, expected: str
) -> None:
    assert target_sent(gateway, upstream, path, [("Host", host)]) == expected


def test_host_from_absolute_form_target(gateway: Gateway, upstream: MockUpstream) -> None:
    with Client(gateway.proxy_port) as client:
        client.send(
            b"GET http://erp-77aa01.example/customers/1?z=2 HTTP/1.1\r\n"
            b"Host: erp-77aa01.example\r\n\r\n"
        )
        response = client.read_response()
    assert response.status == 200, response.body
    assert received(upstream).target == "/api/customers/1?z=2"


def test_unknown_host_label_falls_back_to_path_routing_404(gateway: Gateway) -> None:
    response = request(gateway.proxy_port, "GET", "/nope/x", [("Host", "nope-123.example")])
    assert response.status == 404
    assert response.body == error_body(404, "service with name x not found")


@pytest.mark.parametrize("host", ["dup-same", "dup-two.kyma-system"])
def test_host_label_with_several_apis_is_400(gateway: Gateway, host: str) -> None:
    response = request(gateway.proxy_port, "GET", "/x", [("Host", host)])
    assert response.status == 400
    assert response.header("content-type") == JSON_CONTENT_TYPE
    label = host.split(".")[0]
    message = response.json()["error"]
    assert message.startswith(
        f"failed to get service with name '{label}': multiple services found: "
    ), message


# -- gateway errors (behaviour.md §11) --------------------------------------------------------

EXTRACT = "failed to extract API Identifier from path"


@pytest.mark.parametrize(
    ("compass", "path", "status", "message"),
    [
        (False, "/", 400, EXTRACT),
        (False, "/erp", 400, EXTRACT),
        (False, "/erp/", 400, EXTRACT),
        (False, "/erp//x", 400, EXTRACT),
        (False, "//erp", 400, EXTRACT),
        (
            False,
            "/nope/customer-master-data",
            404,
            "service with name customer-master-data not found",
        ),
        (False, "/erp/unknown/x", 404, "service with name unknown not found"),
        (
            False,
            "/erp/Customer-master-data",
            404,
            "service with name Customer-master-data not found",
        ),
        (False, "/erp/a&b<c>", 404, "service with name a&b%3Cc%3E not found"),
        (True, "/erp/customer-master-data", 400, EXTRACT),
        (True, "/erp/customer-master-data/", 400, EXTRACT),
        (
            True,
            "/erp/customer-master-data/nope",
            404,
            "service with name customer-master-data and entry name nope not found",
        ),
        (
            True,
            "/erp/unknown/customers/x",
            404,
            "service with name unknown and entry name customers not found",
        ),
    ],
)
def test_routing_errors(
    gateway: Gateway,
    upstream: MockUpstream,
    compass: bool,
    path: str,
    status: int,
    message: str,
) -> None:
    port = gateway.compass_port if compass else gateway.proxy_port
    response = request(port, "GET", path)
    assert response.status == status
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert response.body == error_body(status, message)
    assert upstream.requests == []


def test_several_matching_services_is_400_naming_candidates(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    response = request(gateway.proxy_port, "GET", "/dup/twin/x")
    assert response.status == 400
    assert response.header("content-type") == JSON_CONTENT_TYPE
    message: str = response.json()["error"]
    prefix = "failed to get service with name 'twin': multiple services found: "
    assert message.startswith(prefix), message
    assert sorted(message[len(prefix) :].split(" | ")) == [
        "service.ID: 't1', service.DisplayName: 'Twin', entry.Name: 'one'",
        "service.ID: 't2', service.DisplayName: 'twin!', entry.Name: 'two'",
    ]
    assert upstream.requests == []


def test_service_with_two_api_entries_is_400_on_proxy(gateway: Gateway) -> None:
    response = request(gateway.proxy_port, "GET", "/dup/two-entries/x")
    assert response.status == 400
    assert response.json()["error"].startswith(
        "failed to get service with name 'two-entries': multiple services found: "
    )


def test_configuration_error_is_500(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(gateway.proxy_port, "GET", "/sec/broken/x")
    assert response.status == 500
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert response.body == error_body(
        500, "failed to read API for broken-svc service, secret 'missing-secret' not found"
    )
    assert upstream.requests == []


# -- credentials and request parameters ------------------------------------------------------


def test_basic_replaces_callers_authorization(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(
        gateway.proxy_port, "GET", "/sec/basic/basic", [("Authorization", "Bearer caller")]
    )
    assert response.status == 200, response.body
    assert received(upstream).values("authorization") == [BASIC_ALICE]


def test_no_auth_passes_callers_authorization(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(gateway.proxy_port, "GET", "/enc-true/s/x", [("Authorization", "Bearer m")])
    assert response.status == 200
    assert received(upstream).values("authorization") == ["Bearer m"]


@pytest.mark.parametrize("path", ["/sec/basic/x", "/enc-true/s/x"])
def test_access_token_overrides_authorization(
    gateway: Gateway, upstream: MockUpstream, path: str
) -> None:
    headers = [
        ("Authorization", "Basic old"),
        ("Access-Token", "Bearer abc"),
        ("Access-Token", "Bearer second"),
    ]
    response = request(gateway.proxy_port, "GET", path, headers)
    assert response.status == 200
    got = received(upstream)
    assert got.values("authorization") == ["Bearer abc"]
    assert got.values("access-token") == []


def test_empty_access_token_is_ignored_and_forwarded(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    response = request(gateway.proxy_port, "GET", "/sec/basic/x", [("Access-Token", "")])
    assert response.status == 200
    got = received(upstream)
    assert got.values("authorization") == [BASIC_ALICE]
    assert got.values("access-token") == [""]


@pytest.mark.parametrize(
    ("path", "headers", "target", "api_key"),
    [
        (
            "/sec/params/r?$top=2&$filter=Name%20eq%20'x'",
            [],
            "/q/r?sap-client=100&$top=2&$filter=Name%20eq%20'x'&sap-language=EN&tag=x&tag=y",
            ["k-123"],
        ),
        (
            "/sec/params/r?tag=t",
            [("x-api-key", "mine")],
            "/q/r?sap-client=100&tag=t&%24top=9&sap-language=EN",
            ["mine"],
        ),
        ("/sec/params", [], "/q?sap-client=100&%24top=9&sap-language=EN&tag=x&tag=y", ["k-123"]),
    ],
)
def test_request_parameters_added_when_absent(
    gateway: Gateway,
    upstream: MockUpstream,
    path: str,
    headers: list[tuple[str, str]],
    target: str,
    api_key: list[str],
) -> None:
    response = request(gateway.proxy_port, "GET", path, headers)
    assert response.status == 200
    got = received(upstream)
    assert got.target == target
    assert got.values("x-api-key") == api_key
    assert got.values("x-multi") == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/sec/params2", "/p?param1=v1&param2=v2.1&param2=v2.2&sp+ace=a+b%2Fc%26d"),
        ("/sec/params2/?sp+ace=1", "/p/?sp+ace=1&param1=v1&param2=v2.1&param2=v2.2"),
        ("/sec/params2?param2", "/p?param2&param1=v1&sp+ace=a+b%2Fc%26d"),
    ],
)
def test_request_parameter_query_is_form_encoded(
    gateway: Gateway, upstream: MockUpstream, path: str, target: str
) -> None:
    assert target_sent(gateway, upstream, path) == target


def test_auth_header_wins_over_request_parameter_header(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    response = request(gateway.proxy_port, "GET", "/sec/basic-params/x")
    assert response.status == 200
    got = received(upstream)
    assert got.values("authorization") == [BASIC_ALICE]
    assert got.values("x-api-key") == ["k"]


# -- outbound headers (behaviour.md §4) --------------------------------------------------------


def test_outbound_header_filtering(gateway: Gateway, upstream: MockUpstream) -> None:
    sent = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=192.0.2.1"),
        ("X-Forwarded-Host", "example.com"),
        ("X-Forwarded-Client-Cert", "Hash=abc"),
        ("Connection", "keep-alive, X-Hop-One"),
        ("X-Hop-One", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic"),
        ("X-Request-Id", "req-123"),
        ("Cookie", "a=1; b=2"),
        ("User-Agent", "my-agent/1.0"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("Accept-Language", "en"),
    ]
    response = request(gateway.proxy_port, "GET", "/enc-true/s/h", sent, host="caller.example")
    assert response.status == 200
    assert response.values("server") == []
    got = received(upstream)
    assert got.values("host") == [f"127.0.0.1:{upstream.port}"]
    connection = got.values("connection")
    assert all(v.lower() in ("keep-alive", "close") for v in connection), connection
    rest = [(n, v) for n, v in got.headers if n.lower() not in ("host", "connection")]
    assert rest == [
        ("Forwarded", "for=192.0.2.1"),
        ("X-Request-Id", "req-123"),
        ("Cookie", "a=1; b=2"),
        ("User-Agent", "my-agent/1.0"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("Accept-Language", "en"),
        ("Via", gateway_via(got.values("via"))),
    ]


def gateway_via(values: list[str]) -> str:
    """The one Via entry the gateway adds (loop detection), naming this process."""
    (via,) = values
    assert re.fullmatch(r"1\.1 appgateway-[0-9a-f]{12}", via), via
    return via


def test_no_default_headers_added(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(gateway.proxy_port, "GET", "/enc-true/s/plain")
    assert response.status == 200
    got = received(upstream)
    # Host, the request id the gateway generates when the caller sent none, and its Via.
    assert sorted(n for n in got.names() if n != "connection") == ["host", "via", "x-request-id"]
    gateway_via(got.values("via"))


def test_post_body_framed_with_content_length(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(
        gateway.proxy_port, "POST", "/enc-true/s/p", [("Content-Type", "text/plain")], b"hi there"
    )
    assert response.status == 200
    got = received(upstream)
    assert got.method == "POST"
    assert got.body == b"hi there"
    assert got.values("content-length") == ["8"]
    assert got.values("content-type") == ["text/plain"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "MKCOL"])
def test_any_method_is_forwarded(gateway: Gateway, upstream: MockUpstream, method: str) -> None:
    response = request(gateway.proxy_port, method, "/enc-true/s/m")
    assert response.status == 200
    assert received(upstream).method == method


# -- responses (behaviour.md §10) ------------------------------------------------------------


def test_response_headers_relayed_without_hop_by_hop(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    response = request(gateway.proxy_port, "GET", "/enc-true/s/respheaders")
    assert response.status == 200
    assert response.body == b"headers"
    assert response.values("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert response.values("x-keep") == ["yes"]
    for name in ("x-hop", "proxy-authenticate", "trailer", "upgrade", "server"):
        assert response.values(name) == [], name
    # The upstream's "Keep-Alive: timeout=5" is dropped; the one left is the gateway's own
    # promise about the caller connection (--keepalive-timeout 120 s, announced one less).
    assert response.values("keep-alive") == ["timeout=119"]
    assert all("x-hop" not in v.lower() for v in response.values("connection"))


@pytest.mark.parametrize("code", [500, 503, 599])
def test_upstream_5xx_becomes_502(gateway: Gateway, upstream: MockUpstream, code: int) -> None:
    response = request(gateway.proxy_port, "GET", f"/enc-true/s/status/{code}")
    assert response.status == 502
    assert response.values("target-system-status") == [str(code)]
    assert response.body == f"upstream says {code}".encode()
    assert response.header("x-mock") == "1"
    assert response.header("content-type") == "text/plain"


def test_upstream_4xx_relayed_unchanged(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(gateway.proxy_port, "GET", "/enc-true/s/status/404")
    assert response.status == 404
    assert response.body == b"status 404"
    assert response.values("target-system-status") == []
    assert len(upstream.requests) == 1


def _redirect(gateway: Gateway, base: str, code: int, location: str, **kw: object) -> Response:
    path = f"{base}/redirect/{code}?location={quote(location, safe='')}"
    port = gateway.compass_port if kw.get("compass") else gateway.proxy_port
    headers = [("Host", str(kw["host"]))] if "host" in kw else []
    return request(port, "GET", path, headers)


LOCATION_CASES = [
    # status, upstream Location ({u} is the mock's base URL), Location the caller gets
    (302, "/v1/orders/42", "/loc/svc/42"),
    (301, "{u}/v1/orders/some?x=1#f", "/loc/svc/some?x=1#f"),
    (307, "http://127.0.0.1:1/v1/orders/x", "/loc/svc/x"),
    (308, "https://127.0.0.1/v1/orders/x", "/loc/svc/x"),
    (201, "/v1/orders/a%2Fb", "/loc/svc/a%2Fb"),
    (302, "/v1/orders/", "/loc/svc/"),
    (303, "/v1/%6Frders/x", "/loc/svc/x"),
    (302, "x/y", "/loc/svc/redirect/x/y"),
    (302, "{u}/v1/orders10/x", "{u}/v1/orders10/x"),
    (302, "http://other.example/v1/orders/x", "http://other.example/v1/orders/x"),
    (302, "ftp://127.0.0.1/v1/orders/x", "ftp://127.0.0.1/v1/orders/x"),
    (302, "/v1", "/v1"),
    (200, "/v1/orders/x", "/v1/orders/x"),
]


@pytest.mark.parametrize(("code", "location", "expected"), LOCATION_CASES)
def test_location_rewrite(
    gateway: Gateway, upstream: MockUpstream, code: int, location: str, expected: str
) -> None:
    location = location.format(u=upstream.base)
    response = _redirect(gateway, "/loc/svc", code, location)
    assert response.status == code
    assert response.values("location") == [expected.format(u=upstream.base)], response.headers


def test_location_rewrite_compass_and_host(gateway: Gateway, upstream: MockUpstream) -> None:
    response = _redirect(gateway, "/loc/svc/entry", 302, "/v1/orders/42", compass=True)
    assert response.header("location") == "/loc/svc/entry/42"
    response = _redirect(gateway, "", 302, "/api/orders/7", host="erp-77aa01")
    assert response.header("location") == "/orders/7"
    response = _redirect(gateway, "", 302, upstream.base + "/api", host="erp-77aa01")
    assert response.header("location") == "/"


# -- retry on 401/403 (behaviour.md §8) -------------------------------------------------------


@pytest.mark.parametrize("path", ["/enc-true/s/auth401/k1", "/sec/basic/auth401/k2"])
def test_401_is_retried_once_with_the_same_body(
    gateway: Gateway, upstream: MockUpstream, path: str
) -> None:
    response = request(
        gateway.proxy_port, "POST", path, [("X-Request-Id", "retry-" + path)], b"payload-123"
    )
    assert response.status == 200, response.body
    got = upstream.wait_for("auth401", 2)
    assert len(got) == 2
    first, second = got
    assert first.body == second.body == b"payload-123"
    assert first.headers == second.headers
    line = gateway.wait_log(lambda x: x.get("request_id") == "retry-" + path)
    assert line is not None and line["retried"] is True and line["upstream_status"] == 200


def test_chunked_body_within_limit_is_retried(gateway: Gateway, upstream: MockUpstream) -> None:
    with Client(gateway.proxy_port) as client:
        client.send(
            b"POST /enc-true/s/auth401/k3 HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        response = client.read_response()
    assert response.status == 200
    got = upstream.wait_for("auth401", 2)
    assert [r.body for r in got] == [b"abcde", b"abcde"]


@pytest.mark.parametrize("code", [401, 403])
def test_persistent_401_403_relayed_after_one_retry(
    gateway: Gateway, upstream: MockUpstream, code: int
) -> None:
    response = request(gateway.proxy_port, "GET", f"/sec/basic/status/{code}")
    assert response.status == code
    assert response.body == f"status {code}".encode()
    time.sleep(0.3)
    assert len(upstream.matching("/status/")) == 2


def test_body_over_retry_limit_is_not_retried(gateway: Gateway, upstream: MockUpstream) -> None:
    body = b"z" * (2 * 1024 * 1024)
    response = request(gateway.proxy_port, "POST", "/enc-true/s/status/401", body=body)
    assert response.status == 401
    time.sleep(0.3)
    got = upstream.matching("/status/")
    assert len(got) == 1
    assert got[0].body_len == len(body)


# -- transport failures ------------------------------------------------------------------------


def test_hanging_target_gives_504_after_proxy_timeout(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    start = time.monotonic()
    response = request(gateway.proxy_port, "GET", "/enc-true/s/hang")
    elapsed = time.monotonic() - start
    assert response.status == 504
    assert response.body == b""
    assert 0.9 <= elapsed < 5, elapsed


def test_closed_target_port_gives_502_empty(gateway: Gateway) -> None:
    response = request(gateway.proxy_port, "GET", "/down/closed/x")
    assert response.status == 502
    assert response.body == b""


# -- access log (behaviour.md §13) ------------------------------------------------------------


def test_access_log_line(gateway: Gateway, upstream: MockUpstream) -> None:
    response = request(
        gateway.proxy_port,
        "GET",
        "/erp/customer-master-data/some/path?secret=1",
        [("X-Request-Id", "rid-access-1")],
    )
    assert response.status == 200
    line = gateway.wait_log(lambda x: x.get("request_id") == "rid-access-1")
    assert line is not None
    assert line["msg"] == "request" and line["level"] == "info"
    expected = {
        "listener": "proxy",
        "route": "path",
        "app": "erp",
        "service": "customer-master-data",
        "method": "GET",
        "path": "/erp/customer-master-data/some/path",
        "status": 200,
        "upstream_status": 200,
        "retried": False,
        "error": None,
    }
    assert {k: line.get(k) for k in expected} == expected
    assert "secret=1" not in json.dumps(line)


def test_access_log_line_for_gateway_error(gateway: Gateway) -> None:
    request(gateway.proxy_port, "GET", "/erp/unknown/x", [("X-Request-Id", "rid-access-2")])
    line = gateway.wait_log(lambda x: x.get("request_id") == "rid-access-2")
    assert line is not None
    assert line["status"] == 404
    assert line["upstream_status"] is None
    assert line["error"] == "service with name unknown not found"


def test_access_log_host_route(gateway: Gateway) -> None:
    request(gateway.proxy_port, "GET", "/x", [("Host", "erp-77aa01"), ("X-Request-Id", "rid-host")])
    line = gateway.wait_log(lambda x: x.get("request_id") == "rid-host")
    assert line is not None
    assert (line["route"], line["app"], line["status"]) == ("host", "erp", 200)
