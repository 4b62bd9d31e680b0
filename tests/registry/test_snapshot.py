from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from appgateway.errors import BadRequest, GatewayError, NotFound
from appgateway.model import (
    API,
    BasicAuth,
    CertificateAuth,
    ClientCert,
    NoAuth,
    OAuth,
    OAuthMTLS,
    RequestParameters,
)
from appgateway.registry.parse import AppDoc, SecretDoc, parse_file
from appgateway.registry.snapshot import (
    APIConfigError,
    Snapshot,
    SnapshotBuilder,
    build_snapshot,
)

Doc = dict[str, Any]


def load_cert(crt: bytes, key: bytes) -> ClientCert:
    """A stand-in for tls.load_client_cert: `good-*` PEM loads, anything else is refused."""
    if crt.startswith(b"good") and key.startswith(b"good"):
        return ClientCert(crt, key, f"fp-{crt.decode()}-{key.decode()}")
    raise ValueError("no CERTIFICATE block in crt")


def application(services: list[Doc], name: str = "erp", **spec: Any) -> Doc:
    return {
        "apiVersion": "applicationconnector.kyma-project.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name},
        "spec": {**spec, "services": services},
    }


def service(display: str, *entries: Doc, id: str = "", name: str = "") -> Doc:
    return {"id": id, "name": name, "displayName": display, "entries": list(entries)}


def api(
    name: str = "e",
    target: str = "https://h.example/api",
    credentials: Doc | None = None,
    params: str = "",
) -> Doc:
    entry: Doc = {"type": "API", "name": name, "targetUrl": target}
    if credentials is not None:
        entry["credentials"] = credentials
    if params:
        entry["requestParametersSecretName"] = params
    return entry


def secret(name: str, namespace: str | None = "kyma-system", **values: str) -> Doc:
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": values}


def build(*docs: Doc, namespace: str = "kyma-system") -> Snapshot:
    result = parse_file("apps.yaml", yaml.safe_dump_all(docs).encode())
    assert result.issues == ()
    return build_snapshot(
        [d for d in result.objects if isinstance(d, AppDoc)],
        [d for d in result.objects if isinstance(d, SecretDoc)],
        secrets_namespace=namespace,
        load_cert=load_cert,
    )


def one(entry: Doc, *secrets: Doc, **spec: Any) -> Snapshot:
    return build(application([service("Orders", entry, name="orders-svc")], **spec), *secrets)


def lookup(snapshot: Snapshot) -> API:
    result = snapshot.by_path("erp", "orders", None)
    assert isinstance(result, API), result
    return result


def issues(snapshot: Snapshot) -> list[str]:
    return [f"{i.severity}: {i}" for i in snapshot.issues]


E = "apps.yaml#1: Application/erp: spec.services[0].entries[0]"
PREFIX = "failed to read API for orders-svc service, "

CONFIG_ERRORS = [
    pytest.param(
        api(target=""),
        [],
        "failed to parse target url '': 'empty url'",
        f"{E}.targetUrl",
        id="empty-target",
    ),
    pytest.param(
        api(target="/relative"),
        [],
        "failed to parse target url '/relative': 'missing scheme or host'",
        f"{E}.targetUrl",
        id="relative-target",
    ),
    pytest.param(
        api(target="ftp://u:p@h/x?token=abc#f"),
        [],
        "failed to parse target url 'ftp://h/x': 'unsupported scheme \"ftp\"'",
        f"{E}.targetUrl",
        id="scheme-redacted",
    ),
    pytest.param(
        api(credentials={"type": "Basic"}),
        [],
        PREFIX + "credentials.secretName is empty",
        f"{E}.credentials.secretName",
        id="no-secret-name",
    ),
    pytest.param(
        api(credentials={"csrfInfo": {"tokenEndpointURL": "http://c"}}),
        [],
        PREFIX + "credentials.secretName is empty",
        f"{E}.credentials.secretName",
        id="csrf-only-needs-secret",
    ),
    pytest.param(
        api(credentials={"type": "OAuth", "secretName": "s"}),
        [secret("s")],
        PREFIX + "credentials.authenticationUrl is empty",
        f"{E}.credentials.authenticationUrl",
        id="oauth-no-url",
    ),
    pytest.param(
        api(credentials={"type": "OAuthWithCert", "secretName": "s"}),
        [secret("s")],
        PREFIX + "credentials.authenticationUrl is empty",
        f"{E}.credentials.authenticationUrl",
        id="mtls-no-url",
    ),
    pytest.param(
        api(credentials={"type": "Basic", "secretName": "missing"}),
        [],
        PREFIX + "secret 'missing' not found",
        f"{E}.credentials.secretName",
        id="secret-missing",
    ),
    pytest.param(
        api(credentials={"type": "Custom", "secretName": "missing"}),
        [],
        PREFIX + "secret 'missing' not found",
        f"{E}.credentials.secretName",
        id="unknown-type-secret-missing",
    ),
    pytest.param(
        api(credentials={"type": "Basic", "secretName": "s"}),
        [secret("s", "other")],
        PREFIX + "secret 's' not found",
        f"{E}.credentials.secretName",
        id="secret-other-namespace",
    ),
    pytest.param(
        api(params="p"),
        [],
        PREFIX + "secret 'p' not found",
        f"{E}.requestParametersSecretName",
        id="params-secret-missing",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", headers='{"X-A": "v"}')],
        PREFIX + "Failed to unmarshal headers, the value of 'X-A' is not an array of strings",
        f"{E}.requestParametersSecretName",
        id="params-plain-string",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", queryParameters="{bad")],
        PREFIX + "Failed to unmarshal query parameters, invalid JSON at line 1, "
        "column 2: Expecting property name enclosed in double quotes",
        f"{E}.requestParametersSecretName",
        id="params-bad-json",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", queryParameters='["a"]')],
        PREFIX + "Failed to unmarshal query parameters, want a JSON object that maps "
        "names to arrays of strings",
        f"{E}.requestParametersSecretName",
        id="params-not-object",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", headers='{"X-A": ["ok", "a\\r\\nB: c"]}')],
        PREFIX + "Failed to unmarshal headers, header 'X-A' has a value with CR, LF or NUL",
        f"{E}.requestParametersSecretName",
        id="params-crlf",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", headers='{"X A": ["v"]}')],
        PREFIX + "Failed to unmarshal headers, invalid header name 'X A'",
        f"{E}.requestParametersSecretName",
        id="params-bad-name",
    ),
    pytest.param(
        api(credentials={"type": "OAuth", "secretName": "s", "authenticationUrl": "http://t"}),
        [secret("s", headers='{"X-T": [1]}')],
        PREFIX + "Failed to unmarshal headers, the value of 'X-T' is not an array of strings",
        f"{E}.credentials.secretName",
        id="oauth-headers",
    ),
    pytest.param(
        api(credentials={"type": "OAuth", "secretName": "s", "authenticationUrl": "http://t"}),
        [secret("s", queryParameters="[")],
        PREFIX + "Failed to unmarshal query parameters, invalid JSON at line 1, column 2: "
        "Expecting value",
        f"{E}.credentials.secretName",
        id="oauth-query",
    ),
    pytest.param(
        api(credentials={"type": "CertificateGen", "secretName": "s"}),
        [secret("s", crt="bad", key="good")],
        "Failed to prepare certificate, no CERTIFICATE block in crt",
        f"{E}.credentials.secretName",
        id="certgen-pem",
    ),
    pytest.param(
        api(
            credentials={
                "type": "OAuthWithCert",
                "secretName": "s",
                "authenticationUrl": "https://t",
            }
        ),
        [secret("s", clientId="id", crt="bad", key="good")],
        "Failed to get token: Failed to prepare certificate, no CERTIFICATE block in crt",
        f"{E}.credentials.secretName",
        id="mtls-pem",
    ),
]


@pytest.mark.parametrize(("entry", "secrets", "message", "where"), CONFIG_ERRORS)
def test_config_errors(entry: Doc, secrets: list[Doc], message: str, where: str) -> None:
    snapshot = one(entry, *secrets)
    result = snapshot.by_path("erp", "orders", None)
    assert isinstance(result, APIConfigError)
    assert result.status == 500
    assert result.message == message
    assert result.ref.app == "erp" and result.ref.service == "orders"
    assert f"error: {where}: {message}" in issues(snapshot)
    assert snapshot.error_count == 1 and snapshot.api_count == 0
    # The same answer on every listener, and a fresh object each time.
    compass = snapshot.by_path("erp", "orders", "e")
    assert isinstance(compass, APIConfigError) and compass.message == message
    assert compass is not snapshot.by_path("erp", "orders", "e")


def test_secrets_checked_before_target_url() -> None:
    snapshot = one(api(target="", credentials={"type": "Basic", "secretName": "nope"}))
    result = snapshot.by_path("erp", "orders", None)
    assert isinstance(result, GatewayError)
    assert result.message == PREFIX + "secret 'nope' not found"


def test_service_name_falls_back_to_display_name() -> None:
    snapshot = build(application([service("Orders", api(credentials={"type": "Basic"}))]))
    result = snapshot.by_path("erp", "orders", None)
    assert isinstance(result, GatewayError)
    assert (
        result.message == "failed to read API for Orders service, credentials.secretName is empty"
    )


BASIC = {"type": "Basic", "secretName": "s"}
OAUTH = {"type": "OAuth", "secretName": "s", "authenticationUrl": "https://t/token"}

WARNINGS = [
    pytest.param(
        api(
            credentials={
                "type": "basic",
                "secretName": "s",
                "csrfInfo": {"tokenEndpointURL": "https://c"},
            }
        ),
        [secret("s")],
        [
            f"{E}.credentials.type: unknown type 'basic': requests are sent without auth",
            f"{E}.credentials.csrfInfo: ignored with an unknown credentials type",
        ],
        id="unknown-type",
    ),
    pytest.param(
        api(credentials=BASIC),
        [secret("s", username="u")],
        [f"{E}.credentials.secretName: Secret 's' has no key 'password': read as empty"],
        id="missing-key",
    ),
    pytest.param(
        api(target="https://user:pw@h.example/x"),
        [],
        [f"{E}.targetUrl: user-info is ignored"],
        id="userinfo",
    ),
    pytest.param(
        api(params="p"),
        [secret("p", headers='{"Host": ["x"], "X-A": ["1"], "connection": ["close"]}')],
        [
            f"{E}.requestParametersSecretName: header 'Host' is set by the gateway and ignored",
            f"{E}.requestParametersSecretName: header 'connection' is set by "
            "the gateway and ignored",
        ],
        id="ignored-params",
    ),
]


@pytest.mark.parametrize(("entry", "secrets", "expected"), WARNINGS)
def test_warnings(entry: Doc, secrets: list[Doc], expected: list[str]) -> None:
    snapshot = one(entry, *secrets)
    assert issues(snapshot) == [f"warning: {w}" for w in expected]
    assert snapshot.error_count == 0
    assert isinstance(snapshot.by_path("erp", "orders", None), API)


def test_credentials_resolution() -> None:
    entries = [
        api("none"),
        api("basic", credentials=BASIC),
        api("oauth", credentials={**OAUTH, "csrfInfo": {"tokenEndpointURL": "https://c/x"}}),
        api("mtls", credentials={**OAUTH, "type": "OAuthWithCert", "secretName": "m"}),
        api("cert", credentials={"type": "CertificateGen", "secretName": "c"}),
        api(
            "unknown",
            credentials={
                "type": "Other",
                "secretName": "s",
                "csrfInfo": {"tokenEndpointURL": "https://c"},
            },
        ),
        api("csrf-empty", credentials={**BASIC, "csrfInfo": {"tokenEndpointURL": ""}}),
    ]
    snapshot = build(
        application([service("Orders", *entries)], skipVerify=True, encodeUrl=False),
        secret(
            "s",
            username="alice",
            password="s3cret",
            clientId="id",
            clientSecret="sec",
            headers='{"X-Tenant": ["acme"], "X-Null": null}',
            queryParameters='{"resource": ["urn:a", "urn:b"]}',
        ),
        secret("m", clientId="mid", clientSecret="unused", crt="good-crt", key="good-key"),
        secret("c", crt="good-crt", key="good-key", username="x"),
    )

    def get(entry: str) -> API:
        result = snapshot.by_path("erp", "orders", entry)
        assert isinstance(result, API), result
        assert result.skip_verify is True and result.encode_url is False
        return result

    cert = ClientCert(b"good-crt", b"good-key", "fp-good-crt-good-key")
    token_headers = (("X-Tenant", ("acme",)),)
    token_query = (("resource", ("urn:a", "urn:b")),)
    assert get("none").credentials == NoAuth() and get("none").csrf_url is None
    assert get("basic").credentials == BasicAuth("alice", "s3cret")
    assert get("oauth").credentials == OAuth(
        "https://t/token", "id", "sec", token_headers, token_query
    )
    assert get("oauth").csrf_url == "https://c/x"
    assert get("mtls").credentials == OAuthMTLS("https://t/token", "mid", cert)
    assert get("cert").credentials == CertificateAuth(cert)
    assert get("unknown").credentials == NoAuth() and get("unknown").csrf_url is None
    assert get("csrf-empty").csrf_url is None
    assert snapshot.client_certs() == (cert,)
    assert snapshot.error_count == 0


def test_request_parameters() -> None:
    snapshot = one(
        api(params="p"),
        secret(
            "p",
            headers='{"X-Api-Key": ["k"], "Content-Length": ["1"], "X-Multi": ["a", "b"]}',
            queryParameters='{"tag": ["x", "y"], "sap-language": ["EN"]}',
        ),
    )
    assert lookup(snapshot).params == RequestParameters(
        headers=(("X-Api-Key", ("k",)), ("X-Multi", ("a", "b"))),
        query=(("tag", ("x", "y")), ("sap-language", ("EN",))),
    )


@pytest.mark.parametrize("value", ["", "   ", "null"])
def test_blank_parameters_mean_none(value: str) -> None:
    snapshot = one(api(params="p"), secret("p", headers=value, queryParameters=value))
    assert lookup(snapshot).params == RequestParameters()


def test_secret_without_namespace_counts_and_others_warn() -> None:
    snapshot = one(
        api(credentials=BASIC),
        secret("s", None, username="u", password="p"),
        secret("x", "default"),
    )
    assert lookup(snapshot).credentials == BasicAuth("u", "p")
    assert issues(snapshot) == [
        "warning: apps.yaml#3: Secret/x: metadata.namespace: outside the secrets namespace "
        "'kyma-system', ignored"
    ]


def test_secret_in_namespace_and_without_is_a_duplicate() -> None:
    snapshot = one(api(credentials=BASIC), secret("s", None, username="first"), secret("s"))
    assert lookup(snapshot).credentials == BasicAuth("first", "")
    assert (
        "error: apps.yaml#3: Secret/s: metadata.name: duplicate name, first defined in "
        "apps.yaml#2" in issues(snapshot)
    )


def test_pem_loaded_once_per_pair() -> None:
    calls: list[bytes] = []

    def counting(crt: bytes, key: bytes) -> ClientCert:
        calls.append(crt)
        return load_cert(crt, key)

    docs = [
        application(
            [
                service(
                    "A",
                    api("a1", credentials={"type": "CertificateGen", "secretName": "c"}),
                    api("a2", credentials={"type": "CertificateGen", "secretName": "c"}),
                )
            ]
        ),
        secret("c", crt="good", key="good"),
    ]
    result = parse_file("a.yaml", yaml.safe_dump_all(docs).encode())
    build_snapshot(
        [d for d in result.objects if isinstance(d, AppDoc)],
        [d for d in result.objects if isinstance(d, SecretDoc)],
        secrets_namespace="kyma-system",
        load_cert=counting,
    )
    assert calls == [b"good"]


ROUTING = build(
    application(
        [
            service("Orders API (v2)", api("Sales Orders"), id="3f1c", name="orders"),
            service("Customers", api("list"), api("List!"), api("get"), id="77aa01"),
            service("orders api v2", api("other"), id="dup"),
            service("Events only", {"type": "Events", "name": "e"}, id="ev"),
            service("No id", api("x")),
        ]
    ),
    application([service("Shared", api("a"), id="a-b")], name="shop"),
    application([service("Shared", api("b"), id="b")], name="shop-a"),
)


@pytest.mark.parametrize(
    ("app", "service_name", "entry", "expected"),
    [
        ("erp", "customers", "get", "get"),
        ("erp", "no-id", None, "x"),
        ("erp", "no-id", "x", "x"),
        ("erp", "orders-api-v2", "sales-orders", "Sales Orders"),
        ("erp", "orders-api-v2", "other", "other"),
        ("shop", "shared", None, "a"),
    ],
)
def test_by_path_found(app: str, service_name: str, entry: str | None, expected: str) -> None:
    result = ROUTING.by_path(app, service_name, entry)
    assert isinstance(result, API)
    assert result.ref.entry_name == expected


@pytest.mark.parametrize(
    ("app", "service_name", "entry", "status", "message"),
    [
        ("erp", "missing", None, 404, "service with name missing not found"),
        ("nope", "customers", None, 404, "service with name customers not found"),
        ("erp", "Customers", None, 404, "service with name Customers not found"),
        ("erp", "events-only", None, 404, "service with name events-only not found"),
        (
            "erp",
            "customers",
            "nope",
            404,
            "service with name customers and entry name nope not found",
        ),
        (
            "erp",
            "customers",
            None,
            400,
            "failed to get service with name 'customers': multiple services found: "
            "service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'list' | "
            "service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'List!' | "
            "service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'get'",
        ),
        (
            "erp",
            "customers",
            "list",
            400,
            "failed to get service with name 'customers' and entry name 'list': multiple services "
            "found: service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'list' | "
            "service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'List!'",
        ),
        (
            "erp",
            "orders-api-v2",
            None,
            400,
            "failed to get service with name 'orders-api-v2': multiple services found: "
            "service.ID: '3f1c', service.DisplayName: 'Orders API (v2)', "
            "entry.Name: 'Sales Orders' | "
            "service.ID: 'dup', service.DisplayName: 'orders api v2', entry.Name: 'other'",
        ),
    ],
)
def test_by_path_errors(
    app: str, service_name: str, entry: str | None, status: int, message: str
) -> None:
    result = ROUTING.by_path(app, service_name, entry)
    assert isinstance(result, GatewayError)
    assert type(result) is (BadRequest if status == 400 else NotFound)
    assert (result.status, result.message) == (status, message)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("erp-3f1c", "Sales Orders"),
        ("ERP-3F1C", "Sales Orders"),
        ("erp-dup", "other"),
        ("erp-ev", None),
        ("erp-", None),
        ("erp", None),
        ("", None),
        ("erp-3f1c.example", None),
    ],
)
def test_by_host_label(label: str, expected: str | None) -> None:
    result = ROUTING.by_host_label(label)
    if expected is None:
        assert result is None
    else:
        assert isinstance(result, API) and result.ref.entry_name == expected


def test_by_host_label_ambiguous() -> None:
    several_entries = ROUTING.by_host_label("Erp-77aa01")
    assert isinstance(several_entries, BadRequest)
    assert several_entries.message.startswith(
        "failed to get service with name 'Erp-77aa01': multiple services found: "
        "service.ID: '77aa01', service.DisplayName: 'Customers', entry.Name: 'list' | "
    )
    shared = ROUTING.by_host_label("shop-a-b")
    assert isinstance(shared, BadRequest)
    assert shared.message == (
        "failed to get service with name 'shop-a-b': multiple services found: "
        "service.ID: 'a-b', service.DisplayName: 'Shared', entry.Name: 'a' | "
        "service.ID: 'b', service.DisplayName: 'Shared', entry.Name: 'b'"
    )


def test_routing_warnings_and_counts() -> None:
    assert issues(ROUTING) == [
        "warning: apps.yaml#1: Application/erp: spec.services[1]: 3 API entries: only the "
        "Compass listener reaches them",
        "warning: apps.yaml#1: Application/erp: spec.services[2].displayName: 'orders api v2' "
        "normalises to 'orders-api-v2' like 'Orders API (v2)': proxy requests get 400",
        "warning: apps.yaml#1: Application/erp: spec.services[1].entries[1].name: 'List!' "
        "normalises to 'list' like 'list' in 'Customers': Compass requests get 400",
        "warning: apps.yaml#3: Application/shop-a: spec.services[0].id: host label 'shop-a-b' is "
        "also the label of Application/shop service 'Shared': host requests get 400",
    ]
    assert (ROUTING.application_count, ROUTING.api_count, ROUTING.error_count) == (3, 8, 0)
    flags = {
        (r.ref.app, r.ref.entry_name): (r.path_ambiguous, r.compass_ambiguous, r.host_ambiguous)
        for r in ROUTING.entries()
    }
    assert flags[("erp", "get")] == (True, False, True)
    assert flags[("erp", "list")] == (True, True, True)
    assert flags[("erp", "Sales Orders")] == (True, False, False)
    assert flags[("erp", "x")] == (False, False, False)
    assert flags[("shop", "a")] == (False, False, True)


def test_host_label_uses_first_26_characters_of_app() -> None:
    name = "a" * 30
    snapshot = build(application([service("S", api(), id="id1")], name=name))
    assert [r.host_label for r in snapshot.entries()] == ["a" * 26 + "-id1"]
    assert isinstance(snapshot.by_host_label("a" * 26 + "-ID1"), API)


def test_empty_display_name_warns() -> None:
    snapshot = build(application([service("!!!", api())]))
    assert issues(snapshot) == [
        "warning: apps.yaml#1: Application/erp: spec.services[0].displayName: normalises to "
        "an empty name: not reachable by path"
    ]


def test_duplicate_application_names_keep_the_first() -> None:
    snapshot = build(
        application([service("A", api("first"))]), application([service("A", api("second"))])
    )
    assert lookup_entry(snapshot, "a") == "first"
    assert issues(snapshot) == [
        "error: apps.yaml#2: Application/erp: metadata.name: duplicate name, first defined in "
        "apps.yaml#1"
    ]


def lookup_entry(snapshot: Snapshot, service_name: str) -> str:
    result = snapshot.by_path("erp", service_name, None)
    assert isinstance(result, API)
    return result.ref.entry_name


def test_empty_snapshot() -> None:
    snapshot = Snapshot()
    assert snapshot.by_host_label("x") is None
    assert isinstance(snapshot.by_path("a", "b", None), NotFound)
    assert (snapshot.api_count, snapshot.application_count, snapshot.error_count) == (0, 0, 0)


def test_parse_issues_come_first() -> None:
    result = parse_file("a.yaml", b"kind: X\n")
    snapshot = build_snapshot(
        [], [], secrets_namespace="ns", load_cert=load_cert, issues=result.issues
    )
    assert [str(i) for i in snapshot.issues] == ["a.yaml#1: X: apiVersion: is required"]
    assert snapshot.error_count == 1


# --------------------------------------------------------------------------- incremental builds


class Files:
    """Manifest files parsed once each, so unchanged files keep their document objects."""

    def __init__(self) -> None:
        self.raw: dict[str, tuple[Doc, ...]] = {}
        self.parsed: dict[str, tuple[AppDoc | SecretDoc, ...]] = {}

    def write(self, name: str, *docs: Doc) -> None:
        self.raw[name] = docs
        self.parsed[name] = parse_file(name, yaml.safe_dump_all(docs).encode()).objects

    def delete(self, name: str) -> None:
        del self.raw[name], self.parsed[name]

    def docs(self) -> tuple[list[AppDoc], list[SecretDoc]]:
        objects = [d for name in sorted(self.parsed) for d in self.parsed[name]]
        return (
            [d for d in objects if isinstance(d, AppDoc)],
            [d for d in objects if isinstance(d, SecretDoc)],
        )


def incremental(builder: SnapshotBuilder, files: Files) -> Snapshot:
    """The builder's snapshot, checked against one built from scratch."""
    apps, secrets = files.docs()
    snapshot = builder.build(apps, secrets)
    full = build_snapshot(apps, secrets, secrets_namespace="kyma-system", load_cert=load_cert)
    assert snapshot.issues == full.issues
    assert snapshot.routes == full.routes
    assert snapshot.application_count == full.application_count
    assert snapshot._index == full._index
    return snapshot


def routes_of(snapshot: Snapshot, app: str) -> list[object]:
    return [r for r in snapshot.routes if r.ref.app == app]


CREDS = {"type": "Basic", "secretName": "creds"}


def test_unchanged_applications_keep_their_route_objects() -> None:
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=load_cert)
    files.write("a.yaml", application([service("Orders", api(credentials=CREDS), id="1")]))
    files.write("b.yaml", application([service("Items", api(), id="2")], name="shop"))
    files.write("s.yaml", secret("creds", username="alice"))
    before = incremental(builder, files)
    assert builder.resolved_count == 2
    changed = service("Items", api(), api("f"), id="2")
    files.write("b.yaml", application([changed], name="shop"))
    after = incremental(builder, files)
    assert builder.resolved_count == 3
    kept = zip(routes_of(after, "erp"), routes_of(before, "erp"), strict=True)
    assert all(a is b for a, b in kept)
    assert len(routes_of(after, "shop")) == 2
    assert incremental(builder, files).routes[0] is before.routes[0]  # nothing changed
    assert builder.resolved_count == 3


def test_a_secret_change_resolves_the_applications_that_use_it_again() -> None:
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=load_cert)
    files.write("a.yaml", application([service("Orders", api(credentials=CREDS))]))
    files.write("b.yaml", application([service("Items", api())], name="shop"))
    files.write("s.yaml", secret("creds", username="alice"))
    first = incremental(builder, files)
    files.write("s.yaml", secret("creds", username="bob"))
    second = incremental(builder, files)
    assert builder.resolved_count == 3
    assert lookup(second).credentials == BasicAuth("bob", "")
    assert routes_of(second, "shop") == routes_of(first, "shop")
    assert routes_of(second, "shop")[0] is routes_of(first, "shop")[0]
    files.delete("s.yaml")  # a deleted Secret
    third = incremental(builder, files)
    assert issues(third) == [
        "error: a.yaml#1: Application/erp: spec.services[0].entries[0].credentials.secretName: "
        "failed to read API for Orders service, secret 'creds' not found"
    ]
    files.write("s.yaml", secret("creds", username="carol"))  # one that was missing
    assert lookup(incremental(builder, files)).credentials == BasicAuth("carol", "")
    assert builder.resolved_count == 5


def test_duplicates_appear_and_disappear_like_in_a_full_build() -> None:
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=load_cert)
    files.write("a.yaml", application([service("Orders", api("first", credentials=CREDS))]))
    files.write("s.yaml", secret("creds", username="alice", password="pw"))
    incremental(builder, files)
    files.write("z.yaml", application([service("Orders", api("second"))]), secret("creds"))
    both = incremental(builder, files)
    assert lookup(both).ref.entry_name == "first"
    assert issues(both) == [
        "error: z.yaml#2: Secret/creds: metadata.name: duplicate name, first defined in s.yaml#1",
        "error: z.yaml#1: Application/erp: metadata.name: duplicate name, first defined in "
        "a.yaml#1",
    ]
    assert builder.resolved_count == 1
    files.delete("a.yaml")  # the second definition takes over
    alone = incremental(builder, files)
    assert lookup(alone).ref.entry_name == "second"
    assert issues(alone) == [
        "error: z.yaml#2: Secret/creds: metadata.name: duplicate name, first defined in s.yaml#1"
    ]
    files.delete("s.yaml")
    files.write("a.yaml", application([service("Orders", api("first", credentials=CREDS))]))
    back = incremental(builder, files)
    assert lookup(back).credentials == BasicAuth("", "")  # z.yaml's Secret has no values
    assert issues(back)[-1] == (
        "error: z.yaml#1: Application/erp: metadata.name: duplicate name, first defined in a.yaml#1"
    )


def test_shared_host_labels_flag_and_unflag_routes_of_unchanged_applications() -> None:
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=load_cert)
    files.write("a.yaml", application([service("Shared", api("a"), id="a-b")], name="shop"))
    alone = incremental(builder, files)
    assert isinstance(alone.by_host_label("shop-a-b"), API)
    files.write("b.yaml", application([service("Shared", api("b"), id="b")], name="shop-a"))
    shared = incremental(builder, files)
    assert builder.resolved_count == 2
    assert [r.host_ambiguous for r in shared.routes] == [True, True]
    assert isinstance(shared.by_host_label("shop-a-b"), BadRequest)
    assert issues(shared) == [
        "warning: b.yaml#1: Application/shop-a: spec.services[0].id: host label 'shop-a-b' is "
        "also the label of Application/shop service 'Shared': host requests get 400"
    ]
    files.delete("b.yaml")
    again = incremental(builder, files)
    assert again.routes == alone.routes
    assert isinstance(again.by_host_label("shop-a-b"), API)
    assert builder.resolved_count == 2


def test_certificates_are_loaded_once_while_in_use() -> None:
    calls: list[bytes] = []

    def counting(crt: bytes, key: bytes) -> ClientCert:
        calls.append(crt)
        return load_cert(crt, key)

    cert = {"type": "CertificateGen", "secretName": "c"}
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=counting)
    files.write("a.yaml", application([service("A", api(credentials=cert))]))
    files.write("b.yaml", application([service("B", api(credentials=cert))], name="shop"))
    files.write("s.yaml", secret("c", crt="good", key="good"))
    builder.build(*files.docs())
    files.write("b.yaml", application([service("B2", api(credentials=cert))], name="shop"))
    builder.build(*files.docs())
    assert calls == [b"good"]
    files.write("s.yaml", secret("c", crt="good-2", key="good"), secret("old", crt="good"))
    snapshot = builder.build(*files.docs())
    assert calls == [b"good", b"good-2"]
    assert [c.fingerprint for c in snapshot.client_certs()] == ["fp-good-2-good"]
    files.write("s.yaml", secret("c", crt="good", key="good"))
    builder.build(*files.docs())
    assert calls == [b"good", b"good-2", b"good"]  # dropped when no longer used


def test_incremental_builds_match_full_builds() -> None:
    """A walk through changes of every kind, each build checked against a full one."""
    oauth = {"type": "OAuth", "secretName": "o", "authenticationUrl": "https://t.example/t"}
    cert = {"type": "CertificateGen", "secretName": "c"}
    mtls = {**oauth, "type": "OAuthWithCert", "secretName": "c"}
    files, builder = Files(), SnapshotBuilder(secrets_namespace="kyma-system", load_cert=load_cert)
    steps: list[Callable[[], None]] = [
        lambda: files.write(
            "a.yaml",
            application([service("Orders", api(credentials=CREDS), id="1")]),
            application([service("Items", api(credentials=oauth), api("x!"), id="2")], name="s"),
        ),
        lambda: files.write("s.yaml", secret("creds", username="u"), secret("o", clientId="i")),
        lambda: files.write("t.yaml", secret("creds", namespace="other", username="v")),
        lambda: files.write("t.yaml", secret("creds", namespace=None, username="v")),
        lambda: files.write("s.yaml", secret("o", clientId="j", headers="{bad")),
        lambda: files.write(
            "b.yaml",
            application([service("Orders", api(params="p"), id="1")], name="erp2"),
            application([service("orders", api(), id="x"), service("Orders!", api())], name="erp"),
        ),
        lambda: files.write("p.yaml", secret("p", headers='{"X-A": ["1"], "Host": ["h"]}')),
        lambda: files.delete("a.yaml"),
        lambda: files.write("a.yaml", application([service("S", api(), id="1")], name="erp2")),
        lambda: files.delete("t.yaml"),
        lambda: files.delete("b.yaml"),
        lambda: files.write("c.yaml", application([service("A", api(), id="a-b")], name="shop")),
        lambda: files.write("d.yaml", application([service("B", api(), id="b")], name="shop-a")),
        lambda: files.write("c.yaml", application([service("A", api(), id="a-c")], name="shop")),
        lambda: files.delete("d.yaml"),
        lambda: files.write(
            "e.yaml",
            application([service("C", api(credentials=cert), api("m", credentials=mtls))]),
            secret("c", crt="bad", key="good"),
        ),
        lambda: files.write(
            "e.yaml", *files.raw["e.yaml"][:1], secret("c", crt="good", key="good")
        ),
    ]
    for step in steps:
        step()
        incremental(builder, files)
