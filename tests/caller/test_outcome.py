"""Each error counts under its result; the 403 message names the identity and Application."""

from __future__ import annotations

import pytest

from appgateway.caller.outcome import Outcomes, forbidden
from appgateway.errors import (
    CallerAuthUnavailable,
    CallerForbidden,
    CallerUnauthenticated,
    GatewayError,
    NotFound,
)
from appgateway.metrics import Metrics


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (CallerUnauthenticated("x"), "unauthenticated"),
        (CallerForbidden("x"), "denied"),
        (CallerAuthUnavailable("x"), "unavailable"),
        (NotFound("x"), None),  # not a caller decision: counted nowhere
    ],
)
def test_failed_counts_by_class(error: GatewayError, counted: str | None) -> None:
    metrics = Metrics()
    outcomes = Outcomes(metrics)
    outcomes.failed(error)
    values = {
        r: metrics.caller_decisions(r).value
        for r in ("allowed", "denied", "unauthenticated", "unavailable")
    }
    assert values == {r: int(r == counted) for r in values}


def test_forbidden() -> None:
    error = forbidden("system:serviceaccount:team-a:orders", "erp")
    assert error.status == 403
    assert error.message == (
        "caller system:serviceaccount:team-a:orders may not use the credentials of application erp"
    )
