from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from appgateway.admin import MAX_CONNECTIONS, make_admin_app, start_admin
from appgateway.logs import LogControl, setup_logging
from appgateway.metrics import Metrics
from tests.conftest import Client, ClientFactory

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
def log_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def control(log_stream: io.StringIO) -> Iterator[LogControl]:
    root = logging.getLogger()
    saved = root.level
    ctl = setup_logging("info", log_stream)
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


# -- hostile bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"level":' * 50_000,
        b"[" * 5_000 + b"]" * 5_000,  # well-formed, still deeper than the parser recurses
    ],
    ids=["open-arrays", "open-objects", "closed-arrays"],
)
async def test_deeply_nested_json_is_a_400(admin: Admin, body: bytes) -> None:
    """Nesting deeper than the JSON parser recurses is a bad body, never a 500."""
    status, headers, answer = await call(
        admin, "PUT", "/v1/loglevel", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert headers["Content-Type"] == JSON
    assert json.loads(answer) == {"error": 'the body must be JSON like {"level":"info"}'}
    assert admin.control.level == "info"


# -- the audit line of a level change -----------------------------------------------------------


def _audit_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["msg"] == "log level changed"]


async def _put_level(port: int, level: bytes) -> tuple[int, int]:
    """PUT from a socket whose address we know: (status, our local port)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b'{"level":"%s"}' % level
        writer.write(
            b"PUT /v1/loglevel HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        answer = await asyncio.wait_for(reader.read(), 5)
        return int(answer.split(b" ", 2)[1]), writer.get_extra_info("sockname")[1]
    finally:
        writer.close()


async def test_level_change_is_logged_at_warn_with_the_peer(
    admin: Admin, log_stream: io.StringIO
) -> None:
    port = int(admin.base.rsplit(":", 1)[1])
    status, first_port = await _put_level(port, b"error")
    assert status == 200
    # error -> panic: neither level lets a warn line through, the audit line still comes.
    status, second_port = await _put_level(port, b"PANIC")
    assert status == 200
    assert (await _put_level(port, b"loud"))[0] == 400  # no change, no line
    lines = _audit_lines(log_stream)
    assert [
        (line["level"], line["old_level"], line["new_level"], line["peer"], line["peer_port"])
        for line in lines
    ] == [
        ("warn", "info", "error", "127.0.0.1", first_port),
        ("warn", "error", "panic", "127.0.0.1", second_port),
    ]
    assert all(line["logger"] == "appgateway.admin" for line in lines)


async def test_level_change_through_a_setter_is_logged(
    control: LogControl, log_stream: io.StringIO
) -> None:
    """The supervisor's admin app (a `set_level` fan-out) logs the change it makes."""

    async def fan_out(name: str) -> str:
        return control.set_level(name)

    app = make_admin_app(
        ready=lambda: True, log_control=control, metrics_text=lambda: b"", set_level=fan_out
    )
    runner, base = await _serve(app)
    try:
        status, local_port = await _put_level(int(base.rsplit(":", 1)[1]), b"debug")
    finally:
        await runner.cleanup()
    assert status == 200
    [line] = _audit_lines(log_stream)
    assert (line["old_level"], line["new_level"], line["peer_port"]) == (
        "info",
        "debug",
        local_port,
    )


# -- deadlines and the connection cap ------------------------------------------------------------

PHASE = 0.4


async def _start(
    control: LogControl, *, phase: float = PHASE, limit: int = MAX_CONNECTIONS
) -> tuple[web.AppRunner, int]:
    app = make_admin_app(ready=lambda: True, log_control=control, metrics_text=lambda: b"m\n")
    return await start_admin(app, "127.0.0.1", 0, phase_timeout=phase, max_connections=limit)


async def _closed_after(client: Client, within: float) -> float:
    """Seconds until the admin listener closed `client` (AssertionError if it did not)."""
    start = time.monotonic()
    try:
        await client.eof(within)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {within} s") from None
    return time.monotonic() - start


async def _still_open(client: Client, wait: float = 0.05) -> bool:
    try:
        await client.eof(wait)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    return False


async def _health(client: Client) -> int:
    return (await client.request("GET", "/v1/health", [("Host", "admin")])).status


async def test_silent_connection_is_closed_after_the_deadline(
    control: LogControl, clients: ClientFactory
) -> None:
    runner, port = await _start(control)
    try:
        silent = await clients(port)
        elapsed = await _closed_after(silent, 5)
    finally:
        await runner.cleanup()
    assert PHASE * 0.8 <= elapsed <= PHASE + 1.0


async def test_trickled_head_does_not_extend_the_deadline(
    control: LogControl, clients: ClientFactory
) -> None:
    """A head sent a byte at a time (slowloris) is closed as if it were silent."""
    runner, port = await _start(control)
    try:
        slow = await clients(port)
        await slow.send(b"GET /v1/health HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
        start = time.monotonic()
        while time.monotonic() - start < PHASE + 1.0:
            try:
                await slow.send(b"a")
            except ConnectionError:
                break
            if not await _still_open(slow, 0.05):
                break
        elapsed = time.monotonic() - start
    finally:
        await runner.cleanup()
    assert elapsed <= PHASE + 1.0


async def test_idle_keep_alive_connection_is_closed_after_the_deadline(
    control: LogControl, clients: ClientFactory
) -> None:
    runner, port = await _start(control)
    try:
        client = await clients(port)
        assert await _health(client) == 200
        elapsed = await _closed_after(client, 5)
    finally:
        await runner.cleanup()
    assert PHASE * 0.8 <= elapsed <= PHASE + 1.0


async def test_slow_body_is_closed_after_the_deadline(
    control: LogControl, clients: ClientFactory
) -> None:
    runner, port = await _start(control)
    try:
        client = await clients(port)
        await client.send(
            b"PUT /v1/loglevel HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        elapsed = await _closed_after(client, 5)
    finally:
        await runner.cleanup()
    assert elapsed <= PHASE + 1.0
    assert control.level == "info"


async def test_a_connection_in_use_outlives_the_deadline(
    control: LogControl, clients: ClientFactory
) -> None:
    """Each request starts a new phase: only silence is cut, not a long-lived connection."""
    runner, port = await _start(control)
    try:
        client = await clients(port)
        start = time.monotonic()
        statuses = []
        while time.monotonic() - start < PHASE * 4:
            statuses.append(await _health(client))
            await asyncio.sleep(PHASE / 4)
    finally:
        await runner.cleanup()
    assert statuses and set(statuses) == {200}


async def test_beyond_the_cap_the_longest_silent_connection_makes_room(
    control: LogControl, clients: ClientFactory
) -> None:
    """A keep-alive connection in use survives a flood of silent ones; new callers are
    served; no more than the cap stay open."""
    limit = 4
    runner, port = await _start(control, phase=30, limit=limit)
    try:
        in_use = await clients(port)
        assert await _health(in_use) == 200
        flood = [await clients(port) for _ in range(40)]
        await asyncio.sleep(0.2)
        still_open = [await _still_open(c) for c in flood]
        # The newest silent ones fill the cap beside the connection in use.
        assert still_open == [False] * (40 - (limit - 1)) + [True] * (limit - 1)
        assert await _health(in_use) == 200
        newcomer = await clients(port)
        assert await _health(newcomer) == 200
        assert not await _still_open(flood[-(limit - 1)], 0.5)  # the oldest silent one went
        assert await _health(in_use) == 200
    finally:
        await runner.cleanup()


async def test_when_every_connection_is_busy_a_new_one_gets_503(
    control: LogControl, clients: ClientFactory, log_stream: io.StringIO
) -> None:
    limit = 3
    runner, port = await _start(control, phase=30, limit=limit)
    try:
        busy = [await clients(port) for _ in range(limit)]
        for client in busy:  # each is inside a request, waiting for the rest of its body
            await client.send(
                b"PUT /v1/loglevel HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                b"Content-Length: 50\r\n\r\n{"
            )
        await asyncio.sleep(0.2)
        refused = await clients(port)
        started = time.monotonic()
        response = await refused.response(within=2)
        assert (response.status, response.json()) == (
            503,
            {"code": 503, "error": "too many admin connections"},
        )
        assert response.value("Content-Type") == JSON
        await _closed_after(refused, 2)
        assert time.monotonic() - started < 1.0
        assert all([await _still_open(c) for c in busy])
    finally:
        await runner.cleanup()
    warnings = [
        json.loads(line)
        for line in log_stream.getvalue().splitlines()
        if "admin connection limit reached" in line
    ]
    assert [(w["level"], w["limit"], w["refused_total"]) for w in warnings] == [("warn", 3, 1)]
