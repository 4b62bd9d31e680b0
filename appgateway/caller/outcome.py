"""How a caller decision ends: the counters of `appgateway_caller_decisions_total` and the
403 message, shared by both modes so they count and word things alike."""

from __future__ import annotations

from appgateway.errors import (
    CallerAuthUnavailable,
    CallerForbidden,
    CallerUnauthenticated,
    GatewayError,
)
from appgateway.metrics import Metrics


class Outcomes:
    """The four result counters, looked up once (they then exist at 0 in `/metrics`)."""

    __slots__ = ("allowed", "denied", "unauthenticated", "unavailable")

    def __init__(self, metrics: Metrics) -> None:
        self.allowed = metrics.caller_decisions("allowed")
        self.denied = metrics.caller_decisions("denied")
        self.unauthenticated = metrics.caller_decisions("unauthenticated")
        self.unavailable = metrics.caller_decisions("unavailable")

    def failed(self, error: GatewayError) -> None:
        if isinstance(error, CallerUnauthenticated):
            self.unauthenticated.inc()
        elif isinstance(error, CallerForbidden):
            self.denied.inc()
        elif isinstance(error, CallerAuthUnavailable):
            self.unavailable.inc()


def forbidden(name: str, application: str) -> CallerForbidden:
    """The caller learns who the gateway took it for: the usual cause of a 403 is a token of
    another ServiceAccount than the one that was granted access."""
    return CallerForbidden(
        f"caller {name} may not use the credentials of application {application}"
    )
