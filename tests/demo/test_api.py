from __future__ import annotations

import base64
import json
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDict
from yarl import URL

from appgateway.demo import (
    CLIENT_ID,
    CLIENT_SECRET,
    PARAM_HEADER,
    PARAM_QUERY,
    PARAM_VALUE,
    PASSWORD,
    USERNAME,
)
from appgateway.demo.api import (
    CSRF_COOKIE,
    default_registry_text,
    demo_commands,
    demo_registry,
    start_demo_api,
)
from appgateway.names import host_label, normalize


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GOOD = basic(USERNAME, PASSWORD)
CLIENT = basic(CLIENT_ID, CLIENT_SECRET)
TOKEN_FORM = {
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "grant_type": "client_credentials",
}


@dataclass
class Demo:
    port: int
    session: aiohttp.ClientSession

    def url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}", encoded=True)

    async def call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.request(method, self.url(path), **kwargs) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def token(self) -> str:
        status, _, body = await self.call(
            "POST", "/oauth/token", data=TOKEN_FORM, headers={"Authorization": CLIENT}
        )
        assert status == 200
        return str(json.loads(body)["access_token"])


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    runner, port = await start_demo_api("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            yield Demo(port, session)
    finally:
        await runner.cleanup()


def doc(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


# --- open and echo -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/open", "/echo"])
async def test_echo_reports_raw_request(demo: Demo, prefix: str) -> None:
    status, _, body = await demo.call(
        "PATCH",
        prefix + "/a%2Fb/caf%C3%A9('x')?q=%20x&$top=2",
        headers=[("X-Dup", "1"), ("X-Other", "o"), ("X-Dup", "2")],
        data=b"12345",
    )
    assert status == 200
    got = doc(body)
    assert got["endpoint"] == prefix[1:]
    assert got["method"] == "PATCH"
    assert got["path"] == prefix + "/a%2Fb/caf%C3%A9('x')"
    assert got["query"] == "q=%20x&$top=2"
    assert got["body_length"] == 5
    pairs = [tuple(p) for p in got["headers"] if p[0].startswith("X-")]
    assert pairs == [("X-Dup", "1"), ("X-Other", "o"), ("X-Dup", "2")]


@pytest.mark.parametrize("path", ["/open", "/echo", "/open/", "/echo/x/y/"])
async def test_echo_without_sub_path(demo: Demo, path: str) -> None:
    status, _, body = await demo.call("GET", path)
    assert status == 200
    assert doc(body)["path"] == path
    assert doc(body)["query"] == ""


async def test_unknown_path_is_404(demo: Demo) -> None:
    status, _, _ = await demo.call("GET", "/opener")
    assert status == 404


# --- Basic ----------------------------------------------------------------------------------


async def test_basic_accepts_demo_user(demo: Demo) -> None:
    status, _, body = await demo.call("GET", "/basic/hello", headers={"Authorization": GOOD})
    assert status == 200
    assert doc(body)["endpoint"] == "basic"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic(USERNAME, "wrong"),
        basic("other", PASSWORD),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode(),
    ],
)
async def test_basic_rejects(demo: Demo, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, resp_headers, body = await demo.call("GET", "/basic/hello", headers=headers)
    assert status == 401
    assert resp_headers["WWW-Authenticate"].startswith("Basic")
    assert "error" in doc(body)


# --- OAuth token and Bearer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        ({"Authorization": CLIENT}, TOKEN_FORM),
        ({}, TOKEN_FORM),
        ({"Authorization": CLIENT}, {"grant_type": "client_credentials"}),
    ],
)
async def test_token_endpoint_issues(
    demo: Demo, headers: dict[str, str], form: dict[str, str]
) -> None:
    status, _, body = await demo.call("POST", "/oauth/token", data=form, headers=headers)
    assert status == 200
    got = doc(body)
    assert got["token_type"] == "bearer"
    assert got["expires_in"] == 3600
    assert isinstance(got["access_token"], str) and got["access_token"]


@pytest.mark.parametrize(
    ("headers", "form", "expected"),
    [
        ({}, {"grant_type": "client_credentials"}, 401),
        ({"Authorization": basic(CLIENT_ID, "bad")}, TOKEN_FORM, 401),
        ({"Authorization": CLIENT}, {**TOKEN_FORM, "client_secret": "bad"}, 401),
        ({}, {**TOKEN_FORM, "client_id": "someone"}, 401),
        ({"Authorization": CLIENT}, {}, 400),
        ({"Authorization": CLIENT}, {"grant_type": "password"}, 400),
    ],
)
async def test_token_endpoint_rejects(
    demo: Demo, headers: dict[str, str], form: dict[str, str], expected: int
) -> None:
    status, _, body = await demo.call("POST", "/oauth/token", data=form, headers=headers)
    assert status == expected
    assert "access_token" not in doc(body)


async def test_token_endpoint_needs_post(demo: Demo) -> None:
    status, _, _ = await demo.call("GET", "/oauth/token", headers={"Authorization": CLIENT})
    assert status == 405


async def test_bearer_accepts_issued_token(demo: Demo) -> None:
    token = await demo.token()
    for scheme in ("Bearer", "bearer"):
        status, _, body = await demo.call(
            "GET", "/bearer/hello", headers={"Authorization": f"{scheme} {token}"}
        )
        assert status == 200
        assert doc(body)["endpoint"] == "bearer"


@pytest.mark.parametrize("authorization", [None, "Bearer made-up", "Bearer ", GOOD])
async def test_bearer_rejects(demo: Demo, authorization: str | None) -> None:
    await demo.token()  # a token exists, but is not the one presented
    headers = {} if authorization is None else {"Authorization": authorization}
    status, resp_headers, body = await demo.call("GET", "/bearer/hello", headers=headers)
    assert status == 401
    assert resp_headers["WWW-Authenticate"] == "Bearer"
    assert "error" in doc(body)


async def test_tokens_belong_to_one_server(demo: Demo) -> None:
    token = await demo.token()
    runner, port = await start_demo_api("127.0.0.1", 0)
    try:
        other = Demo(port, demo.session)
        status, _, _ = await other.call(
            "GET", "/bearer", headers={"Authorization": f"Bearer {token}"}
        )
    finally:
        await runner.cleanup()
    assert status == 401


# --- CSRF -----------------------------------------------------------------------------------


async def fetch_csrf(demo: Demo) -> tuple[str, str]:
    status, headers, _ = await demo.call(
        "GET", "/csrf", headers={"Authorization": GOOD, "X-Csrf-Token": "Fetch"}
    )
    assert status == 200
    pair = headers["Set-Cookie"].split(";", 1)[0]
    assert pair.startswith(CSRF_COOKIE + "=")
    token = headers["X-Csrf-Token"]
    assert token
    return token, pair


async def test_csrf_post_with_token_and_cookie(demo: Demo) -> None:
    token, cookie = await fetch_csrf(demo)
    status, _, body = await demo.call(
        "POST",
        "/csrf/orders",
        headers={"Authorization": GOOD, "X-Csrf-Token": token, "Cookie": f"a=1; {cookie}"},
        json={"item": "tea"},
    )
    assert status == 200
    assert doc(body)["endpoint"] == "csrf"


async def test_csrf_get_without_fetch_is_plain(demo: Demo) -> None:
    status, headers, body = await demo.call("GET", "/csrf/orders", headers={"Authorization": GOOD})
    assert status == 200
    assert "X-Csrf-Token" not in headers
    assert doc(body)["path"] == "/csrf/orders"


async def test_csrf_needs_basic(demo: Demo) -> None:
    status, _, _ = await demo.call("GET", "/csrf", headers={"X-Csrf-Token": "fetch"})
    assert status == 401
    token, cookie = await fetch_csrf(demo)
    status, _, _ = await demo.call(
        "POST", "/csrf/orders", headers={"X-Csrf-Token": token, "Cookie": cookie}
    )
    assert status == 401


@pytest.mark.parametrize("case", ["no token", "no cookie", "wrong token", "other session"])
async def test_csrf_post_rejects(demo: Demo, case: str) -> None:
    token, cookie = await fetch_csrf(demo)
    other_token, other_cookie = await fetch_csrf(demo)
    headers = {"Authorization": GOOD, "X-Csrf-Token": token, "Cookie": cookie}
    if case == "no token":
        del headers["X-Csrf-Token"]
    elif case == "no cookie":
        del headers["Cookie"]
    elif case == "wrong token":
        headers["X-Csrf-Token"] = "fetch"
    else:
        headers["Cookie"] = other_cookie
    assert other_token != token
    status, resp_headers, body = await demo.call("POST", "/csrf/orders", headers=headers)
    assert status == 403
    assert resp_headers["X-Csrf-Token"] == "Required"
    assert "error" in doc(body)


# --- registry template ----------------------------------------------------------------------


def load(text: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    apps = [d for d in docs if d["kind"] == "Application"]
    assert len(apps) == 1
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert len(docs) == 1 + len(secrets)
    return apps[0], secrets


def test_registry_documents() -> None:
    app, secrets = load(demo_registry(9123))
    assert app["apiVersion"] == "applicationconnector.kyma-project.io/v1alpha1"
    assert app["metadata"]["name"] == "demo"
    assert set(secrets) == {"demo-basic", "demo-oauth", "demo-params"}
    for secret in secrets.values():
        assert secret["apiVersion"] == "v1"
        assert secret["metadata"]["namespace"] == "kyma-system"
    entries = [e for s in app["spec"]["services"] for e in s["entries"]]
    assert all(e["targetUrl"].startswith("http://127.0.0.1:9123/") for e in entries)
    kinds = sorted(e.get("credentials", {}).get("type", "") for e in entries)
    assert kinds == ["", "", "", "Basic", "Basic", "OAuth"]
    params = json.loads(secrets["demo-params"]["stringData"]["headers"])
    assert params == {PARAM_HEADER: [PARAM_VALUE]}


def test_registry_namespace_and_default() -> None:
    _, secrets = load(demo_registry(8090, namespace="apps"))
    assert {s["metadata"]["namespace"] for s in secrets.values()} == {"apps"}
    assert default_registry_text() == demo_registry(8090)


def service_by_segment(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {normalize(s["displayName"]): s for s in app["spec"]["services"]}


async def test_registry_credentials_work_against_the_api(demo: Demo) -> None:
    """Do what the gateway will do for each service, using only the registry text."""
    app, secrets = load(demo_registry(demo.port))
    seen: set[str] = set()
    for service in app["spec"]["services"]:
        [entry] = service["entries"]
        target = URL(entry["targetUrl"], encoded=True) / "hello"
        headers: dict[str, str] = {}
        creds = entry.get("credentials", {})
        data = secrets[creds["secretName"]]["stringData"] if creds else {}
        kind = creds.get("type", "none")
        if kind == "Basic":
            headers["Authorization"] = basic(data["username"], data["password"])
        elif kind == "OAuth":
            form = {"client_id": data["clientId"], "client_secret": data["clientSecret"]}
            async with demo.session.post(
                creds["authenticationUrl"],
                data={**form, "grant_type": "client_credentials"},
                headers={"Authorization": basic(data["clientId"], data["clientSecret"])},
            ) as resp:
                assert resp.status == 200
                headers["Authorization"] = "Bearer " + (await resp.json())["access_token"]
        if "csrfInfo" in creds:
            kind += "+csrf"
            async with demo.session.get(
                creds["csrfInfo"]["tokenEndpointURL"],
                headers={**headers, "X-Csrf-Token": "fetch"},
            ) as resp:
                assert resp.status == 200
                headers["X-Csrf-Token"] = resp.headers["X-Csrf-Token"]
                headers["Cookie"] = resp.headers["Set-Cookie"].split(";")[0]
        if "requestParametersSecretName" in entry:
            kind += "+params"
            params = secrets[entry["requestParametersSecretName"]]["stringData"]
            for name, values in json.loads(params["headers"]).items():
                headers[name] = values[0]
            query = json.loads(params["queryParameters"])
            target = target.with_query({k: v[0] for k, v in query.items()})
        method = "POST" if "csrf" in kind else "GET"
        protected = creds.get("type") in ("Basic", "OAuth")
        async with demo.session.request(method, target) as resp:
            assert resp.status == (401 if protected else 200), (kind, "without credentials")
        async with demo.session.request(method, target, headers=headers) as resp:
            assert resp.status == 200, kind
            echoed = await resp.json()
        if "params" in kind:
            assert [PARAM_HEADER, PARAM_VALUE] in echoed["headers"]
            assert echoed["query"] == f"{PARAM_QUERY}={PARAM_VALUE}"
        seen.add(kind)
    assert seen == {"none", "Basic", "OAuth", "Basic+csrf", "none+params"}


# --- commands -------------------------------------------------------------------------------

ALL = {"none", "basic", "oauth", "csrf", "params", "host"}


def urls(command: str) -> list[str]:
    return [w for w in shlex.split(command) if w.startswith("http://")]


@pytest.mark.parametrize(
    ("supported", "count"),
    [(set(), 1), ({"none", "basic", "params", "host"}, 5), (ALL, 7), ({"csrf", "bogus"}, 2)],
)
def test_commands_follow_supported(supported: set[str], count: int) -> None:
    commands = demo_commands(18080, 18081, 18090, supported)
    assert len(commands) == count
    assert all(shlex.split(c)[0] == "curl" for c in commands)
    assert commands[-1] == "curl 'http://127.0.0.1:18081/metrics'"
    assert all(len(urls(c)) == 1 for c in commands)
    assert not any("18090" in c for c in commands)


def test_commands_match_registry_routes() -> None:
    app, _ = load(demo_registry(8090))
    services = service_by_segment(app)
    labels = {host_label("demo", s["id"]) for s in app["spec"]["services"]}
    commands = demo_commands(8080, 8081, 8090, ALL)
    for command in commands[:-1]:
        words = shlex.split(command)
        url = URL(urls(command)[0])
        assert (url.host, url.port) == ("127.0.0.1", 8080)
        if "-H" in words and words[words.index("-H") + 1].startswith("Host: "):
            assert words[words.index("-H") + 1][len("Host: ") :] in labels
            continue
        app_segment, service_segment, *_ = url.path.lstrip("/").split("/")
        assert app_segment == "demo"
        assert service_segment in services, command
    text = "\n".join(commands)
    for segment in ("open-api", "basic-api", "oauth-api", "csrf-api", "params-api"):
        assert f"/demo/{segment}/" in text
    assert "-H 'Host: demo-echo'" in text
