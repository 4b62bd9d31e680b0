"""What the strategies share per process: the upstream client, TLS contexts and both caches.

Built once by the composition root and handed to `make_strategy` for every API, so tokens
and CSRF tokens are shared by both proxy listeners and survive registry snapshots.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from appgateway.auth.cache import SingleFlightCache
from appgateway.auth.flows import CsrfToken, PreparedRequest
from appgateway.metrics import Metrics
from appgateway.model import ClientCert, Headers
from appgateway.tls import TlsContexts
from appgateway.upstream import OutboundRequest, Upstream


@dataclass(frozen=True, slots=True)
class AuthDeps:
    upstream: Upstream
    tls: TlsContexts
    token_cache: SingleFlightCache[bytes, str]
    csrf_cache: SingleFlightCache[bytes, CsrfToken]
    proxy_timeout: float
    token_default_ttl: float
    metrics: Metrics
    hmac_key: bytes = field(repr=False)
    clock: Callable[[], float]

    async def send(
        self, req: PreparedRequest, *, verify: bool, cert: ClientCert | None
    ) -> tuple[int, Headers, bytes]:
        """One token or CSRF exchange, bounded by --proxy-timeout, over a pooled connection.

        The pool is looked up per call rather than kept: a registry change may have dropped
        it, and fetches are rare enough for the dictionary lookup not to matter. Raises
        UpstreamTimeout/UpstreamUnavailable; building the TLS context may raise ssl.SSLError.
        """
        target = req.target
        ctx = self.tls.get(verify, cert) if target.scheme == "https" else None
        fingerprint = cert.fingerprint if cert is not None else ""
        pool = self.upstream.pool(target, verify, fingerprint, ctx)
        outbound = OutboundRequest(req.method, target, req.path, list(req.headers), req.body)
        # Asking for a token or a CSRF token twice changes nothing at the server, so a
        # pooled connection that died on the way is replaced (even for the token POST).
        return await self.upstream.fetch(
            outbound, pool, deadline_s=self.proxy_timeout, replayable=True
        )


def make_deps(
    *,
    upstream: Upstream,
    tls: TlsContexts,
    metrics: Metrics,
    clock: Callable[[], float],
    proxy_timeout: float,
    token_default_ttl: float,
) -> AuthDeps:
    """Fresh caches that report lookups to `metrics`, keyed with a random per-process key.

    `clock` must be monotonic: token lifetimes are measured on it.
    """
    return AuthDeps(
        upstream=upstream,
        tls=tls,
        token_cache=SingleFlightCache(clock, lambda hit: metrics.cache_lookup("token", hit)),
        csrf_cache=SingleFlightCache(clock, lambda hit: metrics.cache_lookup("csrf", hit)),
        proxy_timeout=proxy_timeout,
        token_default_ttl=token_default_ttl,
        metrics=metrics,
        hmac_key=secrets.token_bytes(32),
        clock=clock,
    )
