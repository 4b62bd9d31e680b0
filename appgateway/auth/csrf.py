"""CSRF: wraps an authentication strategy, fetching a CSRF token with its credential.

Many SAP-style APIs want `X-Csrf-Token` plus the session cookies that came with it on every
modifying request. The token is fetched once per (endpoint, credential) and shared; a 401/403
from the target invalidates it together with the credential (behaviour.md §6, §8).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appgateway.auth import flows
from appgateway.auth.deps import AuthDeps
from appgateway.auth.oauth import BearerToken, OAuthStrategy
from appgateway.errors import TokenError, UpstreamTimeout, UpstreamUnavailable
from appgateway.flow import Pending, settle
from appgateway.headers import lower_name, put_header, set_header
from appgateway.model import ClientCert, Headers
from appgateway.urls import redact

if TYPE_CHECKING:
    from appgateway.auth import AuthStrategy

log = logging.getLogger("appgateway.auth")

X_CSRF_TOKEN = b"X-Csrf-Token"
COOKIE = b"Cookie"


@dataclass(frozen=True, slots=True)
class CsrfApplied:
    """What one attempt used: the inner strategy's value and the CSRF entry."""

    inner: object | None
    csrf: flows.CsrfToken


class CsrfStrategy:
    """`inner` authenticates the API request; the CSRF fetch uses the same credential.

    Exactly one credential source applies: `basic` (a fixed Authorization value), `oauth`
    (a Bearer token, which must be `inner` itself), or the inner strategy's client
    certificate, presented when the endpoint is https.
    """

    def __init__(
        self,
        inner: AuthStrategy,
        *,
        url: str,
        key: bytes,
        skip_verify: bool,
        deps: AuthDeps,
        basic: bytes | None = None,
        oauth: OAuthStrategy | None = None,
    ) -> None:
        self._inner = inner
        self._url = url
        self.key = key
        """The CSRF-cache key: (endpoint URL, credential identity)."""
        self._verify = not skip_verify
        self._deps = deps
        self._basic = basic
        self._oauth = oauth
        self._last: CsrfApplied | None = None  # reused while token and credential stay

    @property
    def inner(self) -> AuthStrategy:
        return self._inner

    @property
    def client_cert(self) -> ClientCert | None:
        return self._inner.client_cert

    def apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> object | None | Pending[object | None]:
        inner = self._inner.apply(headers, authenticate=authenticate)
        csrf = self._deps.csrf_cache.peek(self.key)
        if csrf is None or isinstance(inner, Pending):
            return Pending(self._apply_after_fetching(headers, inner, csrf))
        return self._add(headers, inner, csrf)

    async def _apply_after_fetching(
        self,
        headers: Headers,
        inner: object | None | Pending[object | None],
        csrf: flows.CsrfToken | None,
    ) -> object | None:
        inner_applied = await settle(inner)
        if csrf is None:
            csrf, fetched = await self._deps.csrf_cache.lookup(
                self.key, lambda: self._fetch(inner_applied)
            )
            oauth = self._oauth
            if fetched and isinstance(inner_applied, BearerToken) and oauth is not None:
                # The CSRF fetch may have replaced a rejected token: send the current one.
                current = await settle(oauth.apply(headers))
                if isinstance(current, BearerToken) and current.value != inner_applied.value:
                    inner_applied = current
        return self._add(headers, inner_applied, csrf)

    def _add(
        self, headers: Headers, inner_applied: object | None, csrf: flows.CsrfToken
    ) -> CsrfApplied:
        last = self._last
        if last is not None and last.csrf is csrf and last.inner is inner_applied:
            put_header(headers, X_CSRF_TOKEN, csrf.token)  # checked when it was new
        else:
            set_header(headers, X_CSRF_TOKEN, csrf.token)
            last = self._last = CsrfApplied(inner_applied, csrf)
        cookie = flows.merge_cookies(csrf.cookies, headers)
        if cookie:
            set_header(headers, COOKIE, cookie)
        else:
            headers[:] = [(n, v) for n, v in headers if lower_name(n) != b"cookie"]
        return last

    def invalidate(self, applied: object | None) -> None:
        if isinstance(applied, CsrfApplied):
            self._inner.invalidate(applied.inner)
            self._deps.csrf_cache.invalidate(self.key, applied.csrf)

    async def _fetch(self, inner_applied: object | None) -> tuple[flows.CsrfToken, None]:
        """Token failures of the inner OAuth strategy propagate as they are (§5.2)."""
        oauth = self._oauth
        token: BearerToken | None = None
        if oauth is not None:
            if isinstance(inner_applied, BearerToken):
                token = inner_applied
            else:  # an Access-Token override: the API request carried no token of ours
                token = await oauth.token()
        fields = {"url": redact(self._url)}
        try:
            status, headers = await self._send(token)
            stale = token is not None and not token.fetched and status in (401, 403)
            if stale and oauth is not None:  # behaviour.md §6.3: refresh the token once
                oauth.invalidate(token)
                status, headers = await self._send(await oauth.token())
            value = flows.parse_csrf_response(self._url, status, headers)
        except flows.FlowError as exc:
            self._deps.metrics.csrf_fetch("error")
            log.warning(
                "CSRF token request failed", extra={"fields": {**fields, "error": exc.message}}
            )
            raise TokenError(exc.message) from None
        self._deps.metrics.csrf_fetch("ok")
        log.debug("CSRF token fetched", extra={"fields": fields})
        return value, None

    async def _send(self, token: BearerToken | None) -> tuple[int, Headers]:
        authorization = self._basic
        if token is not None:
            authorization = b"Bearer " + token.value.encode()
        request = flows.csrf_request(self._url, authorization)
        try:
            status, headers, _ = await self._deps.send(
                request, verify=self._verify, cert=self.client_cert
            )
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            raise flows.FlowError(flows.request_failed(self._url, exc.message)) from None
        except OSError as setup_error:  # building the SSL context
            reason = f"TLS setup failed: {setup_error}"
            raise flows.FlowError(flows.request_failed(self._url, reason)) from None
        return status, headers
