from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from appgateway.auth import flows
from appgateway.auth.flows import CsrfToken, FlowError
from appgateway.model import ClientCert, Headers, OAuth, OAuthMTLS

CT = (b"Content-Type", b"application/x-www-form-urlencoded")
CERT = ClientCert(crt_pem=b"crt-pem", key_pem=b"key-pem", fingerprint="f")
NOT_HEADER_SAFE = "access_token has characters not allowed in a header"
UNMARSHAL = "failed to unmarshal token response body: "


def basic(user: str, password: str) -> tuple[bytes, bytes]:
    raw = f"{user}:{password}".encode()
    return (b"Authorization", b"Basic " + base64.b64encode(raw))


def test_basic_authorization_example() -> None:
    assert flows.basic_authorization("alice", "s3cret") == b"Basic YWxpY2U6czNjcmV0"
    assert flows.basic_authorization("", "") == b"Basic Og=="


@pytest.mark.parametrize(
    ("credentials", "path", "headers", "body"),
    [
        pytest.param(
            OAuth("http://auth.example.com/oauth/token", "orders client", "s&cret=/+"),
            b"/oauth/token",
            [(b"Host", b"auth.example.com"), basic("orders client", "s&cret=/+"), CT],
            b"client_id=orders+client&client_secret=s%26cret%3D%2F%2B"
            b"&grant_type=client_credentials",
            id="oauth-form-encoded-body-raw-basic",
        ),
        pytest.param(
            OAuth(
                "https://a.example:8443/t?tenant=1#frag",
                "id",
                "sec",
                headers=(("X-Tenant", ("acme",)), ("X-Multi", ("a", "b"))),
                query=(("tenant", ("x",)), ("resource", ("urn:erp", "two words"))),
            ),
            b"/t?tenant=1&resource=urn%3Aerp&resource=two+words",
            [
                (b"Host", b"a.example:8443"),
                basic("id", "sec"),
                CT,
                (b"X-Tenant", b"acme"),
                (b"X-Multi", b"a"),
                (b"X-Multi", b"b"),
            ],
            b"client_id=id&client_secret=sec&grant_type=client_credentials",
            id="query-parameters-and-headers",
        ),
        pytest.param(
            OAuth(
                "http://h",
                "id",
                "sec",
                headers=(
                    ("content-type", ("text/plain",)),
                    ("AUTHORIZATION", ("Bearer x",)),
                    ("Host", ("evil",)),
                    ("Content-Length", ("1",)),
                    ("Connection", ("close",)),
                    ("Accept", ("application/json",)),
                ),
            ),
            b"/",
            [(b"Host", b"h"), basic("id", "sec"), CT, (b"Accept", b"application/json")],
            b"client_id=id&client_secret=sec&grant_type=client_credentials",
            id="secret-headers-only-if-absent",
        ),
        pytest.param(
            OAuthMTLS("https://mtls.example/token", "id é", CERT),
            b"/token",
            [(b"Host", b"mtls.example"), CT],
            b"client_id=id+%C3%A9&grant_type=client_credentials",
            id="mtls-no-authorization-no-secret",
        ),
        pytest.param(
            OAuth("http://h/t%C3%B6/k en?a=b c", "i", "s"),
            b"/t%C3%B6/k%20en?a=b%20c",
            [(b"Host", b"h"), basic("i", "s"), CT],
            b"client_id=i&client_secret=s&grant_type=client_credentials",
            id="url-kept-escapes-only-unsendable-bytes",
        ),
    ],
)
def test_token_request(
    credentials: OAuth | OAuthMTLS, path: bytes, headers: Headers, body: bytes
) -> None:
    req = flows.token_request(credentials)
    assert req.method == b"POST"
    assert req.path == path
    assert req.headers == headers
    assert req.body == body
    assert req.target.authority == headers[0][1].decode()


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (
            OAuth("ftp://h/x?secret=1", "i", "s"),
            "failed to make a request to 'ftp://h/x': unsupported scheme \"ftp\"",
        ),
        (OAuth("", "i", "s"), "failed to make a request to '': empty url"),
        (
            OAuth("http://h/t", "i", "s", headers=(("X-Bad", ("a\r\nb",)),)),
            "failed to make a request to 'http://h/t': header X-Bad has a value with CR, LF or NUL",
        ),
    ],
)
def test_token_request_errors(credentials: OAuth, message: str) -> None:
    with pytest.raises(FlowError) as info:
        flows.token_request(credentials)
    assert info.value.message == message


URL = "https://user:pw@auth.example/token?client_secret=x#f"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"access_token":"abc","token_type":"bearer"}', ("abc", None)),
        (b'{"access_token":"abc","expires_in":3600,"scope":"a b"}', ("abc", 3600)),
        (b'{"access_token":"abc","expires_in":0}', ("abc", 0)),
        (b'{"access_token":"abc","expires_in":-5}', ("abc", -5)),
        (b' {"expires_in":5, "access_token":"\\u00e9"} ', ("\u00e9", 5)),
    ],
)
def test_parse_token_response(body: bytes, expected: tuple[str, int | None]) -> None:
    assert flows.parse_token_response(URL, 200, body) == expected


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            201,
            b'{"access_token":"a"}',
            "incorrect response code '201' while getting token from https://auth.example/token",
        ),
        (
            302,
            b"",
            "incorrect response code '302' while getting token from https://auth.example/token",
        ),
        (
            401,
            b"",
            "incorrect response code '401' while getting token from https://auth.example/token",
        ),
        (
            500,
            b"",
            "incorrect response code '500' while getting token from https://auth.example/token",
        ),
        (200, b"", UNMARSHAL + "invalid JSON: Expecting value at offset 0"),
        (200, b"token=abc", UNMARSHAL + "invalid JSON: Expecting value at offset 0"),
        (
            200,
            b'{"access_token":"a",}',
            UNMARSHAL
            + "invalid JSON: Expecting property name enclosed in double quotes at offset 20",
        ),
        (200, b"\xff", UNMARSHAL + "invalid JSON: not UTF-8"),
        (200, b"[" * 100_000, UNMARSHAL + "invalid JSON: nested too deeply"),
        (
            200,
            b'{"access_token":"a","expires_in":' + b"9" * 5000 + b"}",
            UNMARSHAL + "invalid JSON: number too long",
        ),
        (
            200,
            b'{"access_token":"a","expires_in":NaN}',
            UNMARSHAL + "invalid JSON: NaN is not allowed",
        ),
        (200, b'["access_token"]', UNMARSHAL + "not a JSON object"),
        (200, b'"abc"', UNMARSHAL + "not a JSON object"),
        (200, b"null", UNMARSHAL + "not a JSON object"),
        (200, b"{}", UNMARSHAL + "access_token is missing"),
        (200, b'{"token":"a"}', UNMARSHAL + "access_token is missing"),
        (200, b'{"access_token":null}', UNMARSHAL + "access_token is not a string"),
        (200, b'{"access_token":5}', UNMARSHAL + "access_token is not a string"),
        (200, b'{"access_token":["a"]}', UNMARSHAL + "access_token is not a string"),
        (200, b'{"access_token":""}', UNMARSHAL + "access_token is empty"),
        (200, b'{"access_token":"a\\r\\nX-Injected: 1"}', UNMARSHAL + NOT_HEADER_SAFE),
        (200, b'{"access_token":"a\\u0000b"}', UNMARSHAL + NOT_HEADER_SAFE),
        (200, b'{"access_token":"a\\u007fb"}', UNMARSHAL + NOT_HEADER_SAFE),
        (200, b'{"access_token":"a\\tb"}', UNMARSHAL + NOT_HEADER_SAFE),
        (
            200,
            b'{"access_token":"a","expires_in":"3600"}',
            UNMARSHAL + "expires_in is not an integer",
        ),
        (
            200,
            b'{"access_token":"a","expires_in":3600.0}',
            UNMARSHAL + "expires_in is not an integer",
        ),
        (200, b'{"access_token":"a","expires_in":1e3}', UNMARSHAL + "expires_in is not an integer"),
        (
            200,
            b'{"access_token":"a","expires_in":true}',
            UNMARSHAL + "expires_in is not an integer",
        ),
        (
            200,
            b'{"access_token":"a","expires_in":null}',
            UNMARSHAL + "expires_in is not an integer",
        ),
    ],
)
def test_parse_token_response_failures(status: int, body: bytes, message: str) -> None:
    with pytest.raises(FlowError) as info:
        flows.parse_token_response(URL, status, body)
    assert info.value.message == message


def test_failure_messages_never_echo_the_token() -> None:
    with pytest.raises(FlowError) as info:
        flows.parse_token_response(URL, 200, b'{"access_token":"SECRET-TOKEN","expires_in":"x"}')
    assert "SECRET-TOKEN" not in info.value.message


@pytest.mark.parametrize(
    ("sent_at", "expires_in", "default_ttl", "until"),
    [
        (100.0, 5, 300.0, 103.0),  # behaviour.md §7: 5 gives 3 s
        (100.0, 3600, 300.0, 3340.0),  # 3600 gives 3240 s
        (0.0, None, 300.0, 270.0),  # absent: --token-default-ttl
        (0.0, None, 10.0, 8.0),
        (0.0, 20, 300.0, 18.0),  # 10 % equals the 2 s floor
        (0.0, 30, 300.0, 27.0),
        (0.0, 2, 300.0, 0.0),  # not after sent_at: serves only its own request
        (0.0, 0, 300.0, -2.0),
        (0.0, 10**30, 300.0, 0.9 * flows.MAX_LIFETIME_S),
    ],
)
def test_reuse_until(
    sent_at: float, expires_in: int | None, default_ttl: float, until: float
) -> None:
    assert flows.reuse_until(sent_at, expires_in, default_ttl) == pytest.approx(until)


@pytest.mark.parametrize(
    ("url", "authorization", "path", "headers"),
    [
        (
            "https://erp.example:8443/sap/odata/?$format=json",
            b"Basic YWxpY2U6czNjcmV0",
            b"/sap/odata/?$format=json",
            [
                (b"Host", b"erp.example:8443"),
                (b"X-Csrf-Token", b"fetch"),
                (b"Accept", b"*/*"),
                (b"Cache-Control", b"no-cache"),
                (b"Authorization", b"Basic YWxpY2U6czNjcmV0"),
            ],
        ),
        (
            "http://h",
            None,
            b"/",
            [
                (b"Host", b"h"),
                (b"X-Csrf-Token", b"fetch"),
                (b"Accept", b"*/*"),
                (b"Cache-Control", b"no-cache"),
            ],
        ),
    ],
)
def test_csrf_request(url: str, authorization: bytes | None, path: bytes, headers: Headers) -> None:
    req = flows.csrf_request(url, authorization)
    assert (req.method, req.path, req.headers, req.body) == (b"GET", path, headers, None)


def test_csrf_request_bad_url() -> None:
    with pytest.raises(FlowError) as info:
        flows.csrf_request("/relative", None)
    assert info.value.message == "failed to make a request to '/relative': missing scheme or host"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [
                (b"Content-Type", b"text/plain"),
                (b"x-csrf-token", b"tok-1"),
                (b"Set-Cookie", b"sap-XSRF=abc; Path=/; Secure"),
                (b"set-cookie", b"SAP_SESSIONID=s1;HttpOnly"),
                (b"SET-COOKIE", b" spaced = v ; x"),
                (b"Set-Cookie", b"novalue"),
                (b"Set-Cookie", b"=nameless"),
                (b"Set-Cookie", b""),
            ],
            CsrfToken(b"tok-1", (b"sap-XSRF=abc", b"SAP_SESSIONID=s1", b"spaced = v")),
        ),
        ([(b"X-CSRF-TOKEN", b"A"), (b"X-Csrf-Token", b"B")], CsrfToken(b"A", ())),
        ([(b"X-Csrf-Token", b"")], CsrfToken(b"", ())),
        ([], CsrfToken(b"", ())),
    ],
)
def test_parse_csrf_response(headers: Headers, expected: CsrfToken) -> None:
    assert flows.parse_csrf_response("http://h/csrf", 200, headers) == expected


@pytest.mark.parametrize("status", [201, 204, 302, 401, 403, 500])
def test_parse_csrf_response_status(status: int) -> None:
    with pytest.raises(FlowError) as info:
        flows.parse_csrf_response("http://h/csrf?q=1", status, [(b"X-Csrf-Token", b"t")])
    assert info.value.message == (
        f"incorrect response code '{status}' while getting token from http://h/csrf"
    )


@pytest.mark.parametrize(
    ("fetched", "caller", "merged"),
    [
        ([b"sap-XSRF=abc"], [(b"Cookie", b"a=1; sap-XSRF=old")], b"sap-XSRF=abc; a=1"),
        (
            [b"x=1"],
            [(b"Cookie", b"a=1"), (b"Other", b"z=9"), (b"cookie", b"b=2; x=0")],
            b"x=1; a=1; b=2",
        ),
        ([], [(b"Cookie", b"a=1; b=2"), (b"Cookie", b"c=3")], b"a=1; b=2; c=3"),
        ([b"x=1", b"y=2"], [], b"x=1; y=2"),
        ([], [], b""),
        ([], [(b"Cookie", b"")], b""),
        ([b"x=1", b"y=2", b"x=3"], [], b"x=3; y=2"),
        ([], [(b"Cookie", b"a=1;; flag ;b=2")], b"a=1; flag; b=2"),
        ([b"sap-xsrf=abc"], [(b"Cookie", b"SAP-XSRF=old")], b"sap-xsrf=abc; SAP-XSRF=old"),
        ([b"s=new"], [(b"Cookie", b"s=old; s=older; t=1")], b"s=new; t=1"),
    ],
)
def test_merge_cookies(fetched: list[bytes], caller: Headers, merged: bytes) -> None:
    assert flows.merge_cookies(fetched, caller) == merged


KEY = b"k" * 32
BASE = OAuth(
    "https://auth.example/token",
    "client",
    "secret-value",
    headers=(("X-Tenant", ("acme",)),),
    query=(("resource", ("urn:a",)),),
)
MTLS = OAuthMTLS("https://auth.example/token", "client", CERT)


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, token_url="https://auth.example/token2"),
        replace(BASE, client_id="client2"),
        replace(BASE, client_secret="secret-value2"),
        replace(BASE, headers=()),
        replace(BASE, headers=(("X-Tenant", ("acme", "b")),)),
        replace(BASE, headers=(("X-Tenant", ("acmf",)),)),
        replace(BASE, query=()),
        replace(BASE, query=(("resource", ("urn:b",)),)),
        # Moving bytes between fields must change the key (length-prefixed encoding).
        replace(BASE, client_id="clientsecret-", client_secret="value"),
        replace(BASE, headers=(("X-Tenant", ()), ("acme", ()))),
        replace(BASE, headers=(), query=(("X-Tenant", ("acme",)), ("resource", ("urn:a",)))),
        MTLS,
        replace(MTLS, cert=replace(CERT, crt_pem=b"crt-pem2")),
        replace(MTLS, cert=replace(CERT, key_pem=b"key-pem2")),
    ],
)
def test_token_key_changes_with_every_input(changed: OAuth | OAuthMTLS) -> None:
    assert flows.token_cache_key(KEY, changed) != flows.token_cache_key(KEY, BASE)


def test_token_key_is_stable_keyed_and_holds_no_secret() -> None:
    key = flows.token_cache_key(KEY, BASE)
    assert key == flows.token_cache_key(KEY, replace(BASE))
    assert key != flows.token_cache_key(b"other" * 8, BASE)
    assert len(key) == 32
    assert b"secret-value" not in key and "secret-value" not in key.hex()
    mtls = flows.token_cache_key(KEY, MTLS)
    assert mtls == flows.token_cache_key(KEY, replace(MTLS, cert=replace(CERT, fingerprint="x")))
    assert b"key-pem" not in mtls


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("alice", "s3cret"), ("alice", "s3creT")),
        (("alice", "s3cret"), ("alicE", "s3cret")),
        (("a:b", "c"), ("a", "b:c")),
    ],
)
def test_basic_identity(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert flows.basic_identity(KEY, *a) != flows.basic_identity(KEY, *b)
    assert flows.basic_identity(KEY, *a) == flows.basic_identity(KEY, *a)


def test_cert_identity_and_csrf_key() -> None:
    cert_id = flows.cert_identity(KEY, CERT)
    assert cert_id != flows.cert_identity(KEY, replace(CERT, key_pem=b"other"))
    assert cert_id != flows.basic_identity(KEY, "crt-pem", "key-pem")
    csrf = flows.csrf_cache_key(KEY, "https://h/csrf", cert_id)
    assert csrf != flows.csrf_cache_key(KEY, "https://h/csrf2", cert_id)
    assert csrf != flows.csrf_cache_key(KEY, "https://h/csrf", flows.basic_identity(KEY, "a", "b"))
    assert csrf == flows.csrf_cache_key(KEY, "https://h/csrf", cert_id)


def test_flavour() -> None:
    assert flows.flavour(BASE) == "oauth"
    assert flows.flavour(MTLS) == "oauth-mtls"
