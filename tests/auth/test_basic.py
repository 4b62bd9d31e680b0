from __future__ import annotations

import pytest

from appgateway.auth.basic import BasicStrategy
from appgateway.flow import settle
from appgateway.model import BasicAuth, Headers


@pytest.mark.parametrize(
    ("user", "password", "value"),
    [
        ("alice", "s3cret", b"Basic YWxpY2U6czNjcmV0"),  # behaviour.md §5.2
        ("", "", b"Basic Og=="),  # registry.md §2: missing keys read as ""
        ("a:b", "c d", b"Basic YTpiOmMgZA=="),  # raw bytes, not form-encoded
        ("j\u00fcrgen", "\u00e9", b"Basic asO8cmdlbjrDqQ=="),  # UTF-8
    ],
)
async def test_sets_authorization(user: str, password: str, value: bytes) -> None:
    headers: Headers = [(b"X-A", b"1")]
    assert await settle(BasicStrategy(BasicAuth(user, password)).apply(headers)) is None
    assert headers == [(b"X-A", b"1"), (b"Authorization", value)]


async def test_replaces_the_callers_authorization_in_place() -> None:
    headers: Headers = [(b"authorization", b"Bearer x"), (b"X-A", b"1"), (b"Authorization", b"y")]
    await settle(BasicStrategy(BasicAuth("alice", "s3cret")).apply(headers))
    assert headers == [(b"Authorization", b"Basic YWxpY2U6czNjcmV0"), (b"X-A", b"1")]


async def test_access_token_override_leaves_headers() -> None:
    strategy = BasicStrategy(BasicAuth("alice", "s3cret"))
    headers: Headers = [(b"Authorization", b"Bearer from-caller")]
    assert await settle(strategy.apply(headers, authenticate=False)) is None
    assert headers == [(b"Authorization", b"Bearer from-caller")]
    strategy.invalidate(None)
    assert strategy.client_cert is None
