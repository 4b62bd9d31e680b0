"""Cost of one `--caller-auth` decision in-process: cached (kubernetes), tokens mode, cold.

Run by hand: `.venv/bin/python bench/caller_auth.py [--calls 200000]`. A stand-in API server
on loopback (aiohttp) answers TokenReview and SubjectAccessReview, so only the gateway's side
is timed. The cached figure is `auth.authorize(...)` in a loop with both answers
cached; "the same token on one connection" passes a connection that keeps its last allowed
decision (caller/bearer.Remembered), as the engine does: what a keep-alive caller pays.
The token is JWT-sized (about 1 KiB), as ServiceAccount tokens are, since its HMAC is part of
the cost; each call gets its own copy of the field, as each request parses its own. Compare
with `make native` (compiled data path) and `NATIVE=0 make native`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from appgateway import native
from appgateway.caller.bearer import Remembered
from appgateway.caller.kubernetes import KubernetesCallerAuth
from appgateway.caller.tokens import TokensCallerAuth
from appgateway.flow import settle
from appgateway.metrics import Metrics
from appgateway.registry.kubeclient import KubeClient
from appgateway.registry.kubeconfig import ClusterAuth


def jwt_like(size: int = 1000) -> bytes:
    claims = {"exp": int(time.time()) + 3600, "aud": ["appgateway"], "pad": "x" * size}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return b"eyJhbGciOiJSUzI1NiJ9." + payload[: size - 60] + b"." + b"s" * 40


async def stand_in() -> tuple[web.AppRunner, int]:
    async def review(request: web.Request) -> web.Response:
        doc = await request.json()
        if doc["kind"] == "TokenReview":
            status = {
                "authenticated": True,
                "audiences": ["appgateway"],
                "user": {
                    "username": "system:serviceaccount:team-a:orders",
                    "uid": "u1",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
            }
        else:
            status = {"allowed": True}
        return web.json_response({**doc, "status": status}, status=201)

    app = web.Application()
    app.router.add_post("/{tail:.*}", review)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


class Connection:
    """Stands in for a caller connection: where its last allowed decision is kept."""

    def __init__(self) -> None:
        self.caller_memo: Remembered | None = None


def copies(value: bytes) -> Callable[[], bytes]:
    """Equal fields that are distinct objects, in turn (equal objects compare at once)."""
    return itertools.cycle([value[:-1] + value[-1:] for _ in range(64)]).__next__


def per_call_ns(step: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over `rounds` of the mean ns per call."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(calls):
            step()
        samples.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(samples)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    calls: int = args.calls
    print(f"appgateway native modules: {native.state()}")
    runner, port = await stand_in()
    auth_info = ClusterAuth(
        server=f"http://127.0.0.1:{port}",
        ca=None,
        insecure=False,
        tls_server_name=None,
        token=None,
        client_cert=None,
        client_key=None,
        origin="bench",
    )
    auth = KubernetesCallerAuth(
        KubeClient(auth_info), audience="appgateway", ttl=300.0, metrics=Metrics()
    )
    await auth.start()
    token = jwt_like()
    value = b"Bearer " + token
    try:
        assert await settle(auth.authorize(value, "erp")) == "system:serviceaccount:team-a:orders"
        assert auth.authorize(value, "erp") == "system:serviceaccount:team-a:orders"
        field = copies(value)
        cached = per_call_ns(lambda: auth.authorize(field(), "erp"), calls)
        conn = Connection()
        kept = per_call_ns(lambda: auth.authorize(field(), "erp", conn), calls)
        cold: list[float] = []
        for n in range(200):
            fresh = b"Bearer " + token[:-8] + b"%08d" % n  # new token, new Application
            started = time.perf_counter()
            await settle(auth.authorize(fresh, f"app-{n}"))
            cold.append((time.perf_counter() - started) * 1000)
    finally:
        await auth.stop()
        await runner.cleanup()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "callers.yaml")
        digest = hashlib.sha256(token).hexdigest()
        path.write_text(f"- {{name: ci, sha256: {digest}, applications: [erp]}}\n")
        tokens = TokensCallerAuth(path, metrics=Metrics())
        await tokens.start()
        try:
            assert tokens.authorize(value, "erp") == "ci"
            field = copies(value)
            by_file = per_call_ns(lambda: tokens.authorize(field(), "erp"), calls)
            conn = Connection()
            by_file_kept = per_call_ns(lambda: tokens.authorize(field(), "erp", conn), calls)
        finally:
            await tokens.stop()

    cold.sort()
    print(f"token size: {len(token)} bytes; {calls} calls x 5 rounds (median of the means)")
    print(f"  kubernetes, both decisions cached   {cached:8.0f} ns/call")
    print(f"    the same token on one connection  {kept:8.0f} ns/call")
    print(f"  tokens file                         {by_file:8.0f} ns/call")
    print(f"    the same token on one connection  {by_file_kept:8.0f} ns/call")
    print(
        f"  kubernetes, cold (stand-in server)  p50 {cold[len(cold) // 2]:.2f} ms, "
        f"p99 {cold[int(len(cold) * 0.99)]:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
