"""What an exchange does next at each turn: the data path's decisions, as named pure
functions. [pure]

Each is called from one place in the relay (relay.py) and tested by a table, so the policy
of behaviour.md §8-§9 and RFC 9110 reads here in a few lines rather than in callbacks.
"""

from __future__ import annotations

from typing import Final

from appgateway.errors import CallerGone, GatewayError, UpstreamTimeout, UpstreamUnavailable

RETRY_STATUSES: Final = (401, 403)


def resend_on_fresh_connection(
    error: GatewayError, *, got_bytes: bool, fresh: bool, replayable: bool
) -> bool:
    """Send the same request again on a new connection after `error` before the head?

    Only when a reused keep-alive connection failed before any response byte (the target
    closed it while it sat in the pool: that is not its answer), and only a request that may
    be repeated (RFC 9110 §9.2.2): the target may have processed it before closing.
    """
    return (
        not fresh
        and not got_bytes
        and replayable
        and isinstance(error, UpstreamUnavailable)
        and error.kind != "connect"
    )


def retry_with_fresh_credentials(status: int, *, retried: bool, replayable_body: bool) -> bool:
    """A 401/403 means the credentials may be stale: fetch them anew and send once more
    (behaviour.md §8), if this is the first answer and the body can be sent again."""
    return status in RETRY_STATUSES and not retried and replayable_body


def on_idle(caller_paused: bool) -> GatewayError:
    """The response body made no progress for --idle-timeout: whose fault is it?

    While the caller does not read, the target is paused by us; the caller is gone (499).
    Otherwise the target stalled (504).
    """
    if caller_paused:
        return CallerGone("response body idle timeout (caller not reading)")
    return UpstreamTimeout("response body idle timeout")


def head_timeout(proxy_timeout: float) -> GatewayError:
    """No response head within --proxy-timeout (504)."""
    return UpstreamTimeout(f"timeout after {proxy_timeout:g}s")


def buffer_limit(content_length: int | None, retry_limit: int) -> int | None:
    """How much of a request body to buffer before sending (None: stream it from the start).

    A body that fits --retry-body-limit is buffered so a 401/403 can be retried; a longer
    one (announced, or found while buffering) streams and cannot be retried.
    """
    if content_length is None:
        return retry_limit
    if content_length > retry_limit:
        return None
    return content_length
