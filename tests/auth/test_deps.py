from __future__ import annotations

import asyncio

from aiohttp import web

from appgateway.auth.deps import AuthDeps, make_deps
from appgateway.auth.flows import csrf_request
from appgateway.metrics import Metrics
from appgateway.tls import TlsContexts
from appgateway.upstream import Upstream
from tests.auth.conftest import FakeClock, Seen, Server


async def test_caches_report_lookups_and_keys_are_random() -> None:
    metrics = Metrics()
    upstream = Upstream(asyncio.get_running_loop())

    def deps_() -> AuthDeps:
        return make_deps(
            upstream=upstream,
            tls=TlsContexts(),
            metrics=metrics,
            clock=FakeClock(),
            proxy_timeout=1.0,
            token_default_ttl=300.0,
        )

    deps, other = deps_(), deps_()
    assert len(deps.hmac_key) == 32 and deps.hmac_key != other.hmac_key
    assert "hmac_key" not in repr(deps)

    async def value() -> tuple[str, float | None]:
        return "v", None

    await deps.token_cache.get(b"k", value)
    await deps.token_cache.get(b"k", value)
    sample = metrics.registry.get_sample_value
    assert sample("appgateway_cache_lookups_total", {"cache": "token", "result": "miss"}) == 1
    assert sample("appgateway_cache_lookups_total", {"cache": "token", "result": "hit"}) == 1
    assert sample("appgateway_cache_lookups_total", {"cache": "csrf", "result": "hit"}) is None
    upstream.close()


async def test_send_uses_the_upstream_client(server: Server, deps: AuthDeps) -> None:
    async def answer(seen: Seen) -> web.StreamResponse:
        return web.Response(status=201, body=b"body", headers={"X-Answer": "yes"})

    server.routes["/x"] = answer
    status, headers, body = await deps.send(
        csrf_request(server.url("/x"), None), verify=True, cert=None
    )
    assert (status, body) == (201, b"body")
    assert (b"X-Answer", b"yes") in headers
    status, _, _ = await deps.send(csrf_request(server.url("/x"), None), verify=True, cert=None)
    assert status == 201
    assert server.paths() == ["/x", "/x"]
