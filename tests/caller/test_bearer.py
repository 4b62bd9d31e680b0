"""Proxy-Authorization parsing, token keys, a connection's memo and the JWT expiry, as
tables."""

from __future__ import annotations

import base64
import hmac
import json

import pytest

from appgateway.caller import bearer
from appgateway.caller.bearer import (
    BAD_SYNTAX,
    EMPTY,
    MAX_TOKEN,
    MISSING,
    NOT_BEARER,
    TOO_LONG,
    TokenKeys,
    check_token,
    jwt_expiry,
    presented_token,
    recall,
    remember,
)
from appgateway.errors import CallerUnauthenticated
from tests.caller.conftest import Connection

JWT = b"eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln"


def bearer_token(value: bytes | None) -> bytes:
    """What the engine accepts: the presented token, with its characters checked."""
    token = presented_token(value)
    check_token(token)
    return token


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer abc", b"abc"),
        (b"BEARER abc", b"abc"),
        (b"Bearer    abc", b"abc"),  # 1*SP
        (b"  Bearer abc \t", b"abc"),  # OWS around the field value
        (b"Bearer " + JWT, JWT),
        (b"Bearer a-b.c_d~e+f/g==", b"a-b.c_d~e+f/g=="),
        (b"Bearer " + b"x" * MAX_TOKEN, b"x" * MAX_TOKEN),
        (b"Bearer  abc", b"abc"),  # the quick path gives way to the general one
        (b"Bearer abc ", b"abc"),
        (b"Bearer abc\t", b"abc"),
    ],
)
def test_bearer_token(value: bytes, token: bytes) -> None:
    assert presented_token(value) == token
    assert bearer_token(value) == token


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, MISSING),
        (b"", NOT_BEARER),
        (b"Bearer", EMPTY),
        (b"Bearer ", EMPTY),
        (b"Bearer    ", EMPTY),
        (b"Basic YWxpY2U6czNjcmV0", NOT_BEARER),
        (b"Bearertoken", NOT_BEARER),
        (b"Token abc", NOT_BEARER),
        (b"Bearer\tabc", NOT_BEARER),  # the separator is SP (RFC 9110 section 11.4)
        (b"Bearer " + b"x" * (MAX_TOKEN + 1), TOO_LONG),
        (b"Bearer " + b"x" * 100_000, TOO_LONG),
        (b"Bearer a b", BAD_SYNTAX),
        (b"Bearer a,b", BAD_SYNTAX),
        (b"Bearer abc, Bearer def", BAD_SYNTAX),
        (b"Bearer a=b", BAD_SYNTAX),  # = only at the end
        (b"Bearer =", BAD_SYNTAX),
        (b'Bearer "abc"', BAD_SYNTAX),
        (b"Bearer ab\xc3\xa9", BAD_SYNTAX),
        (b"Bearer ab\x00c", BAD_SYNTAX),
        (b"Bearer abc\r\nX: y", BAD_SYNTAX),
        (b'Bearer realm="x"', BAD_SYNTAX),
    ],
)
def test_bearer_token_rejects(value: bytes | None, message: str) -> None:
    with pytest.raises(CallerUnauthenticated) as info:
        bearer_token(value)
    assert info.value.message == message
    assert info.value.status == 407


@pytest.mark.parametrize(
    "value",
    [
        b"Basic s3cr3t-t0ken",
        b"Bearer s3cr3t-t0ken,x",
        b"Bearer s3cr3t-t0ken x",
        b"Bearer " + b"s3cr3t-t0ken" * 1000,
    ],
)
def test_no_message_quotes_the_value(value: bytes) -> None:
    with pytest.raises(CallerUnauthenticated) as info:
        bearer_token(value)
    assert "s3cr3t" not in info.value.message
    assert b"s3cr3t" not in info.value.body()


def test_presented_token_leaves_the_characters_to_check_token() -> None:
    """The cached path skips the character scan: a token in the cache was checked when it
    was reviewed; the scan runs once, on the miss."""
    assert presented_token(b"Bearer a,b") == b"a,b"
    with pytest.raises(CallerUnauthenticated):
        check_token(b"a,b")
    check_token(b"ab")


@pytest.mark.parametrize("key", [b"", b"k", b"1" * 32, b"x" * 64, b"y" * 65, bytes(range(200))])
@pytest.mark.parametrize("token", [b"", b"tok", JWT, b"z" * 8192, bytes(range(256))])
def test_token_keys_are_hmac_sha256(key: bytes, token: bytes) -> None:
    assert TokenKeys(key)(token) == hmac.digest(key, token, "sha256")


SOURCE, OTHER_SOURCE = object(), object()
FIELD = b"Bearer " + b"t0ken-one" * 100


@pytest.mark.parametrize(
    ("field", "application", "source", "now", "recalled"),
    [
        (FIELD, "erp", SOURCE, 0.0, True),
        (bytes(FIELD), "erp", SOURCE, 0.0, True),  # an equal field, as each request parses anew
        (FIELD[:-1], "erp", SOURCE, 0.0, False),  # a prefix of the token
        (FIELD + b"x", "erp", SOURCE, 0.0, False),
        (FIELD.replace(b"Bearer", b"bearer"), "erp", SOURCE, 0.0, False),  # decided as itself
        (None, "erp", SOURCE, 0.0, False),
        (FIELD, "crm", SOURCE, 0.0, False),  # another Application
        (FIELD, "erp", OTHER_SOURCE, 0.0, False),  # decided by what is no longer in force
        (FIELD, "erp", SOURCE, 12.49, True),
        (FIELD, "erp", SOURCE, 12.5, False),  # from `until` on, decided again
    ],
)
def test_a_connection_recalls_only_the_same_field_application_and_source(
    field: bytes | None, application: str, source: object, now: float, recalled: bool
) -> None:
    conn = Connection()
    remember(conn, FIELD, "erp", "alice", SOURCE, 12.5)
    memo = recall(conn, field, application, source, now)
    assert (memo is not None) == recalled
    if memo is not None:
        assert (memo.name, memo.until) == ("alice", 12.5)


def test_a_connection_keeps_a_hash_of_the_field_never_the_field() -> None:
    conn = Connection()
    remember(conn, FIELD, "erp", "alice", SOURCE, 1.0)
    memo = conn.caller_memo
    assert memo is not None and memo.hashed == hash(FIELD)
    kept = [getattr(memo, name) for name in dir(memo) if not name.startswith("__")]
    assert len(kept) >= 5  # (compiled, a native class has no __slots__ to list)
    assert not any(isinstance(value, bytes | bytearray | memoryview) for value in kept)


def test_only_the_last_decision_of_a_connection_is_kept() -> None:
    conn, other = Connection(), Connection()
    remember(conn, FIELD, "erp", "alice", SOURCE, 1.0)
    remember(conn, b"Bearer two", "erp", "bob", SOURCE, 1.0)
    assert recall(conn, FIELD, "erp", SOURCE, 0.0) is None
    assert recall(other, b"Bearer two", "erp", SOURCE, 0.0) is None  # per connection
    memo = recall(conn, b"Bearer two", "erp", SOURCE, 0.0)
    assert memo is not None and memo.name == "bob"
    remember(None, FIELD, "erp", "alice", SOURCE, 1.0)  # no connection: nothing to keep
    remember(other, None, "erp", "alice", SOURCE, 1.0)  # no field: nothing to compare
    assert other.caller_memo is None
    assert recall(None, FIELD, "erp", SOURCE, 0.0) is None


def test_token_keys_are_keyed_and_never_the_token() -> None:
    one, two = TokenKeys(b"1" * 32), TokenKeys(b"2" * 32)
    key = one(b"tok")
    assert len(key) == 32 and b"tok" not in key
    assert key == one(b"tok")  # the precomputed state is copied, never used up
    assert key != two(b"tok")
    assert key != one(b"tok2")


def _jwt(payload: object, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(payload).encode()
    encoded = base64.urlsafe_b64encode(body).rstrip(b"=")
    return b"eyJhbGciOiJSUzI1NiJ9." + encoded + b".c2ln"


@pytest.mark.parametrize(
    ("token", "expiry"),
    [
        (JWT, 1700000000.0),
        (_jwt({"exp": 1700000000, "aud": ["appgateway"]}), 1700000000.0),
        (_jwt({"exp": 1700000000.5}), 1700000000.5),
        (_jwt({"exp": "1700000000"}), None),
        (_jwt({"exp": True}), None),
        (_jwt({"exp": None}), None),
        (_jwt({"iat": 1}), None),
        (_jwt([1, 2]), None),
        (_jwt(None, b'{"exp": 1e999}'), None),  # inf
        (_jwt(None, b'{"exp": ' + b"9" * 400 + b"}"), None),  # too large for a float
        (_jwt(None, b'{"exp": NaN}'), None),
        (_jwt(None, b"not json"), None),
        (_jwt(None, b"\xff\xfe"), None),
        (b"a.b", None),
        (b"a.b.c.d", None),
        (b"opaque-token", None),
        (b"x.!!!.y", None),
    ],
)
def test_jwt_expiry(token: bytes, expiry: float | None) -> None:
    assert jwt_expiry(token) == expiry


def test_limits() -> None:
    assert bearer.MAX_TOKEN == 8192
    assert str(MAX_TOKEN) in TOO_LONG
