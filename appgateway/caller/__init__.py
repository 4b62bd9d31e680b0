"""Caller authorization (`--caller-auth`): who may spend an Application's credentials.

One interface, one factory. The request engine calls `authorize` once per request, after
routing has named the Application and before any token fetch or upstream call, as it applies
credentials (appgateway/flow.py): a cached decision comes back at once, so it costs no task;
one that needs a review comes back `Pending`, for the request's prelude to await.
"""

from __future__ import annotations

from typing import Protocol, assert_never

from appgateway.caller.bearer import Remembers
from appgateway.config import ConfigurationError, Settings
from appgateway.flow import Pending
from appgateway.metrics import Metrics

__all__ = ["CallerAuth", "make_caller_auth"]


class CallerAuth(Protocol):
    def authorize(
        self, proxy_authorization: bytes | None, application: str, memo: Remembers | None = None
    ) -> str | Pending[str]:
        """The caller's identity name when it may use `application`'s credentials; raises
        CallerUnauthenticated (407), CallerForbidden (403) or CallerAuthUnavailable (503).

        `proxy_authorization` is the raw value of the caller's first Proxy-Authorization
        field (None when absent); `memo`, the caller's connection (bearer.Remembered).
        Every outcome is counted in `appgateway_caller_decisions_total`; the identity never
        contains the token.
        """
        ...

    async def start(self) -> None:
        """Before the listeners open: load what is needed (ConfigurationError if unusable)."""

    async def stop(self) -> None: ...


def make_caller_auth(settings: Settings, metrics: Metrics) -> CallerAuth | None:
    """The mode's implementation; None for `off`, where the engine skips the step entirely
    (the behaviour stays exactly Kyma's). Raises ConfigurationError (exit 2) when the mode's
    inputs are unusable (no in-cluster config, an unreadable kubeconfig)."""
    mode = settings.caller_auth
    match mode:
        case "off":
            return None
        case "kubernetes":
            from appgateway.caller.kubernetes import KubernetesCallerAuth

            return KubernetesCallerAuth.from_settings(settings, metrics)
        case "tokens":
            from appgateway.caller.tokens import TokensCallerAuth

            if settings.caller_tokens is None:  # build_settings refuses this already
                raise ConfigurationError("--caller-auth tokens needs --caller-tokens FILE")
            return TokensCallerAuth(settings.caller_tokens, metrics=metrics)
        case _:
            assert_never(mode)
