"""Every credential type through a real `appgateway serve` process (behaviour.md §5-§8, §11).

The mock external API (tests/e2e/credentials_api.py) records what it received, including the
client certificate of each TLS connection, so every assertion is about the wire. Token and CSRF
caches live in the gateway process and the mock lives for the session, so each test uses its
own service, token tag and CSRF tag: no test depends on another one's cache state.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    JSON_CONTENT_TYPE,
    Doc,
    Gateway,
    Response,
    api,
    application,
    closed_port,
    error_body,
    request,
    secret,
    service,
    wait_until,
    write_manifest,
)
from tests.e2e.credentials_api import BASIC_PASSWORD, BASIC_USER, CredentialsAPI, Pki, Seen

pytestmark = pytest.mark.timeout(60)

WRONG_PASSWORD = "pw-wrong-Lm52xT"
OAUTH_ID = "client-e2e"
OAUTH_SECRET = "cs-Hq7/+&=9Zk"
OAUTH_SECRET_FORM = "cs-Hq7%2F%2B%26%3D9Zk"
TOKEN_QUERY = "tq-Pz4mW8rN"
"""In every token URL's query: redaction must keep it out of messages and logs."""
MTLS_ID = "client-mtls"
UNUSED_SECRET = "cs-unused-Vb3kQ"
"""OAuthWithCert ignores clientSecret: it must never be sent."""
CALLER_TOKEN = "Bearer caller-Yt6pE1"
CALLER_QUERY = "sig-Qw9zL0"
PREAMBLE = "notBefore=Jan  1 00:00:00 2024 GMT\nsubject=CN = e2e client\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BASIC_GOOD = "Basic " + b64(f"{BASIC_USER}:{BASIC_PASSWORD}")
BASIC_WRONG = "Basic " + b64(f"{BASIC_USER}:{WRONG_PASSWORD}")
OAUTH_BASIC = "Basic " + b64(f"{OAUTH_ID}:{OAUTH_SECRET}")

ERROR_BODIES: list[bytes] = []
"""Every gateway answer with status >= 400 in this module, for the leak test."""


# -- registry ------------------------------------------------------------------------------------


def scenarios(mock: CredentialsAPI, closed: int, ns: str) -> dict[str, tuple[str, Doc]]:
    """Service name → (targetUrl, credentials).

    Every token tag, CSRF tag and target path is `ns` + the service name, so two namespaces
    (the `cred` app and the `leak` app) never share a cache entry or a mock counter.
    """

    def at(kind: str, name: str, listener: str = "plain") -> str:
        return mock.url(listener, f"/{kind}/{ns}{name}")

    def oauth(name: str, token_base: str | None = None) -> Doc:
        base = token_base or mock.url("plain", "")
        url = f"{base}/token/{ns}{name}?tq={TOKEN_QUERY}"
        return {"type": "OAuth", "secretName": "oauth-main", "authenticationUrl": url}

    def mtls_oauth(name: str, secret_name: str) -> Doc:
        url = mock.url("mtls", f"/token/{ns}{name}?tq={TOKEN_QUERY}")
        return {"type": "OAuthWithCert", "secretName": secret_name, "authenticationUrl": url}

    def cert(secret_name: str = "cert-good") -> Doc:
        return {"type": "CertificateGen", "secretName": secret_name}

    def basic(secret_name: str = "basic-good") -> Doc:
        return {"type": "Basic", "secretName": secret_name}

    def csrf(
        name: str, credentials: Doc, listener: str = "plain", endpoint_base: str | None = None
    ) -> tuple[str, Doc]:
        """Resource `/csrf/{tag}/res`, fetch endpoint `/csrf/{tag}/token`."""
        base = at("csrf", name, listener)
        endpoint = f"{endpoint_base}/csrf/{ns}{name}/token" if endpoint_base else base + "/token"
        return base + "/res", {**credentials, "csrfInfo": {"tokenEndpointURL": endpoint}}

    nowhere = f"http://127.0.0.1:{closed}"
    return {
        "basic": (at("basic", "basic"), basic()),
        "basic-wrong": (at("basic", "basic-wrong"), basic("basic-bad")),
        "missing": (at("echo", "missing"), basic("no-such-secret")),
        # OAuth
        "oauth-exact": (at("bearer", "oauth-exact"), oauth("oauth-exact")),
        "oauth-reuse": (at("bearer", "oauth-reuse"), oauth("oauth-reuse")),
        "oauth-flight": (at("bearer", "oauth-flight"), oauth("oauth-flight")),
        "oauth-renew": (at("bearer", "oauth-renew"), oauth("oauth-renew")),
        "oauth-500": (at("bearer", "oauth-500"), oauth("oauth-500")),
        "oauth-badjson": (at("bearer", "oauth-badjson"), oauth("oauth-badjson")),
        "oauth-empty": (at("bearer", "oauth-empty"), oauth("oauth-empty")),
        "oauth-down": (at("bearer", "oauth-down"), oauth("oauth-down", nowhere)),
        "oauth-rejected": (at("bearer", "oauth-rejected"), oauth("oauth-rejected")),
        # OAuthWithCert: the token endpoint requires the certificate; the API only asks for one
        "mtls-oauth": (at("bearer", "mtls-oauth", "optional"), mtls_oauth("mtls-oauth", "mtls")),
        "mtls-oauth-500": (at("bearer", "mtls-oauth-500"), mtls_oauth("mtls-oauth-500", "mtls")),
        "mtls-oauth-rogue": (
            at("bearer", "mtls-oauth-rogue"),
            mtls_oauth("mtls-oauth-rogue", "mtls-rogue"),
        ),
        "mtls-oauth-badpem": (
            at("bearer", "mtls-oauth-badpem"),
            mtls_oauth("mtls-oauth-badpem", "mtls-badpem"),
        ),
        # CertificateGen
        "cert": (at("echo", "cert", "mtls"), cert()),
        "cert-rogue": (at("echo", "cert-rogue", "mtls"), cert("cert-rogue")),
        "cert-expired-client": (at("echo", "cert-expired-client", "mtls"), cert("cert-old")),
        "cert-preamble": (at("echo", "cert-preamble", "mtls"), cert("cert-preamble")),
        "cert-badpem": (at("echo", "cert-badpem", "mtls"), cert("cert-badpem")),
        "cert-mismatch": (at("echo", "cert-mismatch", "mtls"), cert("cert-mismatch")),
        "cert-expired-server": (at("echo", "cert-expired-server", "expired"), cert()),
        # CSRF
        "csrf-exact": csrf("csrf-exact", basic()),
        "csrf-applied": csrf("csrf-applied", basic()),
        "csrf-merge": csrf("csrf-merge", basic()),
        "csrf-fail": csrf("csrf-fail", basic()),
        "csrf-down": csrf("csrf-down", basic(), endpoint_base=nowhere),
        "csrf-cache": csrf("csrf-cache", basic()),
        "csrf-retry": csrf("csrf-retry", basic()),
        "csrf-oauth": csrf("csrf-oauth", oauth("csrf-oauth")),
        "csrf-cert": csrf("csrf-cert", cert(), "mtls"),
        # retry on 401/403: /flaky/{tag}/{failures}[/{then}]
        "retry-oauth": (at("flaky", "retry-oauth") + "/1", oauth("retry-oauth")),
        "retry-403": (mock.url("plain", f"/status/403/{ns}retry-403"), oauth("retry-403")),
        "retry-5xx": (at("flaky", "retry-5xx") + "/1/503", oauth("retry-5xx")),
        "retry-post": (at("flaky", "retry-post") + "/1", basic()),
        "retry-big": (at("flaky", "retry-big") + "/1", oauth("retry-big")),
        # Access-Token override
        "at-basic": (at("echo", "at-basic"), basic()),
        "at-basic-retry": (at("basic", "at-basic-retry"), basic()),
        "at-oauth": (at("echo", "at-oauth"), oauth("at-oauth")),
        "at-cert": (at("echo", "at-cert", "optional"), cert()),
        "at-csrf": csrf("at-csrf", basic()),
    }


def app(name: str, entries: dict[str, tuple[str, Doc]], *, skip_verify: bool = False) -> Doc:
    services = [
        service(svc, [api(url, credentials=creds)]) for svc, (url, creds) in entries.items()
    ]
    doc = application(name, services)
    doc["spec"]["skipVerify"] = skip_verify
    return doc


def registry(mock: CredentialsAPI, pki: Pki, closed: int) -> list[Doc]:
    """`cred` (verify on), `cred-skip` (skipVerify) and `leak` (the leak test's own caches)."""
    main = scenarios(mock, closed, "")
    skipped = {name: main[name] for name in ("cert", "cert-expired-server")}

    def pem(crt: str, key: str, **extra: str) -> dict[str, str]:
        return {"crt": crt, "key": key, **extra}

    client, rogue, old = pki.client, pki.rogue_client, pki.expired_client
    oauth_params = {
        "headers": json.dumps({"X-Tenant": ["acme"]}),
        "queryParameters": json.dumps({"resource": ["urn:e2e"]}),
    }
    broken_crt = "-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n"
    mtls_ids = {"clientId": MTLS_ID, "clientSecret": UNUSED_SECRET}
    return [
        app("cred", main),
        app("cred-skip", skipped, skip_verify=True),
        app("leak", scenarios(mock, closed, "leak-")),
        secret("basic-good", string_data={"username": BASIC_USER, "password": BASIC_PASSWORD}),
        secret("basic-bad", string_data={"username": BASIC_USER, "password": WRONG_PASSWORD}),
        secret(
            "oauth-main",
            string_data={"clientId": OAUTH_ID, "clientSecret": OAUTH_SECRET, **oauth_params},
        ),
        secret("mtls", string_data=pem(client.crt_pem, client.key_pem, **mtls_ids)),
        secret("mtls-rogue", string_data=pem(rogue.crt_pem, rogue.key_pem, **mtls_ids)),
        secret("mtls-badpem", string_data=pem(broken_crt, client.key_pem, **mtls_ids)),
        secret("cert-good", string_data=pem(client.crt_pem, client.key_pem)),
        secret("cert-rogue", string_data=pem(rogue.crt_pem, rogue.key_pem)),
        secret("cert-old", string_data=pem(old.crt_pem, old.key_pem)),
        secret("cert-preamble", string_data=pem(PREAMBLE + client.crt_pem, client.ec_key_pem)),
        secret("cert-badpem", string_data=pem(broken_crt, client.key_pem)),
        secret("cert-mismatch", string_data=pem(client.crt_pem, rogue.key_pem)),
    ]


CLOSED_PORT = closed_port()


def _start(folder: Path, mock: CredentialsAPI, pki: Pki, env: dict[str, str] | None) -> Gateway:
    write_manifest(folder, "apps.yaml", registry(mock, pki, CLOSED_PORT))
    args = ["--log-level", "debug", "--retry-body-limit", "1024", "--proxy-timeout", "3"]
    return Gateway(folder, args, env=env).start()


@pytest.fixture(scope="module")
def gateway(
    credentials_api: CredentialsAPI,
    credentials_pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """Trusts the test server CA through SSL_CERT_FILE; debug logs, 1 KiB retry limit."""
    folder = tmp_path_factory.mktemp("credentials")
    env = {"SSL_CERT_FILE": str(credentials_pki.server_ca_file)}
    gw = _start(folder, credentials_api, credentials_pki, env)
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def untrusting_gateway(
    credentials_api: CredentialsAPI,
    credentials_pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The same registry, with only the system trust store (which lacks the test CA)."""
    gw = _start(tmp_path_factory.mktemp("untrusting"), credentials_api, credentials_pki, None)
    try:
        yield gw
    finally:
        gw.close()


def ask(
    gateway: Gateway,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> Response:
    response = request(gateway.proxy_port, method, path, headers, body)
    if response.status >= 400:
        ERROR_BODIES.append(response.body)
    return response


def only(records: list[Seen]) -> Seen:
    assert len(records) == 1, records
    return records[0]


def only_issued(issued: list[tuple[str, dict[str, str]]]) -> tuple[str, dict[str, str]]:
    assert len(issued) == 1, issued
    return issued[0]


def assert_json_error(response: Response, status: int, message: str) -> None:
    assert response.status == status, response.body
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert response.body == error_body(status, message)


def assert_json_error_prefix(response: Response, status: int, prefix: str) -> None:
    assert response.status == status, response.body
    assert response.header("content-type") == JSON_CONTENT_TYPE
    assert response.json()["code"] == status
    assert response.json()["error"].startswith(prefix), response.body


# -- Basic ---------------------------------------------------------------------------------------


def test_basic_replaces_callers_authorization(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = ask(gateway, "GET", "/cred/basic", [("Authorization", "Bearer caller")])
    assert response.status == 200, response.body
    assert only(credentials_api.at("/basic/basic")).values("authorization") == [BASIC_GOOD]


def test_basic_wrong_password_relays_401_after_one_retry(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = ask(gateway, "GET", "/cred/basic-wrong")
    assert response.status == 401
    assert response.body == b"who are you?"
    assert response.header("www-authenticate") == 'Basic realm="mock"'
    seen = credentials_api.at("/basic/basic-wrong")
    assert [r.values("authorization") for r in seen] == [[BASIC_WRONG], [BASIC_WRONG]]


def test_missing_credentials_secret_is_500(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = ask(gateway, "GET", "/cred/missing")
    message = "failed to read API for missing service, secret 'no-such-secret' not found"
    assert_json_error(response, 500, message)
    assert credentials_api.at("/echo/missing") == []


# -- OAuth ---------------------------------------------------------------------------------------


def test_oauth_token_request_is_exact(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    config = credentials_api.token("oauth-exact")
    response = ask(gateway, "GET", "/cred/oauth-exact", [("Authorization", "Basic caller")])
    assert response.status == 200, response.body
    token = only(credentials_api.token_requests("oauth-exact"))
    assert token.listener == "plain"
    assert token.method == "POST"
    assert token.target == f"/token/oauth-exact?tq={TOKEN_QUERY}&resource=urn%3Ae2e"
    assert token.names() == sorted(
        ["host", "authorization", "content-type", "x-tenant", "content-length"]
    )
    assert token.value("host") == f"127.0.0.1:{credentials_api.ports['plain']}"
    assert token.values("authorization") == [OAUTH_BASIC]
    assert token.values("content-type") == ["application/x-www-form-urlencoded"]
    assert token.values("x-tenant") == ["acme"]
    assert (
        token.body
        == (
            f"client_id={OAUTH_ID}&client_secret={OAUTH_SECRET_FORM}&grant_type=client_credentials"
        ).encode()
    )
    seen = only(credentials_api.at("/bearer/oauth-exact"))
    assert seen.values("authorization") == [f"Bearer {config.issued[0]}"]


def test_oauth_token_is_reused(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    config = credentials_api.token("oauth-reuse")
    for _ in range(10):
        assert ask(gateway, "GET", "/cred/oauth-reuse").status == 200
    assert len(credentials_api.token_requests("oauth-reuse")) == 1
    seen = credentials_api.at("/bearer/oauth-reuse")
    assert [r.value("authorization") for r in seen] == [f"Bearer {config.issued[0]}"] * 10


def test_oauth_concurrent_cold_calls_make_one_token_request(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    # The slow token endpoint keeps the fetch in flight while all 50 requests arrive.
    config = credentials_api.token("oauth-flight", delay=1.0)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(ask, gateway, "GET", "/cred/oauth-flight") for _ in range(50)]
        statuses = [future.result().status for future in futures]
    assert statuses == [200] * 50
    assert len(credentials_api.token_requests("oauth-flight")) == 1
    seen = credentials_api.at("/bearer/oauth-flight")
    assert [r.value("authorization") for r in seen] == [f"Bearer {config.issued[0]}"] * 50


def test_oauth_token_renewed_after_reuse_window(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    # expires_in 3 → reused until sent_at + 3 - max(2, 0.3) = sent_at + 1 s (behaviour.md §7)
    config = credentials_api.token("oauth-renew", expires_in=3)
    started = time.monotonic()
    assert ask(gateway, "GET", "/cred/oauth-renew").status == 200
    assert ask(gateway, "GET", "/cred/oauth-renew").status == 200
    assert time.monotonic() - started < 0.9, "too slow to check reuse inside the window"
    assert len(credentials_api.token_requests("oauth-renew")) == 1
    time.sleep(max(0.0, started + 1.3 - time.monotonic()))
    assert ask(gateway, "GET", "/cred/oauth-renew").status == 200
    assert len(credentials_api.token_requests("oauth-renew")) == 2
    first, second = config.issued
    seen = credentials_api.at("/bearer/oauth-renew")
    expected = [f"Bearer {first}", f"Bearer {first}", f"Bearer {second}"]
    assert [r.value("authorization") for r in seen] == expected


TOKEN_FAILURES = [
    # service, token endpoint behaviour, message (exact, or a prefix when it ends with ": ")
    (
        "oauth-500",
        {"status": 500, "body": b'{"error":"boom"}'},
        "incorrect response code '500' while getting token from "
        "http://127.0.0.1:{plain}/token/oauth-500",
    ),
    (
        "oauth-down",
        {},
        "failed to make a request to 'http://127.0.0.1:{closed}/token/oauth-down': "
        "connection refused",
    ),
    (
        "oauth-badjson",
        {"body": b'{"access_token": "x"'},
        "failed to unmarshal token response body: ",
    ),
    (
        "oauth-empty",
        {"body": b'{"access_token": "", "expires_in": 60}'},
        "failed to unmarshal token response body: ",
    ),
]


@pytest.mark.parametrize(
    ("svc", "options", "expected"), TOKEN_FAILURES, ids=[row[0] for row in TOKEN_FAILURES]
)
def test_oauth_token_endpoint_failure_is_502(
    gateway: Gateway,
    credentials_api: CredentialsAPI,
    svc: str,
    options: dict[str, Any],
    expected: str,
) -> None:
    credentials_api.token(svc, **options)
    response = ask(gateway, "GET", f"/cred/{svc}")
    message = expected.format(plain=credentials_api.ports["plain"], closed=CLOSED_PORT)
    if message.endswith(": "):
        assert_json_error_prefix(response, 502, message)
    else:
        assert_json_error(response, 502, message)
    assert credentials_api.at(f"/bearer/{svc}") == []
    if svc != "oauth-down":
        assert len(credentials_api.token_requests(svc)) == 1


def test_oauth_tokens_rejected_by_api_are_refetched_once(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    config = credentials_api.token("oauth-rejected", rejected=True)
    response = ask(gateway, "GET", "/cred/oauth-rejected")
    assert response.status == 401
    assert response.body == b"who are you?"
    assert len(credentials_api.token_requests("oauth-rejected")) == 2
    seen = credentials_api.at("/bearer/oauth-rejected")
    assert [r.value("authorization") for r in seen] == [f"Bearer {t}" for t in config.issued]


# -- OAuthWithCert -------------------------------------------------------------------------------


def test_oauth_with_cert_presents_certificate_to_token_endpoint_only(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    config = credentials_api.token("mtls-oauth")
    response = ask(gateway, "GET", "/cred/mtls-oauth")
    assert response.status == 200, response.body
    token = only(credentials_api.token_requests("mtls-oauth"))
    assert token.listener == "mtls"
    assert token.peer == credentials_pki.client.fingerprint
    assert token.method == "POST"
    assert token.target == f"/token/mtls-oauth?tq={TOKEN_QUERY}"
    assert token.body == f"client_id={MTLS_ID}&grant_type=client_credentials".encode()
    assert token.names() == sorted(["host", "content-type", "content-length"])
    assert token.values("content-type") == ["application/x-www-form-urlencoded"]
    seen = only(credentials_api.at("/bearer/mtls-oauth"))
    assert seen.listener == "optional"
    assert seen.peer is None, "the API request must not present the token certificate"
    assert seen.values("authorization") == [f"Bearer {config.issued[0]}"]


MTLS_FAILURES = [
    (
        "mtls-oauth-500",
        {"status": 500},
        "Failed to get token: incorrect response code '500' while getting token from "
        "https://127.0.0.1:{mtls}/token/mtls-oauth-500",
    ),
    (
        "mtls-oauth-rogue",
        {},
        "Failed to get token: failed to make a request to "
        "'https://127.0.0.1:{mtls}/token/mtls-oauth-rogue': ",
    ),
    ("mtls-oauth-badpem", {}, "Failed to get token: Failed to prepare certificate, "),
]


@pytest.mark.parametrize(
    ("svc", "options", "expected"), MTLS_FAILURES, ids=[row[0] for row in MTLS_FAILURES]
)
def test_oauth_with_cert_failure_is_500(
    gateway: Gateway,
    credentials_api: CredentialsAPI,
    svc: str,
    options: dict[str, Any],
    expected: str,
) -> None:
    config = credentials_api.token(svc, **options)
    response = ask(gateway, "GET", f"/cred/{svc}")
    message = expected.format(mtls=credentials_api.ports["mtls"])
    if message.endswith((", ", ": ")):
        assert_json_error_prefix(response, 500, message)
    else:
        assert_json_error(response, 500, message)
    assert credentials_api.at(f"/bearer/{svc}") == []
    assert config.issued == []


# -- CertificateGen and server-certificate verification ----------------------------------------


def test_certificate_gen_presents_client_certificate(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    """Also: verification on, with the test CA trusted through SSL_CERT_FILE, works."""
    response = ask(gateway, "GET", "/cred/cert/x", [("Authorization", "Bearer caller")])
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/cert/x"))
    assert seen.listener == "mtls"
    assert seen.peer == credentials_pki.client.fingerprint
    assert seen.values("authorization") == ["Bearer caller"]  # no header added


def test_certificate_gen_pem_with_text_preamble_works(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    """`notBefore=…` lines before the PEM, and an `EC PRIVATE KEY` block (registry.md §2)."""
    response = ask(gateway, "GET", "/cred/cert-preamble")
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/cert-preamble"))
    assert seen.peer == credentials_pki.client.fingerprint


@pytest.mark.parametrize("svc", ["cert-rogue", "cert-expired-client"])
def test_certificate_rejected_by_server_is_502_empty(
    gateway: Gateway, credentials_api: CredentialsAPI, svc: str
) -> None:
    """A client certificate from another CA of the same name, or an expired one (loaded
    anyway: registry.md §2 leaves the dates to the peer), fails the handshake."""
    response = ask(gateway, "GET", f"/cred/{svc}")
    assert response.status == 502
    assert response.body == b""
    assert credentials_api.at(f"/echo/{svc}") == []


@pytest.mark.parametrize("svc", ["cert-badpem", "cert-mismatch"])
def test_certificate_gen_bad_pem_is_500(
    gateway: Gateway, credentials_api: CredentialsAPI, svc: str
) -> None:
    response = ask(gateway, "GET", f"/cred/{svc}")
    assert_json_error_prefix(response, 500, "Failed to prepare certificate, ")
    assert credentials_api.at(f"/echo/{svc}") == []


def test_expired_server_certificate_is_502_empty(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = ask(gateway, "GET", "/cred/cert-expired-server")
    assert response.status == 502
    assert response.body == b""
    assert credentials_api.at("/echo/cert-expired-server") == []


def test_skip_verify_accepts_expired_server_certificate(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    response = ask(gateway, "GET", "/cred-skip/cert-expired-server/skip")
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/cert-expired-server/skip"))
    assert seen.listener == "expired"
    assert seen.peer == credentials_pki.client.fingerprint


def test_untrusted_server_certificate_is_502_empty(
    untrusting_gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = request(untrusting_gateway.proxy_port, "GET", "/cred/cert/untrusted")
    assert response.status == 502
    assert response.body == b""
    assert credentials_api.at("/echo/cert/untrusted") == []


def test_skip_verify_works_without_trust(
    untrusting_gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    response = request(untrusting_gateway.proxy_port, "GET", "/cred-skip/cert/unverified")
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/cert/unverified"))
    assert seen.peer == credentials_pki.client.fingerprint


def test_untrusted_token_endpoint_fails_token_request(
    untrusting_gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    before = len(credentials_api.token_requests("mtls-oauth"))
    response = request(untrusting_gateway.proxy_port, "GET", "/cred/mtls-oauth/untrusted")
    ERROR_BODIES.append(response.body)
    port = credentials_api.ports["mtls"]
    assert_json_error_prefix(
        response,
        500,
        "Failed to get token: failed to make a request to "
        f"'https://127.0.0.1:{port}/token/mtls-oauth': "
        "TLS handshake failed: certificate verify failed",
    )
    assert len(credentials_api.token_requests("mtls-oauth")) == before
    assert credentials_api.at("/bearer/mtls-oauth/untrusted") == []


# -- CSRF ----------------------------------------------------------------------------------------


def test_csrf_fetch_request_is_exact(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    credentials_api.csrf_endpoint("csrf-exact")
    caller = [
        ("X-Caller", "1"),
        ("Cookie", "a=1"),
        ("User-Agent", "caller-agent/1.0"),
        ("X-Request-Id", "csrf-exact"),
    ]
    response = ask(gateway, "POST", "/cred/csrf-exact", caller, b"data")
    assert response.status == 200, response.body
    fetch = only(credentials_api.csrf_fetches("csrf-exact"))
    assert fetch.method == "GET"
    assert fetch.target == "/csrf/csrf-exact/token"
    assert fetch.names() == sorted(
        ["host", "x-csrf-token", "accept", "cache-control", "authorization"]
    )
    assert fetch.value("host") == f"127.0.0.1:{credentials_api.ports['plain']}"
    assert fetch.values("x-csrf-token") == ["fetch"]
    assert fetch.values("accept") == ["*/*"]
    assert fetch.values("cache-control") == ["no-cache"]
    assert fetch.values("authorization") == [BASIC_GOOD]
    assert fetch.body == b""


def test_csrf_token_and_cookies_applied(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    config = credentials_api.csrf_endpoint("csrf-applied")
    response = ask(gateway, "POST", "/cred/csrf-applied", body=b"{}")
    assert response.status == 200, response.body
    token, cookies = only_issued(config.issued)
    seen = only(credentials_api.at("/csrf/csrf-applied/res"))
    assert seen.values("x-csrf-token") == [token]
    expected = f"sap-XSRF={cookies['sap-XSRF']}; SAP_SESSIONID={cookies['SAP_SESSIONID']}"
    assert seen.values("cookie") == [expected]
    assert seen.values("authorization") == [BASIC_GOOD]


def test_csrf_cookie_merged_with_callers_cookies(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    config = credentials_api.csrf_endpoint("csrf-merge", cookies=("sap-XSRF",))
    caller = [("Cookie", "a=1; sap-XSRF=old"), ("X-Csrf-Token", "caller-value")]
    response = ask(gateway, "POST", "/cred/csrf-merge", caller, b"{}")
    assert response.status == 200, response.body
    token, cookies = only_issued(config.issued)
    seen = only(credentials_api.at("/csrf/csrf-merge/res"))
    assert seen.values("cookie") == [f"sap-XSRF={cookies['sap-XSRF']}; a=1"]
    assert seen.values("x-csrf-token") == [token]


CSRF_FAILURES = [
    (
        "csrf-fail",
        "incorrect response code '500' while getting token from "
        "http://127.0.0.1:{plain}/csrf/csrf-fail/token",
    ),
    (
        "csrf-down",
        "failed to make a request to 'http://127.0.0.1:{closed}/csrf/csrf-down/token': "
        "connection refused",
    ),
]


@pytest.mark.parametrize(("svc", "expected"), CSRF_FAILURES, ids=[row[0] for row in CSRF_FAILURES])
def test_csrf_endpoint_failure_is_502(
    gateway: Gateway, credentials_api: CredentialsAPI, svc: str, expected: str
) -> None:
    credentials_api.csrf_endpoint(svc, status=500)
    response = ask(gateway, "POST", f"/cred/{svc}", body=b"{}")
    message = expected.format(plain=credentials_api.ports["plain"], closed=CLOSED_PORT)
    assert_json_error(response, 502, message)
    assert credentials_api.at(f"/csrf/{svc}/res") == []


def test_csrf_token_cached_across_calls(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    config = credentials_api.csrf_endpoint("csrf-cache")
    for _ in range(5):
        assert ask(gateway, "POST", "/cred/csrf-cache", body=b"{}").status == 200
    assert len(credentials_api.csrf_fetches("csrf-cache")) == 1
    token, _ = only_issued(config.issued)
    seen = credentials_api.at("/csrf/csrf-cache/res")
    assert [r.values("x-csrf-token") for r in seen] == [[token]] * 5


def test_csrf_fetch_with_oauth_token(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    tokens = credentials_api.token("csrf-oauth")
    config = credentials_api.csrf_endpoint("csrf-oauth")
    response = ask(gateway, "POST", "/cred/csrf-oauth", body=b"{}")
    assert response.status == 200, response.body
    assert len(credentials_api.token_requests("csrf-oauth")) == 1
    bearer = f"Bearer {tokens.issued[0]}"
    assert only(credentials_api.csrf_fetches("csrf-oauth")).values("authorization") == [bearer]
    seen = only(credentials_api.at("/csrf/csrf-oauth/res"))
    assert seen.values("authorization") == [bearer]
    assert seen.values("x-csrf-token") == [only_issued(config.issued)[0]]


def test_csrf_fetch_with_client_certificate(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    config = credentials_api.csrf_endpoint("csrf-cert")
    response = ask(gateway, "POST", "/cred/csrf-cert", body=b"{}")
    assert response.status == 200, response.body
    fetch = only(credentials_api.csrf_fetches("csrf-cert"))
    assert fetch.peer == credentials_pki.client.fingerprint
    assert fetch.value("authorization") is None
    seen = only(credentials_api.at("/csrf/csrf-cert/res"))
    assert seen.peer == credentials_pki.client.fingerprint
    assert seen.values("x-csrf-token") == [only_issued(config.issued)[0]]


# -- retry on 401/403 ----------------------------------------------------------------------------


def test_retry_401_then_200_refetches_token(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    config = credentials_api.token("retry-oauth")
    response = ask(gateway, "GET", "/cred/retry-oauth", [("X-Request-Id", "retry-oauth")])
    assert response.status == 200, response.body
    assert len(credentials_api.token_requests("retry-oauth")) == 2
    seen = credentials_api.at("/flaky/retry-oauth/1")
    assert [r.value("authorization") for r in seen] == [f"Bearer {t}" for t in config.issued]
    assert len(set(config.issued)) == 2
    line = gateway.wait_log(lambda x: x.get("request_id") == "retry-oauth")
    assert line is not None
    assert (line["status"], line["upstream_status"], line["retried"]) == (200, 200, True)


def test_retry_403_relayed_after_one_retry(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    credentials_api.token("retry-403")
    response = ask(gateway, "GET", "/cred/retry-403")
    assert response.status == 403
    assert response.body == b"status 403"
    assert len(credentials_api.at("/status/403/retry-403")) == 2
    assert len(credentials_api.token_requests("retry-403")) == 2


def test_retry_401_then_5xx_is_502_with_target_status(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    credentials_api.token("retry-5xx")
    response = ask(gateway, "GET", "/cred/retry-5xx")
    assert response.status == 502
    assert response.header("target-system-status") == "503"
    assert response.body == b"then 503"
    assert len(credentials_api.at("/flaky/retry-5xx/1/503")) == 2


def test_retry_resends_identical_post_body(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    body = bytes(range(256)) * 3  # 768 bytes: within --retry-body-limit 1024
    response = ask(gateway, "POST", "/cred/retry-post", [("Content-Type", "a/b")], body)
    assert response.status == 200, response.body
    seen = credentials_api.at("/flaky/retry-post/1")
    assert [r.body for r in seen] == [body, body]
    assert [r.values("authorization") for r in seen] == [[BASIC_GOOD], [BASIC_GOOD]]


def test_body_over_retry_limit_is_not_retried_but_token_is_dropped(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    config = credentials_api.token("retry-big")
    body = b"b" * 4096
    response = ask(gateway, "POST", "/cred/retry-big", body=body)
    assert response.status == 401
    assert response.body == b"who are you?"
    assert only(credentials_api.at("/flaky/retry-big/1")).body == body
    assert len(credentials_api.token_requests("retry-big")) == 1
    # The rejected token was invalidated although the request was not retried (§8 step 1).
    assert ask(gateway, "GET", "/cred/retry-big").status == 200
    assert len(credentials_api.token_requests("retry-big")) == 2
    last = credentials_api.at("/flaky/retry-big/1")[-1]
    assert last.values("authorization") == [f"Bearer {config.issued[1]}"]


def test_csrf_refetched_after_403(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    config = credentials_api.csrf_endpoint("csrf-retry")
    caller = [("Cookie", "a=1")]
    assert ask(gateway, "POST", "/cred/csrf-retry", caller, b"{}").status == 200
    credentials_api.expire_csrf("csrf-retry")
    response = ask(gateway, "POST", "/cred/csrf-retry", caller, b"{}")
    assert response.status == 200, response.body
    assert len(credentials_api.csrf_fetches("csrf-retry")) == 2
    (old, _), (new, cookies) = config.issued
    seen = credentials_api.at("/csrf/csrf-retry/res")
    assert [r.values("x-csrf-token") for r in seen] == [[old], [old], [new]]
    expected = f"sap-XSRF={cookies['sap-XSRF']}; SAP_SESSIONID={cookies['SAP_SESSIONID']}; a=1"
    assert seen[-1].values("cookie") == [expected]


# -- Access-Token override -----------------------------------------------------------------------


def test_access_token_with_basic(gateway: Gateway, credentials_api: CredentialsAPI) -> None:
    response = ask(gateway, "GET", "/cred/at-basic", [("Access-Token", CALLER_TOKEN)])
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/at-basic"))
    assert seen.values("authorization") == [CALLER_TOKEN]
    assert seen.values("access-token") == []


def test_access_token_with_oauth_makes_no_token_request(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    credentials_api.token("at-oauth")
    response = ask(gateway, "GET", "/cred/at-oauth", [("Access-Token", CALLER_TOKEN)])
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/at-oauth"))
    assert seen.values("authorization") == [CALLER_TOKEN]
    assert seen.values("access-token") == []
    assert credentials_api.token_requests("at-oauth") == []


def test_access_token_with_certificate_gen_still_presents_certificate(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    response = ask(gateway, "GET", "/cred/at-cert", [("Access-Token", CALLER_TOKEN)])
    assert response.status == 200, response.body
    seen = only(credentials_api.at("/echo/at-cert"))
    assert seen.listener == "optional"
    assert seen.peer == credentials_pki.client.fingerprint
    assert seen.values("authorization") == [CALLER_TOKEN]
    assert seen.values("access-token") == []


def test_access_token_with_csrf_still_applies_csrf(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    config = credentials_api.csrf_endpoint("at-csrf")
    response = ask(gateway, "POST", "/cred/at-csrf", [("Access-Token", CALLER_TOKEN)], b"{}")
    assert response.status == 200, response.body
    assert only(credentials_api.csrf_fetches("at-csrf")).values("authorization") == [BASIC_GOOD]
    seen = only(credentials_api.at("/csrf/at-csrf/res"))
    assert seen.values("authorization") == [CALLER_TOKEN]
    assert seen.values("x-csrf-token") == [only_issued(config.issued)[0]]
    assert seen.values("access-token") == []


def test_access_token_rejected_retry_uses_configured_credentials(
    gateway: Gateway, credentials_api: CredentialsAPI
) -> None:
    response = ask(gateway, "GET", "/cred/at-basic-retry", [("Access-Token", "Basic bm9wZQ==")])
    assert response.status == 200, response.body
    seen = credentials_api.at("/basic/at-basic-retry")
    assert [r.values("authorization") for r in seen] == [["Basic bm9wZQ=="], [BASIC_GOOD]]


# -- no secret leaks -----------------------------------------------------------------------------

LEAK_TOKENS: list[tuple[str, dict[str, Any]]] = [
    ("oauth-reuse", {}),
    ("oauth-500", {"status": 500}),
    ("oauth-badjson", {"body": b"{"}),
    ("mtls-oauth", {}),
    ("mtls-oauth-500", {"status": 500}),
    ("retry-oauth", {}),
    ("retry-403", {}),
    ("csrf-oauth", {}),
    ("at-oauth", {}),
]
LEAK_CALLS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("GET", f"basic?sig={CALLER_QUERY}", []),
    ("GET", "basic-wrong", []),
    ("GET", f"oauth-reuse?sig={CALLER_QUERY}", []),
    ("GET", "oauth-500", []),
    ("GET", "oauth-down", []),
    ("GET", "oauth-badjson", []),
    ("GET", "mtls-oauth", []),
    ("GET", "mtls-oauth-500", []),
    ("GET", "mtls-oauth-rogue", []),
    ("GET", "mtls-oauth-badpem", []),
    ("GET", "cert", []),
    ("GET", "cert-badpem", []),
    ("GET", "cert-rogue", []),
    ("POST", "csrf-applied", [("Cookie", "a=1")]),
    ("POST", "csrf-oauth", [("Cookie", "a=1")]),
    ("POST", "csrf-fail", []),
    ("POST", "csrf-down", []),
    ("GET", "retry-oauth", []),
    ("GET", "retry-403", []),
    ("GET", "at-oauth", [("Access-Token", CALLER_TOKEN)]),
    ("GET", "missing", []),
]


def has_msg(msg: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("msg") == msg


def test_no_secret_in_logs_or_error_bodies(
    gateway: Gateway, credentials_api: CredentialsAPI, credentials_pki: Pki
) -> None:
    """A mix of every type, success and failure, on the `leak` app (its own caches), then
    a search of the whole debug-level stderr and of every error body of this module."""
    expected_lines = len(gateway.access_lines()) + len(LEAK_CALLS)
    for tag, options in LEAK_TOKENS:
        credentials_api.token("leak-" + tag, **options)
    credentials_api.csrf_endpoint("leak-csrf-fail", status=500)
    statuses = [
        ask(gateway, method, "/leak/" + path, headers, b"{}" if method == "POST" else None).status
        for method, path, headers in LEAK_CALLS
    ]
    assert {200, 401, 403, 500, 502} <= set(statuses), statuses
    # The debug lines of token and CSRF fetches were written, so they are searched too.
    for msg in ("token fetched", "token request failed", "CSRF token fetched"):
        assert gateway.wait_log(has_msg(msg)) is not None, msg

    pki = credentials_pki
    key_lines = [
        line
        for pair in (pki.client, pki.rogue_client, pki.expired_client)
        for pem in (pair.key_pem, pair.ec_key_pem)
        for line in pem.splitlines()[1:-1]
    ]
    secrets = [
        BASIC_PASSWORD,
        WRONG_PASSWORD,
        BASIC_GOOD.split()[1],
        BASIC_WRONG.split()[1],
        OAUTH_SECRET,
        OAUTH_SECRET_FORM,
        OAUTH_BASIC.split()[1],
        UNUSED_SECRET,
        TOKEN_QUERY,
        CALLER_QUERY,
        CALLER_TOKEN.split()[1],
        *credentials_api.handed_out,
        *key_lines,
    ]
    assert any(value.startswith("at-leak-") for value in credentials_api.handed_out)
    assert any(value.startswith("csrf-leak-") for value in credentials_api.handed_out)
    # Every access line of the mix is in before searching.
    assert wait_until(lambda: len(gateway.access_lines()) >= expected_lines, 5) is not None
    texts = {"stderr": "\n".join(list(gateway.raw_lines))}
    texts.update({f"error body {i}": b.decode("latin-1") for i, b in enumerate(ERROR_BODIES)})
    for where, text in texts.items():
        leaked = [value for value in secrets if value in text]
        assert leaked == [], f"{where} shows {leaked}"
