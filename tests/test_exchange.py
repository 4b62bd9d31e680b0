"""One request on a caller connection: its answer's moves and the body's minimum rate."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from appgateway import transitions
from appgateway.errors import BodyTooSlow
from appgateway.exchange import (
    ANSWERED,
    ANSWERING,
    ANSWERS,
    CUT,
    LEGAL_ANSWERS,
    UNANSWERED,
    Exchange,
)
from tests.conftest import ClientFactory, Listen, request_bytes

pytestmark = pytest.mark.timeout(30)

MOVES = {
    (UNANSWERED, ANSWERING),
    (UNANSWERED, ANSWERED),  # a complete error response at once
    (UNANSWERED, CUT),  # the caller left before any answer
    (ANSWERING, ANSWERED),
    (ANSWERING, CUT),
    (CUT, CUT),  # cutting twice changes nothing
}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(range(len(ANSWERS)), range(len(ANSWERS))))
)
def test_every_allowed_move_is_listed(old: int, new: int) -> None:
    assert transitions.allowed(LEGAL_ANSWERS, old, new) is ((old, new) in MOVES)


def reader(outcome: list[object]) -> Callable[[Exchange], Awaitable[None]]:
    async def read_slowly(ex: Exchange) -> None:
        started = time.monotonic()
        try:
            while await ex.read():
                pass
            outcome.append("complete")
        except BodyTooSlow as slow:
            outcome.append(slow.message)
            ex.send_error(slow)
        outcome.append(time.monotonic() - started)

    return read_slowly


async def test_a_body_below_the_minimum_rate_is_refused(
    listen: Listen, clients: ClientFactory
) -> None:
    """Each request-timeout the reader waits must bring min-rate x request-timeout bytes."""
    outcome: list[object] = []
    server = await listen(reader(outcome), request_timeout=0.3, body_min_rate=100)
    client = await clients(server.port)
    await client.send(request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "100")]))
    for _ in range(10):  # 1 byte per 0.1 s: 10 B/s, never idle
        await client.send(b"x")
        await asyncio.sleep(0.1)
        if outcome:
            break
    response = await client.response()
    assert response.status == 408
    assert outcome[0] == "request body slower than 100 bytes/s"
    assert isinstance(outcome[1], float) and 0.25 <= outcome[1] < 2


async def test_a_body_at_the_minimum_rate_is_read_whole(
    listen: Listen, clients: ClientFactory
) -> None:
    outcome: list[object] = []
    server = await listen(reader(outcome), request_timeout=0.3, body_min_rate=100)
    client = await clients(server.port)
    await client.send(request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "200")]))
    for _ in range(8):  # 25 bytes per 0.1 s: 250 B/s
        await client.send(b"y" * 25)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.1)
    assert outcome[0] == "complete"


async def test_waiting_on_our_own_back_pressure_does_not_count(
    listen: Listen, clients: ClientFactory
) -> None:
    """Only the time the reader waits for the caller counts: a handler that stops reading
    for a while (a slow target) does not make the caller too slow."""
    outcome: list[object] = []

    async def pausing(ex: Exchange) -> None:
        first = await ex.read()
        await asyncio.sleep(1.0)  # we are slow, not the caller
        rest = first
        while data := await ex.read():
            rest += data
        outcome.append(len(rest))
        ex.send_error(BodyTooSlow("done"))

    server = await listen(pausing, request_timeout=0.3, body_min_rate=100)
    client = await clients(server.port)
    await client.send(request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "50")]))
    await client.send(b"z" * 10)
    await asyncio.sleep(0.5)
    await client.send(b"z" * 40)
    await client.response()
    assert outcome == [50]
