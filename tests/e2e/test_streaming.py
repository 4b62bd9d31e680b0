"""Bodies stream both ways with back-pressure and bounded memory (behaviour.md §9)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Client,
    Doc,
    Gateway,
    GatewayFactory,
    MockUpstream,
    api,
    application,
    gateway_factory_for,
    pattern_chunks,
    pattern_sha256,
    service,
)

BIG = 200 * 1024 * 1024
RSS_LIMIT_KB = 100 * 1024
IDLE = 1.5


def docs(u: str) -> list[Doc]:
    return [application("stream", [service("s", [api(u)])])]


@pytest.fixture(scope="module")
def timed_gateway(
    upstream_server: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Short timeouts: headers within 1 s, no body silence longer than IDLE."""
    folder: Path = tmp_path_factory.mktemp("streaming")
    args = ["--proxy-timeout", "1", "--idle-timeout", str(IDLE), "--retry-body-limit", "65536"]
    with gateway_factory_for(folder) as make:
        yield make(docs(upstream_server.base), args)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_200mb_download_in_bounded_memory(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base))
    expected = pattern_sha256(BIG)
    digest = hashlib.sha256()
    received = 0

    def sink(data: bytes) -> None:
        nonlocal received
        received += len(data)
        digest.update(data)

    with Client(gateway.proxy_port, timeout=20) as client:
        client.send(b"GET /stream/s/download/%d HTTP/1.1\r\nHost: h\r\n\r\n" % BIG)
        response = client.read_response(sink=sink)
    assert response.status == 200
    assert received == BIG
    assert digest.hexdigest() == expected
    peak = gateway.rss_peak_kb()
    assert peak < RSS_LIMIT_KB, f"gateway peak RSS {peak} kB"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_200mb_upload_in_bounded_memory(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base))
    with Client(gateway.proxy_port, timeout=20) as client:
        client.send(
            b"POST /stream/s/upload HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % BIG
        )
        for chunk in pattern_chunks(BIG):
            client.send(chunk)
        response = client.read_response("POST")
    assert response.status == 200, response.body
    answer = json.loads(response.body)
    assert answer == {"length": BIG, "sha256": pattern_sha256(BIG)}
    got = upstream.only("/upload")
    assert got.complete and got.body_len == BIG
    peak = gateway.rss_peak_kb()
    assert peak < RSS_LIMIT_KB, f"gateway peak RSS {peak} kB"


@pytest.mark.timeout(30)
def test_chunked_upload_over_retry_limit_streams(
    timed_gateway: Gateway, upstream: MockUpstream
) -> None:
    total = 3 * 1024 * 1024 + 17
    with Client(timed_gateway.proxy_port) as client:
        client.send(
            b"POST /stream/s/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for chunk in pattern_chunks(total):
            client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        client.send(b"0\r\n\r\n")
        response = client.read_response("POST")
    assert response.status == 200
    assert json.loads(response.body) == {"length": total, "sha256": pattern_sha256(total)}


@pytest.mark.timeout(30)
def test_slow_download_longer_than_proxy_timeout_is_not_cut(
    timed_gateway: Gateway, upstream: MockUpstream
) -> None:
    count, interval = 10, 0.3  # 3 s in all, never silent for IDLE
    start = time.monotonic()
    with Client(timed_gateway.proxy_port) as client:
        response = client.request("GET", f"/stream/s/slow/{count}/{interval}")
    elapsed = time.monotonic() - start
    assert response.status == 200
    assert response.body == b"w" * 1000 * count
    assert elapsed >= count * interval * 0.9


@pytest.mark.timeout(30)
def test_stalled_download_is_cut_after_idle_timeout(
    timed_gateway: Gateway, upstream: MockUpstream
) -> None:
    with Client(timed_gateway.proxy_port, timeout=15) as client:
        client.send(b"GET /stream/s/stall/5000 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, headers = client.read_head()
        start = time.monotonic()
        assert status == 200
        length = int(dict((n.lower(), v) for n, v in headers)["content-length"])
        body = client.read_to_eof()  # raises TimeoutError if the gateway hangs
        elapsed = time.monotonic() - start
    assert length == 5000 + 1_000_000
    assert len(body) < length
    assert IDLE * 0.6 <= elapsed < IDLE + 4, elapsed
    assert upstream.wait_for("/stall/")[0].done


@pytest.mark.timeout(30)
def test_stalled_upload_is_cut_after_idle_timeout(
    timed_gateway: Gateway, upstream: MockUpstream
) -> None:
    with Client(timed_gateway.proxy_port, timeout=15) as client:
        client.send(
            b"POST /stream/s/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"
            + b"u" * 200_000
        )
        start = time.monotonic()
        client.read_to_eof()  # a response before closing is allowed; hanging is not
        elapsed = time.monotonic() - start
    assert elapsed < IDLE + 4, elapsed
    got = upstream.wait_for("/upload", timeout=5)
    assert len(got) == 1
    assert not got[0].complete, "the upstream side was not aborted"
