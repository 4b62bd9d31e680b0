"""OAuth 2.0 client credentials, with a client secret (OAuth) or a client certificate
(OAuthWithCert): a Bearer token from the shared token cache, fetched on a miss."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from appgateway.auth import flows
from appgateway.auth.deps import AuthDeps
from appgateway.errors import (
    GatewayError,
    TokenError,
    TokenErrorMTLS,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from appgateway.flow import Pending
from appgateway.headers import put_header, set_header
from appgateway.model import ClientCert, Headers, OAuth, OAuthMTLS
from appgateway.urls import redact

log = logging.getLogger("appgateway.auth")

AUTHORIZATION = b"Authorization"


@dataclass(frozen=True, slots=True)
class BearerToken:
    """The token put on a request. `fetched`: this request waited for the token request,
    so a rejection cannot be blamed on a stale cache entry (behaviour.md §6.3)."""

    value: str = field(repr=False)
    fetched: bool


class OAuthStrategy:
    def __init__(
        self, credentials: OAuth | OAuthMTLS, *, skip_verify: bool, deps: AuthDeps
    ) -> None:
        self._deps = deps
        self._verify = not skip_verify
        self._flavour = flows.flavour(credentials)
        self._mtls_cert: ClientCert | None = (
            credentials.cert if isinstance(credentials, OAuthMTLS) else None
        )
        self._url = credentials.token_url
        self.key = flows.token_cache_key(deps.hmac_key, credentials)
        """The token-cache key; also the credential identity in the CSRF cache key."""
        self._cached: tuple[BearerToken, bytes] | None = None  # the last token and its field
        self._request: flows.PreparedRequest | None = None
        self._request_error = ""
        try:
            self._request = flows.token_request(credentials)
        except flows.FlowError as exc:
            self._request_error = exc.message

    @property
    def client_cert(self) -> ClientCert | None:
        return None  # the certificate of OAuthWithCert is for the token endpoint only

    async def token(self) -> BearerToken:
        value, fetched = await self._deps.token_cache.lookup(self.key, self._fetch)
        return BearerToken(value, fetched)

    def apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> object | None | Pending[object | None]:
        """The cached token, or (pending) one fetched for this request: `fetched` then
        tells the CSRF step that a rejection cannot be blamed on a stale entry."""
        if not authenticate:
            return None
        value = self._deps.token_cache.peek(self.key)
        if value is None:
            return Pending(self._fetch_and_apply(headers))
        cached = self._cached
        if cached is None or cached[0].value is not value:
            field = b"Bearer " + value.encode()
            set_header(headers, AUTHORIZATION, field)  # checks the new token once
            self._cached = (BearerToken(value, False), field)
            return self._cached[0]
        put_header(headers, AUTHORIZATION, cached[1])
        return cached[0]

    async def _fetch_and_apply(self, headers: Headers) -> object | None:
        token = await self.token()
        set_header(headers, AUTHORIZATION, b"Bearer " + token.value.encode())
        return token

    def invalidate(self, applied: object | None) -> None:
        if isinstance(applied, BearerToken):
            self._deps.token_cache.invalidate(self.key, applied.value)

    def _error(self, message: str) -> GatewayError:
        if self._mtls_cert is not None:
            return TokenErrorMTLS("Failed to get token: " + message)
        return TokenError(message)

    def _prepare_failed(self, exc: OSError) -> str:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
        if self._mtls_cert is not None:
            return f"Failed to prepare certificate, {reason}"
        return flows.request_failed(self._url, f"TLS setup failed: {reason}")

    async def _fetch(self) -> tuple[str, float | None]:
        deps = self._deps
        fields = {"flavour": self._flavour, "url": redact(self._url)}
        try:
            if self._request is None:
                raise self._error(self._request_error)
            sent_at = deps.clock()
            try:
                status, _, body = await deps.send(
                    self._request, verify=self._verify, cert=self._mtls_cert
                )
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                raise self._error(flows.request_failed(self._url, exc.message)) from None
            except OSError as setup_error:  # building the SSL context: key material, trust store
                raise self._error(self._prepare_failed(setup_error)) from None
            try:
                token, expires_in = flows.parse_token_response(self._url, status, body)
            except flows.FlowError as bad_response:
                raise self._error(bad_response.message) from None
        except GatewayError as failed:
            deps.metrics.token_fetch(self._flavour, "error")
            fields["error"] = failed.message
            log.warning("token request failed", extra={"fields": fields})
            raise
        deps.metrics.token_fetch(self._flavour, "ok")
        log.debug("token fetched", extra={"fields": {**fields, "expires_in": expires_in}})
        return token, flows.reuse_until(sent_at, expires_in, deps.token_default_ttl)
