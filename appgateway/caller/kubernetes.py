"""`--caller-auth kubernetes`: callers present Kubernetes tokens; RBAC decides.

Per request: who is the token (TokenReview, for `--caller-audience`), and may that identity
`use` the Application (SubjectAccessReview). Both answers are cached, so a steady caller costs
two dictionary lookups and no API call: a token by an HMAC of it, until the token expires and
at most `--caller-cache-ttl`; an access decision by (identity, Application) for the same TTL.
A keep-alive caller's connection remembers its last allowed decision until the earlier of
the two expiries (bearer.Remembered), so its next requests skip both lookups.
Noes are kept 10 s. Concurrent misses of one key share one review (single flight), and both
caches are bounded. When the API server cannot answer, cached decisions keep working and
everything else fails closed (503): credentials are never handed out unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from appgateway.auth.cache import SingleFlightCache
from appgateway.caller import bearer, reviews
from appgateway.caller.outcome import Outcomes, forbidden
from appgateway.caller.reviews import Caller, Json, Rejected
from appgateway.config import Settings, kubernetes_service_address
from appgateway.errors import CallerAuthUnavailable, CallerUnauthenticated, GatewayError
from appgateway.flow import Pending
from appgateway.metrics import Metrics
from appgateway.registry.kubeclient import ApiError, KubeClient, load_auth

log = logging.getLogger("appgateway.caller")

REVIEW_TIMEOUT_S: Final = 5.0
"""A review that takes longer is a 503: the caller is waiting, and so are its followers."""
MAX_ENTRIES: Final = 10_000
"""Per cache. Callers choose the keys (any token is looked up), so the caches are bounded."""
LOG_INTERVAL_S: Final = 10.0
UNAVAILABLE: Final = "caller authorization is unavailable: the Kubernetes API did not answer"

AccessKey = tuple[bytes, str]


class KubernetesCallerAuth:
    """TokenReview + SubjectAccessReview with caches, over its own API connection."""

    def __init__(
        self,
        client: KubeClient,
        *,
        audience: str,
        ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
        timeout: float = REVIEW_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.audience = audience
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        self._timeout = timeout
        self._token_key = bearer.TokenKeys(secrets.token_bytes(32))
        self._outcomes = Outcomes(metrics)
        self._count_token = metrics.cache_counter("caller_token")
        self._count_access = metrics.cache_counter("caller_access")
        self._tokens: SingleFlightCache[bytes, Caller | Rejected] = SingleFlightCache(
            clock, self._count_token, max_entries=max_entries
        )
        self._access: SingleFlightCache[AccessKey, bool] = SingleFlightCache(
            clock, self._count_access, max_entries=max_entries
        )
        self._logged_at = -1e18
        self._unlogged = 0
        self._check: asyncio.Task[list[str]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> KubernetesCallerAuth:
        """Same API server and credentials as the registry (`--kubeconfig` or in-cluster),
        over a connection pool of its own: reviews never queue behind the registry's watches.
        """
        auth = load_auth(settings.kubeconfig, kubernetes_service_address())
        return cls(
            KubeClient(auth),
            audience=settings.caller_audience,
            ttl=settings.caller_cache_ttl,
            metrics=metrics,
        )

    async def start(self) -> None:
        await self.client.open()
        fields = {"mode": "kubernetes", "audience": self.audience, "cache_ttl_s": self.ttl}
        log.info("caller authorization on", extra={"fields": fields})
        self._check = asyncio.create_task(self.check_permissions(), name="caller-auth-check")

    async def stop(self) -> None:
        task, self._check = self._check, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.client.close()

    def authorize(
        self,
        proxy_authorization: bytes | None,
        application: str,
        memo: bearer.Remembers | None = None,
    ) -> str | Pending[str]:
        """The caller's identity name when it may use `application`'s credentials; pending
        only when a review is needed (both answers cached: at once)."""
        recalled = bearer.recall(memo, proxy_authorization, application, self, self._clock())
        if recalled is not None:
            self._count_token(True)  # the two answers it was made of, still cached
            self._count_access(True)
            self._outcomes.allowed.inc()
            return recalled.name
        try:
            token = bearer.presented_token(proxy_authorization)
            key = self._token_key(token)
            reviewed = self._tokens.peek_entry(key)
            if reviewed is None:
                bearer.check_token(token)
                return Pending(self._authorize_after_review(token, key, None, application))
            caller, until = reviewed
            if isinstance(caller, Rejected):
                raise CallerUnauthenticated(bearer.NOT_ACCEPTED)
            access = self._access.peek_entry((caller.key, application))
            if access is None:
                return Pending(self._authorize_after_review(token, key, caller, application))
            name = self._decided(caller, access[0], application)
        except GatewayError as error:
            self._outcomes.failed(error)
            raise
        if until is not None and access[1] is not None:  # the caches keep nothing forever
            until = min(until, access[1])
            bearer.remember(memo, proxy_authorization, application, name, self, until)
        return name

    async def _authorize_after_review(
        self, token: bytes, key: bytes, reviewed: Caller | Rejected | None, application: str
    ) -> str:
        try:
            if reviewed is None:
                reviewed = await self._tokens.get(key, lambda: self._review_token(token))
            allowed = False
            if isinstance(reviewed, Caller):
                caller = reviewed
                allowed = await self._access.get(
                    (caller.key, application), lambda: self._review_access(caller, application)
                )
            return self._decided(reviewed, allowed, application)
        except GatewayError as error:
            self._outcomes.failed(error)
            raise

    def _decided(self, reviewed: Caller | Rejected, allowed: bool, application: str) -> str:
        """The decision once both answers are in (raises; counted by the caller)."""
        if isinstance(reviewed, Rejected):
            raise CallerUnauthenticated(bearer.NOT_ACCEPTED)
        if not allowed:
            raise forbidden(reviewed.name, application)
        self._outcomes.allowed.inc()
        return reviewed.name

    async def _review_token(self, token: bytes) -> tuple[Caller | Rejected, float]:
        text = token.decode("ascii")  # check_token allowed only token68 characters
        sent_at, wall = self._clock(), self._wall()
        doc = await self._create(reviews.TOKEN_REVIEWS, reviews.token_review(text, self.audience))
        try:
            result = reviews.parse_token_review(doc, self.audience)
        except reviews.ReviewError as exc:
            raise self._unavailable("tokenreviews", str(exc)) from None
        if isinstance(result, Rejected):
            # A reason names the check that failed (expired, audience, deleted account),
            # never the token; redacted all the same in case an authenticator quotes it.
            reason = result.reason.replace(text, "<token>")
            log.info("caller token rejected", extra={"fields": {"reason": reason}})
            return result, reviews.decided_until(sent_at, self.ttl, False)
        expiry = bearer.jwt_expiry(token)
        return result, reviews.authenticated_until(sent_at, wall, self.ttl, expiry)

    async def _review_access(self, caller: Caller, application: str) -> tuple[bool, float]:
        sent_at = self._clock()
        doc = await self._create(reviews.ACCESS_REVIEWS, reviews.access_review(caller, application))
        try:
            allowed = reviews.parse_access_review(doc)
        except reviews.ReviewError as exc:
            raise self._unavailable("subjectaccessreviews", str(exc)) from None
        return allowed, reviews.decided_until(sent_at, self.ttl, allowed)

    async def _create(self, path: str, doc: Json) -> Json:
        resource = path.rsplit("/", 1)[-1]
        try:
            return await self.client.create(path, doc, deadline_s=self._timeout)
        except ApiError as exc:
            if exc.status == 401:  # our own token: read the file again before the next call
                self.client.token_expired()
            detail = f"{exc.status} {exc.reason}: {exc.message}" if exc.reason else str(exc)
            token = doc["spec"].get("token") if resource == "tokenreviews" else None
            if isinstance(token, str) and token:
                detail = detail.replace(token, "<token>")
            raise self._unavailable(resource, detail) from None
        except TimeoutError:
            raise self._unavailable(resource, f"no answer within {self._timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(resource, f"{type(exc).__name__}: {exc}") from None

    def _unavailable(self, resource: str, detail: str) -> CallerAuthUnavailable:
        """Log (one line per LOG_INTERVAL_S, with how many were not logged) and make the 503."""
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL_S:
            fields = {"review": resource, "error": detail[:500], "failures": self._unlogged}
            log.warning("caller authorization unavailable", extra={"fields": fields})
            self._logged_at = now
            self._unlogged = 0
        return CallerAuthUnavailable(UNAVAILABLE)

    async def check_permissions(self) -> list[str]:
        """Ask the API server once whether the gateway may create both reviews; log an error
        naming the fix if not. Returns the resources it may not create (empty when it may,
        or when the API server could not tell)."""
        missing: list[str] = []
        for group, resource in reviews.NEEDED:
            try:
                answer = await self.client.create(
                    reviews.SELF_REVIEWS,
                    reviews.permission_review(group, resource),
                    deadline_s=self._timeout,
                )
                allowed = reviews.parse_permission_review(answer)
            except (ApiError, reviews.ReviewError, aiohttp.ClientError, OSError, TimeoutError):
                return []  # unknown now; failing reviews will say more
            if not allowed:
                missing.append(f"{resource}.{group}")
        if missing:
            fields = {
                "missing": missing,
                "fix": "bind the gateway's ServiceAccount to the ClusterRole "
                "system:auth-delegator (deploy/caller-auth)",
            }
            log.error("the gateway may not review callers", extra={"fields": fields})
        return missing
