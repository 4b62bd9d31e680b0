"""TokenReview and SubjectAccessReview as data, and how long their answers hold. [pure]

Authentication asks the API server who a token belongs to (for our audience only), then
authorization asks whether that identity may `use` the Application, as RBAC decides: so a
platform team grants access with an ordinary ClusterRole, and `kubectl auth can-i use
applications/erp --as=...` answers the same question the gateway asks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
GROUP: Final = "applicationconnector.kyma-project.io"
RESOURCE: Final = "applications"
VERB: Final = "use"

NEGATIVE_TTL_S: Final = 10.0
"""A rejected token or a denied access is asked about again after this (or the TTL, if
shorter): long enough to spare the API server a retry storm, short enough that a new
binding soon works."""

MAX_REASON: Final = 300

Json = dict[str, Any]


class ReviewError(ValueError):
    """The API server's answer is not a review result: treated as unavailable, not cached."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated identity as the TokenReview gave it, for the access review.

    `key` is a digest of all four fields: two identities that differ in any of them (a group
    added) are decided separately, and the authorization cache hashes 32 bytes per request
    rather than the groups and extra values.
    """

    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]
    key: bytes = field(repr=False, compare=False)


def make_caller(
    name: str, uid: str, groups: tuple[str, ...], extra: tuple[tuple[str, tuple[str, ...]], ...]
) -> Caller:
    canonical = json.dumps([name, uid, groups, extra], separators=(",", ":")).encode()
    return Caller(name, uid, groups, extra, hashlib.sha256(canonical).digest())


@dataclass(frozen=True, slots=True)
class Rejected:
    """The token was reviewed and not accepted; `reason` is for the log (never the token)."""

    reason: str


def token_review(token: str, audience: str) -> Json:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }


def _status(doc: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    if doc.get("kind") != kind:
        raise ReviewError(f"the answer is not a {kind}")
    status = doc.get("status")
    if not isinstance(status, Mapping):
        raise ReviewError(f"the {kind} answer has no status")
    return status


def _reason(text: object, default: str) -> str:
    if not isinstance(text, str) or not text:
        return default
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:MAX_REASON]


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReviewError(f"the TokenReview's {what} is not a list of strings")
    return tuple(value)


def parse_token_review(doc: Mapping[str, Any], audience: str) -> Caller | Rejected:
    """The identity, or why the token was not accepted. Raises ReviewError for an answer
    that is no TokenReview result.

    The API server must name our audience among `status.audiences`: an authenticator that
    ignores audiences would otherwise accept a token minted for some other service.
    """
    status = _status(doc, "TokenReview")
    if status.get("authenticated") is not True:
        return Rejected(_reason(status.get("error"), "not authenticated"))
    audiences = status.get("audiences")
    if not isinstance(audiences, list) or audience not in audiences:
        return Rejected(f"the API server did not confirm the audience {audience!r}")
    user = status.get("user")
    if not isinstance(user, Mapping):
        raise ReviewError("the TokenReview has no user")
    name = user.get("username")
    if not isinstance(name, str) or not name:
        return Rejected("the token has no user name")
    uid = user.get("uid")
    extra_doc = user.get("extra")
    if extra_doc is not None and not isinstance(extra_doc, Mapping):
        raise ReviewError("the TokenReview's extra is not a mapping")
    extra = tuple(sorted((str(k), _strings(v, "extra")) for k, v in (extra_doc or {}).items()))
    groups = _strings(user.get("groups"), "groups")
    return make_caller(name, uid if isinstance(uid, str) else "", groups, extra)


def access_review(caller: Caller, application: str) -> Json:
    """May `caller` `use` the Application (its credentials)? Asked with everything the
    TokenReview said about the caller, as the API server itself would authorize it."""
    spec: Json = {
        "resourceAttributes": {
            "group": GROUP,
            "resource": RESOURCE,
            "name": application,
            "verb": VERB,
        },
        "user": caller.name,
        "groups": list(caller.groups),
    }
    if caller.uid:
        spec["uid"] = caller.uid
    if caller.extra:
        spec["extra"] = {k: list(v) for k, v in caller.extra}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def parse_access_review(doc: Mapping[str, Any]) -> bool:
    """Allowed only on an explicit `allowed: true` (fail closed). Raises ReviewError."""
    return _status(doc, "SubjectAccessReview").get("allowed") is True


def authenticated_until(sent_at: float, wall_now: float, ttl: float, expiry: float | None) -> float:
    """Reuse an accepted token until `ttl` after the review was sent, but never past the
    token's own expiry (`expiry`, Unix seconds; `wall_now` is the Unix time at `sent_at`)."""
    until = sent_at + ttl
    if expiry is not None:
        until = min(until, sent_at + (expiry - wall_now))
    return until


def decided_until(sent_at: float, ttl: float, positive: bool) -> float:
    """Reuse a yes for `ttl`, a no for NEGATIVE_TTL_S at most."""
    return sent_at + (ttl if positive else min(NEGATIVE_TTL_S, ttl))


SELF_REVIEWS: Final = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
NEEDED: Final = (
    ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
)
"""What the gateway itself must be allowed to `create` (the `system:auth-delegator` role)."""


def permission_review(group: str, resource: str) -> Json:
    """May the gateway itself create `resource`? Asked once at start, to name a missing
    binding in the log before the first caller gets a 503 for it."""
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": "create"}},
    }


def parse_permission_review(doc: Mapping[str, Any]) -> bool:
    return _status(doc, "SelfSubjectAccessReview").get("allowed") is True
