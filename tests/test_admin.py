from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from appgateway.admin import make_admin_app, start_admin
from appgateway.logs import LogControl, setup_logging
from appgateway.metrics import Metrics

JSON = "application/json;charset=UTF-8"
NOT_FOUND = b'{"code":404,"error":"Requested resource could not be found."}\n'
NOT_ALLOWED = b'{"code":405,"error":"Method not allowed."}\n'


@dataclass
class Admin:
    base: str
    session: aiohttp.ClientSession
    control: LogControl
    metrics: Metrics
    ready: list[bool] = field(default_factory=lambda: [False])


@pytest.fixture
def control() -> Iterator[LogControl]:
    root = logging.getLogger()
    saved = root.level
    ctl = setup_logging("info", io.StringIO())
    yield ctl
    ctl.close()
    root.setLevel(saved)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner, port = await start_admin(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def admin(control: LogControl) -> AsyncIterator[Admin]:
    metrics = Metrics()
    flag = [False]
    app = make_admin_app(ready=lambda: flag[0], log_control=control, metrics_text=metrics.render)
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(base, session, control, metrics, flag)
    finally:
        await runner.cleanup()


async def call(
    admin: Admin, method: str, path: str, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    url = URL(admin.base + path, encoded=True)
    async with admin.session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, dict(resp.headers), await resp.read()


async def test_bound_port_is_reported(admin: Admin) -> None:
    assert not admin.base.endswith(":0")
    status, _, _ = await call(admin, "GET", "/v1/health")
    assert status == 200


async def test_health(admin: Admin) -> None:
    status, headers, body = await call(admin, "GET", "/v1/health")
    assert (status, body) == (200, b"")
    assert "Server" not in headers


async def test_health_follows_the_unhealthy_callback(control: LogControl) -> None:
    reason: list[str | None] = [None]
    app = make_admin_app(
        ready=lambda: True,
        log_control=control,
        metrics_text=lambda: b"",
        unhealthy=lambda: reason[0],
    )
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(base, session, control, Metrics())
            assert (await call(admin, "GET", "/v1/health"))[0] == 200
            reason[0] = "worker crash loop"
            status, headers, body = await call(admin, "GET", "/v1/health")
            assert (status, body) == (503, b'{"code":503,"error":"worker crash loop"}\n')
            assert headers["Content-Type"] == JSON
    finally:
        await runner.cleanup()


async def test_ready_follows_callback(admin: Admin) -> None:
    status, headers, body = await call(admin, "GET", "/v1/ready")
    assert (status, body) == (503, b'{"code":503,"error":"not ready"}\n')
    assert headers["Content-Type"] == JSON
    admin.ready[0] = True
    status, _, body = await call(admin, "GET", "/v1/ready")
    assert (status, body) == (200, b"")


async def test_get_loglevel(admin: Admin) -> None:
    status, _, body = await call(admin, "GET", "/v1/loglevel")
    assert (status, body) == (200, b'{"level":"info"}\n')


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"json": {"level": "debug"}}, "debug"),
        ({"json": {"level": "WARN"}}, "warn"),
        ({"json": {"level": "panic"}}, "panic"),
        ({"data": {"level": "error"}}, "error"),
        ({"data": {"level": "Warning"}}, "warn"),
        ({"data": b"level=debug"}, None),  # no form content type: read as JSON
    ],
)
async def test_put_loglevel(admin: Admin, kwargs: dict[str, object], expected: str | None) -> None:
    status, headers, body = await call(admin, "PUT", "/v1/loglevel", **kwargs)
    if expected is None:
        assert status == 400
        assert admin.control.level == "info"
        return
    assert (status, body) == (200, b'{"level":"%s"}\n' % expected.encode())
    assert headers["Content-Type"] == JSON
    assert admin.control.level == expected
    status, _, body = await call(admin, "GET", "/v1/loglevel")
    assert body == b'{"level":"%s"}\n' % expected.encode()


async def test_put_form_level_applies_at_once(admin: Admin) -> None:
    await call(admin, "PUT", "/v1/loglevel", data={"level": "error"})
    assert logging.getLogger().getEffectiveLevel() == logging.ERROR
    assert admin.control.levelno == logging.ERROR


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"level": "loud"}},
        {"json": {"level": 3}},
        {"json": {}},
        {"json": ["debug"]},
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"data": b""},
        {"data": {"level": "trace"}},
        {"data": {"other": "debug"}},
    ],
)
async def test_put_invalid_level(admin: Admin, kwargs: dict[str, object]) -> None:
    status, headers, body = await call(admin, "PUT", "/v1/loglevel", **kwargs)
    assert status == 400
    assert headers["Content-Type"] == JSON
    doc = json.loads(body)
    assert list(doc) == ["error"] and doc["error"]
    assert admin.control.level == "info"


async def test_metrics(admin: Admin) -> None:
    admin.metrics.retry("demo", "open-api")
    status, headers, body = await call(admin, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'appgateway_retries_total{app="demo",service="open-api"} 1.0' in body


async def test_async_metrics_and_level_setter(control: LogControl) -> None:
    calls: list[str] = []

    async def text() -> bytes:
        return b"# merged\n"

    async def fan_out(name: str) -> str:
        calls.append(name)
        return control.set_level(name)

    app = make_admin_app(
        ready=lambda: True, log_control=control, metrics_text=text, set_level=fan_out
    )
    runner, base = await _serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/metrics") as resp:
                assert await resp.read() == b"# merged\n"
            async with session.put(base + "/v1/loglevel", json={"level": "debug"}) as resp:
                assert (resp.status, await resp.read()) == (200, b'{"level":"debug"}\n')
            async with session.put(base + "/v1/loglevel", json={"level": "nope"}) as resp:
                assert resp.status == 400
    finally:
        await runner.cleanup()
    assert calls == ["debug", "nope"]
    assert control.level == "debug"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("HEAD", "/v1/health", "GET"),
        ("POST", "/v1/health", "GET"),
        ("PUT", "/v1/ready", "GET"),
        ("DELETE", "/v1/loglevel", "GET, PUT"),
        ("POST", "/v1/loglevel", "GET, PUT"),
        ("HEAD", "/metrics", "GET"),
        ("PATCH", "/metrics", "GET"),
    ],
)
async def test_method_not_allowed(admin: Admin, method: str, path: str, allow: str) -> None:
    status, headers, body = await call(admin, method, path)
    assert status == 405
    assert headers["Content-Type"] == JSON
    assert headers["Allow"] == allow
    assert body == (b"" if method == "HEAD" else NOT_ALLOWED)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/v1/health/"),
        ("GET", "/v1/Health"),
        ("GET", "/v1/%68ealth"),
        ("GET", "/v1"),
        ("GET", "/metrics/"),
        ("GET", "/v1/loglevel/x"),
        ("POST", "/nowhere"),
        ("HEAD", "/nowhere"),
    ],
)
async def test_not_found(admin: Admin, method: str, path: str) -> None:
    status, headers, body = await call(admin, method, path)
    assert status == 404
    assert headers["Content-Type"] == JSON
    assert body == (b"" if method == "HEAD" else NOT_FOUND)


async def test_query_string_is_ignored_for_matching(admin: Admin) -> None:
    status, _, body = await call(admin, "GET", "/v1/health?x=1")
    assert (status, body) == (200, b"")


async def test_start_admin_reports_port_in_use(control: LogControl) -> None:
    app = make_admin_app(ready=lambda: True, log_control=control, metrics_text=lambda: b"")
    runner, base = await _serve(app)
    try:
        port = int(base.rsplit(":", 1)[1])
        other = make_admin_app(ready=lambda: True, log_control=control, metrics_text=lambda: b"")
        with pytest.raises(OSError):
            await start_admin(other, "127.0.0.1", port)
    finally:
        await runner.cleanup()
