from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from appgateway.proxy import ProxyConfig
from appgateway.registry import RegistryError
from appgateway.registry.kubeclient import (
    ApiError,
    Backoff,
    Json,
    KubeClient,
    load_auth,
    proxy_arguments,
    ssl_context,
    status_error,
)
from appgateway.registry.kubeconfig import ClusterAuth, Material
from tests.conftest import Connection, RawServer, Seen, ServerFactory, response


@pytest.mark.parametrize(
    ("rand", "expected"),
    [
        (1.0, [0.5, 1, 2, 4, 8, 16, 30, 30, 30]),
        (0.0, [0.25, 0.5, 1, 2, 4, 8, 15, 15, 15]),
    ],
)
def test_backoff_doubles_up_to_the_cap(rand: float, expected: list[float]) -> None:
    backoff = Backoff(rand=lambda: rand)
    assert [backoff.next() for _ in expected] == expected
    backoff.reset()
    assert backoff.next() == expected[0]


def test_backoff_is_jittered() -> None:
    delays = {Backoff().next() for _ in range(50)}
    assert len(delays) > 1 and all(0.25 <= d <= 0.5 for d in delays)


_PROXY_AUTH = {"Proxy-Authorization": "Basic dTpw"}  # u:p


@pytest.mark.parametrize(
    ("server", "env", "expected"),
    [
        ("https://10.96.0.1", {}, {}),
        (
            "https://10.96.0.1",
            {"https_proxy": "http://u:p@egress:3128"},
            {"proxy": "http://egress:3128", "proxy_headers": _PROXY_AUTH},
        ),
        ("https://10.96.0.1:6443", {"https_proxy": "egress:3128"}, {"proxy": "http://egress:3128"}),
        ("https://10.96.0.1", {"http_proxy": "http://egress:3128"}, {}),  # only HTTPS_PROXY
        (  # plain http: the credentials go on the absolute-form request itself
            "http://api.local:8080",
            {"http_proxy": "http://u:p@egress:3128", "https_proxy": "http://other:1"},
            {"proxy": "http://egress:3128", "headers": _PROXY_AUTH},
        ),
        # NO_PROXY, with the gateway's own rules: addresses, networks, suffixes, ports
        ("https://10.96.0.1", {"https_proxy": "egress:3128", "no_proxy": "10.96.0.1"}, {}),
        ("https://10.96.0.1", {"https_proxy": "egress:3128", "no_proxy": "10.96.0.0/12"}, {}),
        ("https://kubernetes.default.svc", {"https_proxy": "e:1", "no_proxy": ".svc"}, {}),
        ("https://api.example:6443", {"https_proxy": "e:1", "no_proxy": "api.example:6443"}, {}),
        (
            "https://api.example:6443",
            {"https_proxy": "e:1", "no_proxy": "api.example:443"},
            {"proxy": "http://e:1"},
        ),
        ("https://10.96.0.1", {"https_proxy": "e:1", "no_proxy": "*"}, {}),
        (
            "https://[fd00::1]",
            {"https_proxy": "http://[fd00::2]:3128"},
            {"proxy": "http://[fd00::2]:3128"},
        ),
    ],
)
def test_proxy_arguments(server: str, env: dict[str, str], expected: dict[str, Any]) -> None:
    assert proxy_arguments(server, ProxyConfig.from_environment(env)) == expected


def test_no_proxy_configuration_means_direct() -> None:
    assert proxy_arguments("https://10.96.0.1", None) == {}


def _status(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "code": code, "reason": reason, "message": message}
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, _status(403, "Forbidden", "no"), (403, "Forbidden", "no", "403 Forbidden: no")),
        (
            200,
            _status(410, "Expired", "too old"),
            (410, "Expired", "too old", "410 Expired: too old"),
        ),
        (500, _status(0, "", ""), (500, "", "", "500 ")),
        (
            502,
            b"<html>bad gateway</html>",
            (502, "", "<html>bad gateway</html>", "502 : <html>bad gateway</html>"),
        ),
        (404, b'{"kind": "Other"}', (404, "", '{"kind": "Other"}', '404 : {"kind": "Other"}')),
    ],
)
def test_status_error(status: int, body: bytes, expected: tuple[int, str, str, str]) -> None:
    error = status_error(status, body)
    assert (error.status, error.reason, error.message, str(error)) == expected


def test_status_error_from_a_decoded_event_object() -> None:
    error = status_error(500, {"kind": "Status", "code": 410, "reason": "Expired"})
    assert (error.status, error.reason) == (410, "Expired")


def test_load_auth_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"kubeconfig .*missing: cannot read: No such file"):
        load_auth(tmp_path / "missing", ("", ""))
    bad = tmp_path / "bad"
    bad.write_text("current-context: x\n")
    with pytest.raises(RegistryError, match="contexts: no entry named 'x'"):
        load_auth(bad, ("", ""))
    with pytest.raises(RegistryError, match="in-cluster config: not running in a cluster"):
        load_auth(None, ("", ""))
    assert load_auth(None, ("10.0.0.1", "443")).server == "https://10.0.0.1:443"


def _auth(server: str = "https://127.0.0.1:1", **kw: Any) -> ClusterAuth:
    fields: dict[str, object] = {
        "server": server,
        "ca": None,
        "insecure": False,
        "tls_server_name": None,
        "token": None,
        "client_cert": None,
        "client_key": None,
        "origin": "test",
    }
    fields.update(kw)
    return ClusterAuth(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ca": Material(path=Path("/nonexistent/ca.crt"))}, "cannot read CA /nonexistent/ca.crt"),
        (
            {
                "ca": Material(
                    data=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                )
            },
            "invalid CA certificate",
        ),
        (
            {"client_cert": Material(data=b"x"), "client_key": Material(data=b"y")},
            "test: client certificate: no CERTIFICATE block in crt",
        ),
    ],
)
def test_ssl_context_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        ssl_context(_auth(**kw))


async def test_open_fails_on_an_unreadable_token_file(tmp_path: Path) -> None:
    client = KubeClient(_auth(token=Material(path=tmp_path / "token")))
    with pytest.raises(RegistryError, match="cannot read token"):
        await client.open()
    await client.close()


async def test_token_file_is_reread_every_minute(servers: ServerFactory, tmp_path: Path) -> None:
    async def ok(seen: Seen) -> bytes:
        return response(200, b'{"items": []}', [("Content-Type", "application/json")])

    server = await servers(ok)
    token = tmp_path / "token"
    token.write_text("one\n")
    now = [0.0]
    client = KubeClient(_auth(server.base, token=Material(path=token)), clock=lambda: now[0])
    await client.open()
    try:
        await client.get("/api/v1/secrets", {"limit": "500"})
        token.write_text("two")
        now[0] = 59.0
        await client.get("/api/v1/secrets", {})
        now[0] = 60.0
        await client.get("/api/v1/secrets", {})
        token.write_text("three")
        client.token_expired()  # after a 401: at once
        await client.get("/api/v1/secrets", {})
        token.unlink()  # a failed re-read keeps the last token
        now[0] = 200.0
        await client.get("/api/v1/secrets", {})
    finally:
        await client.close()
    assert [s.value("Authorization") for s in server.requests] == [
        "Bearer one",
        "Bearer one",
        "Bearer two",
        "Bearer three",
        "Bearer three",
    ]
    first = server.requests[0]
    assert first.target == "/api/v1/secrets?limit=500"
    assert first.value("Accept") == "application/json"
    assert (first.value("User-Agent") or "").startswith("appgateway/")


async def test_get_errors(servers: ServerFactory) -> None:
    bodies = iter(
        [
            response(403, _status(403, "Forbidden", "denied")),
            response(200, b"not json"),
            response(200, b"[1]"),
        ]
    )

    async def answer(seen: Seen) -> bytes:
        return next(bodies)

    server = await servers(answer)
    client = KubeClient(_auth(server.base))
    await client.open()
    try:
        with pytest.raises(ApiError, match="403 Forbidden: denied"):
            await client.get("/x", {})
        with pytest.raises(ApiError, match="response is not JSON"):
            await client.get("/x", {})
        with pytest.raises(ApiError, match="not a JSON object"):
            await client.get("/x", {})
    finally:
        await client.close()


async def test_create_posts_json_and_accepts_200_and_201(servers: ServerFactory) -> None:
    bodies = iter(
        [
            response(201, b'{"kind": "TokenReview", "status": {}}'),
            response(200, b'{"kind": "SubjectAccessReview"}'),
            response(403, _status(403, "Forbidden", "cannot create")),
            response(201, b"[]"),
        ]
    )

    async def answer(seen: Seen) -> bytes:
        return next(bodies)

    server = await servers(answer)
    client = KubeClient(_auth(server.base, token=Material(data=b"gw-token")))
    await client.open()
    try:
        assert await client.create("/apis/a/v1/r", {"spec": {"x": 1}}) == {
            "kind": "TokenReview",
            "status": {},
        }
        assert await client.create("/apis/b", {}) == {"kind": "SubjectAccessReview"}
        with pytest.raises(ApiError, match="403 Forbidden: cannot create"):
            await client.create("/apis/b", {})
        with pytest.raises(ApiError, match="not a JSON object"):
            await client.create("/apis/b", {})
    finally:
        await client.close()
    first = server.requests[0]
    assert (first.method, first.target) == ("POST", "/apis/a/v1/r")
    assert json.loads(first.body) == {"spec": {"x": 1}}
    assert first.value("Content-Type") == "application/json"
    assert first.value("Authorization") == "Bearer gw-token"


async def test_create_is_bounded_by_its_timeout(servers: ServerFactory) -> None:
    async def never(seen: Seen) -> bytes:
        await asyncio.sleep(30)
        return response(201, b"{}")

    server = await servers(never)
    client = KubeClient(_auth(server.base))
    await client.open()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.create("/apis/x", {}, deadline_s=0.2)
        assert time.monotonic() - started < 2
    finally:
        await client.close()


def _events(*events: Json) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


async def _watch(server: RawServer) -> tuple[list[Json], BaseException | None]:
    client = KubeClient(_auth(server.base))
    await client.open()
    seen: list[Json] = []
    error: BaseException | None = None
    try:
        await client.watch("/w", {"watch": "1"}, seen.append, read_timeout=5)
    except ApiError as exc:
        error = exc
    finally:
        await client.close()
    return seen, error


async def test_watch_splits_events_across_chunks(servers: ServerFactory) -> None:
    big = {"type": "ADDED", "object": {"data": "x" * 300_000}}
    payload = _events({"type": "ADDED", "object": {"n": 1}}, big)
    payload += b'\n{"type": "BOOKMARK", "object": {"n": 3}}'  # blank line; last without \n

    async def handler(conn: Connection) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(payload), 7777):
            piece = payload[i : i + 7777]
            await conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        await conn.send(b"0\r\n\r\n")

    seen, error = await _watch(await servers(handler=handler))
    assert error is None
    assert [e["type"] for e in seen] == ["ADDED", "ADDED", "BOOKMARK"]
    assert seen[1] == big


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (response(410, _status(410, "Expired", "too old")), "410 Expired: too old"),
        (response(200, b"garbage\n"), "watch event is not JSON"),
        (response(200, b'{"type": "ADDED"}\n'), "watch event without an object"),
    ],
)
async def test_watch_errors(servers: ServerFactory, answer: bytes, message: str) -> None:
    async def respond(seen: Seen) -> bytes:
        return answer

    seen, error = await _watch(await servers(respond))
    assert seen == []
    assert isinstance(error, ApiError) and message in str(error)
