from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from appgateway.errors import BadRequest, ConfigError, GatewayError, NotFound
from appgateway.model import API, APIRef, NoAuth, RequestParameters
from appgateway.routing import (
    IDENTIFIER_MESSAGE,
    Destination,
    Lookup,
    Router,
    host_label_of,
    host_lookup,
    path_address,
    split_absolute_form,
)
from appgateway.urls import parse_target, wire_path


def make_api(app: str, service: str, entry: str, target_url: str = "https://t.example/api") -> API:
    ref = APIRef(
        app=app,
        service=service,
        entry=entry,
        service_name=service,
        service_id="id-" + service,
        display_name=service,
        entry_name=entry,
    )
    return API(
        ref=ref,
        target_url=target_url,
        target=parse_target(target_url),
        credentials=NoAuth(),
        csrf_url=None,
        params=RequestParameters(),
        skip_verify=False,
        encode_url=True,
    )


ORDERS = make_api("erp", "orders-api-v2", "sales-orders")
CUSTOMERS = make_api("erp", "customer-master-data", "customers")
HOSTED = make_api("erp", "customer-master-data", "customers", "https://crm.example.com/api")
AMBIGUOUS = BadRequest("failed to get service with name 'erp-dup': multiple services found: x")
BROKEN = ConfigError("failed to read API for broken service, secret 'x' not found")


@dataclass
class FakeLookup:
    """Dictionaries standing in for the snapshot indexes; records every lookup it answers."""

    labels: dict[str, API | GatewayError] = field(default_factory=dict)
    paths: dict[tuple[str, str, str | None], API | GatewayError] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def by_host_label(self, label: str) -> API | GatewayError | None:
        self.calls.append(("host", label))
        return self.labels.get(label)

    def by_path(self, app: str, service: str, entry: str | None) -> API | GatewayError:
        self.calls.append(("path", app, service, entry or ""))
        found = self.paths.get((app, service, entry))
        if found is not None:
            return found
        if entry is None:
            return NotFound(f"service with name {service} not found")
        return NotFound(f"service with name {service} and entry name {entry} not found")


def lookup() -> FakeLookup:
    return FakeLookup(
        labels={"erp-77aa01": HOSTED, "erp-dup": AMBIGUOUS, "erp-broken": BROKEN},
        paths={
            ("erp", "orders-api-v2", None): ORDERS,
            ("erp", "customer-master-data", None): CUSTOMERS,
            ("erp", "orders-api-v2", "sales-orders"): ORDERS,
            ("erp", "customer-master-data", "customers"): CUSTOMERS,
            ("erp", "dup", None): BadRequest("multiple services found"),
            ("erp", "broken", None): BROKEN,
        },
    )


def route_proxy(found: Lookup, host: str | None, target: str) -> Destination:
    """The proxy listener's routing, by a router that has seen nothing yet."""
    return Router(found, lambda api: api).route(target, host, False)[1]


def route_compass(found: Lookup, target: str) -> Destination:
    return Router(found, lambda api: api).route(target, None, True)[1]


def test_fake_lookup_satisfies_protocol() -> None:
    checked: Lookup = lookup()
    assert checked.by_host_label("nothing") is None


# behaviour.md §2.2 table, proxy listener.
@pytest.mark.parametrize("path", ["/", "/erp", "/erp/", "/erp//x", "", "//", "///erp/"])
def test_proxy_path_identifier_errors(path: str) -> None:
    with pytest.raises(BadRequest) as info:
        route_proxy(lookup(), None, path)
    assert info.value.status == 400
    assert info.value.message == "failed to extract API Identifier from path"


@pytest.mark.parametrize(
    ("path", "rest", "base"),
    [
        ("/erp/orders-api-v2", None, "/erp/orders-api-v2"),
        ("/erp/orders-api-v2/", "", "/erp/orders-api-v2"),
        ("/erp/orders-api-v2/a/b/", "a/b/", "/erp/orders-api-v2"),
        ("/erp/orders-api-v2//a", "/a", "/erp/orders-api-v2"),
        # All leading slashes are stripped; the rest keeps escapes, pre-normalised.
        ("//erp/orders-api-v2/x", "x", "/erp/orders-api-v2"),
        ("/erp/orders-api-v2/x|y%2F", "x%7Cy%2F", "/erp/orders-api-v2"),
        ("/erp/orders-api-v2/caf\xc3\xa9", "caf%C3%A9", "/erp/orders-api-v2"),
    ],
)
def test_proxy_path_routing(path: str, rest: str | None, base: str) -> None:
    found = lookup()
    assert route_proxy(found, None, path) == Destination(
        api=ORDERS, rest=rest, mode="path", base=base
    )
    assert found.calls == [("path", "erp", "orders-api-v2", "")]


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("/erp/unknown", NotFound, "service with name unknown not found"),
        ("/other/orders-api-v2", NotFound, "service with name orders-api-v2 not found"),
        ("/erp/Orders-API-v2", NotFound, "service with name Orders-API-v2 not found"),
        # Identifiers are compared as received, not decoded.
        ("/erp/orders%2Dapi-v2", NotFound, "service with name orders%2Dapi-v2 not found"),
        ("/erp/dup/x", BadRequest, "multiple services found"),
        ("/erp/broken", ConfigError, BROKEN.message),
        ("/erp/a%zz/x", BadRequest, "invalid URL escape in request path"),
        ("/erp/orders-api-v2/%", BadRequest, "invalid URL escape in request path"),
    ],
)
def test_proxy_path_errors(path: str, error: type[GatewayError], message: str) -> None:
    with pytest.raises(error) as info:
        route_proxy(lookup(), None, path)
    assert info.value.message == message


@pytest.mark.parametrize(
    "path", ["/", "/erp", "/erp/svc", "/erp/svc/", "/erp//e", "/erp/svc//x", ""]
)
def test_compass_identifier_errors(path: str) -> None:
    with pytest.raises(BadRequest) as info:
        route_compass(lookup(), path)
    assert info.value.message == "failed to extract API Identifier from path"


@pytest.mark.parametrize(
    ("path", "rest"),
    [
        ("/erp/orders-api-v2/sales-orders", None),
        ("/erp/orders-api-v2/sales-orders/", ""),
        ("/erp/orders-api-v2/sales-orders/a/b/", "a/b/"),
        ("/erp/orders-api-v2/sales-orders//a", "/a"),
    ],
)
def test_compass_routing(path: str, rest: str | None) -> None:
    found = lookup()
    route = route_compass(found, path)
    assert route == Destination(
        api=ORDERS, rest=rest, mode="path", base="/erp/orders-api-v2/sales-orders"
    )
    assert found.calls == [("path", "erp", "orders-api-v2", "sales-orders")]


def test_compass_not_found_names_entry() -> None:
    with pytest.raises(NotFound) as info:
        route_compass(lookup(), "/erp/orders-api-v2/nope/x")
    assert info.value.message == "service with name orders-api-v2 and entry name nope not found"


@pytest.mark.parametrize(
    ("host", "label"),
    [
        ("erp-77aa01.kyma-system.svc.cluster.local", "erp-77aa01"),
        ("ERP-77AA01.kyma-system", "erp-77aa01"),
        ("erp-77aa01", "erp-77aa01"),
        ("erp-77aa01:8080", "erp-77aa01"),
        ("erp-77aa01.ns:8080", "erp-77aa01"),
        ("erp-77aa01.", "erp-77aa01"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:8080", "127"),
        (" erp-77aa01 ", "erp-77aa01"),
        ("", None),
        (":8080", None),
        (".example", None),
    ],
)
def test_host_label_of(host: str, label: str | None) -> None:
    assert host_label_of(host) == label


@pytest.mark.parametrize(
    ("path", "rest", "wire"),
    [
        ("/customers/42", "/customers/42", "/api/customers/42"),
        ("/", "/", "/api/"),
        ("", "/", "/api/"),
        ("/orders/7", "/orders/7", "/api/orders/7"),
        ("/x|y/", "/x%7Cy/", "/api/x%7Cy/"),
        # The whole path is the rest, even when it looks like /{app}/{service}.
        ("/erp/orders-api-v2/x", "/erp/orders-api-v2/x", "/api/erp/orders-api-v2/x"),
    ],
)
def test_host_routing(path: str, rest: str, wire: str) -> None:
    found = lookup()
    route = route_proxy(found, "erp-77aa01.kyma-system.svc.cluster.local", path)
    assert route == Destination(api=HOSTED, rest=rest, mode="host", base="")
    assert found.calls == [("host", "erp-77aa01")]
    assert wire_path(route.api.target.path, route.rest, True) == wire
    assert wire_path(route.api.target.path, route.rest, False) == wire


@pytest.mark.parametrize("host", ["erp-dup", "erp-dup.ns.svc:80"])
def test_host_routing_ambiguous(host: str) -> None:
    with pytest.raises(BadRequest) as info:
        route_proxy(lookup(), host, "/erp/orders-api-v2")
    assert info.value is AMBIGUOUS


def test_host_routing_config_error() -> None:
    with pytest.raises(ConfigError):
        route_proxy(lookup(), "erp-broken", "/x")


def test_a_stored_error_raised_again_does_not_grow_its_traceback() -> None:
    def depth() -> int:
        with pytest.raises(ConfigError) as info:
            route_proxy(lookup(), None, "/erp/broken/x")
        assert info.value is BROKEN
        tb, n = info.value.__traceback__, 0
        while tb is not None:
            tb, n = tb.tb_next, n + 1
        return n

    assert depth() == depth() == depth()


def test_host_lookup_is_the_host_step_alone() -> None:
    assert host_lookup(lookup(), "ERP-77AA01.svc:80") is HOSTED
    assert host_lookup(lookup(), "other.example") is None
    assert host_lookup(lookup(), None) is None
    route = route_proxy(lookup(), "erp-77aa01", "/a/b")
    assert route == Destination(api=HOSTED, rest="/a/b", mode="host", base="")


@pytest.mark.parametrize(
    "host", [None, "", "localhost:8080", "127.0.0.1", "other.example", "[::1]:80"]
)
def test_host_without_match_falls_back_to_path(host: str | None) -> None:
    route = route_proxy(lookup(), host, "/erp/customer-master-data/x")
    assert route == Destination(
        api=CUSTOMERS, rest="x", mode="path", base="/erp/customer-master-data"
    )


def test_host_without_match_never_404s_on_its_own() -> None:
    with pytest.raises(BadRequest) as info:
        route_proxy(lookup(), "unknown.example", "/")
    assert info.value.message == "failed to extract API Identifier from path"


def test_host_routing_bad_escape() -> None:
    with pytest.raises(BadRequest) as info:
        route_proxy(lookup(), "erp-77aa01", "/x%2")
    assert info.value.message == "invalid URL escape in request path"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://erp-77aa01.ns/customers/42?x=1", ("erp-77aa01.ns", "/customers/42?x=1")),
        ("http://erp-77aa01:8080", ("erp-77aa01:8080", "/")),
        ("http://h?x=1", ("h", "/?x=1")),
        ("HTTP://u:p@h:81/a#frag", ("h:81", "/a")),
        ("https://[::1]:8443/a", ("[::1]:8443", "/a")),
        ("http:///a", (None, "/a")),
        ("*", (None, "*")),
        ("example.com:443", (None, "example.com:443")),
        ("/a/b", (None, "/a/b")),
    ],
)
def test_split_absolute_form(target: str, expected: tuple[str | None, str]) -> None:
    assert split_absolute_form(target) == expected


def test_absolute_form_routes_by_authority() -> None:
    host, origin = split_absolute_form("http://erp-77aa01.kyma-system/customers/42?top=1")
    route = route_proxy(lookup(), host, origin.partition("?")[0])
    assert route == Destination(api=HOSTED, rest="/customers/42", mode="host", base="")


@pytest.mark.parametrize(
    ("path", "n", "address", "rest"),
    [
        ("/app/svc", 2, "app/svc", None),
        ("/app/svc/", 2, "app/svc", ""),
        ("/app/svc/a/b?", 2, "app/svc", "a/b?"),
        ("//app/svc/x", 2, "app/svc", "x"),  # leading slashes are not segments
        ("/app/svc%2Fx/y", 2, "app/svc%2Fx", "y"),  # escapes stay as received
        ("/app/svc/entry", 3, "app/svc/entry", None),
        ("/app/svc/entry/x/y", 3, "app/svc/entry", "x/y"),
    ],
)
def test_path_address(path: str, n: int, address: str, rest: str | None) -> None:
    assert path_address(path, n) == (address, rest)


@pytest.mark.parametrize(
    ("path", "n"),
    [("/", 2), ("/app", 2), ("/app/", 2), ("/app//x", 2), ("/app/svc", 3), ("/a/b//c", 3)],
)
def test_path_address_needs_every_identifier(path: str, n: int) -> None:
    with pytest.raises(BadRequest) as info:
        path_address(path, n)
    assert info.value.message == IDENTIFIER_MESSAGE


# -- the router: the whole order, and what it remembers per snapshot ------------------------


@pytest.mark.parametrize(
    ("target", "host", "compass", "api", "path", "query"),
    [
        ("/erp/orders-api-v2/x?a=1", None, False, ORDERS, "/erp/orders-api-v2/x", "a=1"),
        ("/erp/orders-api-v2/x?a=1", "erp-77aa01", False, HOSTED, "/erp/orders-api-v2/x", "a=1"),
        # The absolute form's authority routes, whatever the Host field says.
        ("http://erp-77aa01/p?q", "other", False, HOSTED, "/p", "q"),
        (
            "http://other/erp/orders-api-v2?q",
            "erp-77aa01",
            False,
            ORDERS,
            "/erp/orders-api-v2",
            "q",
        ),
        (
            "/erp/orders-api-v2/sales-orders/x?z",
            "erp-77aa01",
            True,
            ORDERS,
            "/erp/orders-api-v2/sales-orders/x",
            "z",
        ),
    ],
)
def test_router_order(
    target: str, host: str | None, compass: bool, api: API, path: str, query: str
) -> None:
    prepared, dest, got_path, got_query = Router(lookup(), lambda a: a.ref).route(
        target, host, compass
    )
    assert (dest.api, got_path, got_query, prepared) == (api, path, query, api.ref)


def test_router_prepares_each_api_once_and_remembers_what_it_found() -> None:
    found = lookup()
    prepared: list[API] = []

    def prepare(api: API) -> str:
        prepared.append(api)
        return api.ref.entry

    router = Router(found, prepare)
    for _ in range(3):
        assert router.route("/erp/orders-api-v2/a", None, False)[0] == "sales-orders"
        assert router.route("/erp/orders-api-v2/b", "nohost", False)[0] == "sales-orders"
        assert router.route("/x", "erp-77aa01", False)[0] == "customers"
    assert prepared == [ORDERS, HOSTED]
    # One snapshot lookup per Host value and per identifier part, whatever the repeats.
    assert found.calls == [
        ("path", "erp", "orders-api-v2", ""),
        ("host", "nohost"),
        ("host", "erp-77aa01"),
    ]


def test_router_keeps_only_found_apis_per_address() -> None:
    found = lookup()
    router = Router(found, lambda api: api)
    for _ in range(2):
        with pytest.raises(NotFound):
            router.route("/erp/missing/x", None, False)
    assert found.calls.count(("path", "erp", "missing", "")) == 2
