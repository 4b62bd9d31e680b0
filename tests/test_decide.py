from __future__ import annotations

import pytest

from appgateway import decide
from appgateway.errors import (
    CallerGone,
    ConfigError,
    GatewayError,
    TokenError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

STALE = UpstreamUnavailable("connection closed before response headers", "protocol")


@pytest.mark.parametrize(
    ("error", "got_bytes", "fresh", "replayable", "resend"),
    [
        (STALE, False, False, True, True),  # the pooled connection had died: not an answer
        (STALE, True, False, True, False),  # the target began answering
        (STALE, False, True, True, False),  # a fresh connection: no second try
        (STALE, False, False, False, False),  # a POST may have been processed
        (UpstreamUnavailable("connection refused", "connect"), False, False, True, False),
        (UpstreamUnavailable("TLS: closed", "tls"), False, False, True, True),
        (UpstreamTimeout("timeout after 1s"), False, False, True, False),
        (TokenError("token"), False, False, True, False),
    ],
)
def test_resend_on_fresh_connection(
    error: GatewayError, got_bytes: bool, fresh: bool, replayable: bool, resend: bool
) -> None:
    assert (
        decide.resend_on_fresh_connection(
            error, got_bytes=got_bytes, fresh=fresh, replayable=replayable
        )
        is resend
    )


@pytest.mark.parametrize(
    ("status", "retried", "replayable_body", "retry"),
    [
        (401, False, True, True),
        (403, False, True, True),
        (401, True, True, False),  # once only (behaviour.md §8)
        (403, False, False, False),  # a streamed body cannot be sent again
        (200, False, True, False),
        (404, False, True, False),
        (407, False, True, False),
        (500, False, True, False),
    ],
)
def test_retry_with_fresh_credentials(
    status: int, retried: bool, replayable_body: bool, retry: bool
) -> None:
    assert (
        decide.retry_with_fresh_credentials(
            status, retried=retried, replayable_body=replayable_body
        )
        is retry
    )


@pytest.mark.parametrize(
    ("caller_paused", "kind", "status", "message"),
    [
        (True, CallerGone, 499, "response body idle timeout (caller not reading)"),
        (False, UpstreamTimeout, 504, "response body idle timeout"),
    ],
)
def test_on_idle(caller_paused: bool, kind: type, status: int, message: str) -> None:
    error = decide.on_idle(caller_paused)
    assert isinstance(error, kind)
    assert (error.status, error.message) == (status, message)


def test_head_timeout() -> None:
    error = decide.head_timeout(2.5)
    assert (type(error), error.status, error.message) == (
        UpstreamTimeout,
        504,
        "timeout after 2.5s",
    )
    assert error.body() == b""


@pytest.mark.parametrize(
    ("content_length", "limit", "expected"),
    [
        (None, 1024, 1024),  # unknown: buffer up to the limit, then stream the rest
        (0, 1024, 0),
        (1024, 1024, 1024),
        (1025, 1024, None),  # announced over the limit: stream from the start
        (5, 0, None),
        (None, 0, 0),
    ],
)
def test_buffer_limit(content_length: int | None, limit: int, expected: int | None) -> None:
    assert decide.buffer_limit(content_length, limit) == expected


def test_retry_statuses_are_those_of_behaviour_8() -> None:
    assert decide.RETRY_STATUSES == (401, 403)
    assert not issubclass(ConfigError, UpstreamUnavailable)
