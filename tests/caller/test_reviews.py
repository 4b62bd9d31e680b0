"""TokenReview and SubjectAccessReview bodies, their answers and the reuse times, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from appgateway.caller.reviews import (
    ACCESS_REVIEWS,
    NEGATIVE_TTL_S,
    TOKEN_REVIEWS,
    Caller,
    Rejected,
    ReviewError,
    access_review,
    authenticated_until,
    decided_until,
    make_caller,
    parse_access_review,
    parse_permission_review,
    parse_token_review,
    permission_review,
    token_review,
)

SA = "system:serviceaccount:team-a:orders"


def test_paths() -> None:
    assert TOKEN_REVIEWS == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert ACCESS_REVIEWS == "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def test_token_review_body() -> None:
    assert token_review("t0k", "appgateway") == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "t0k", "audiences": ["appgateway"]},
    }


def _answer(status: Any, kind: str = "TokenReview") -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": kind, "status": status}


USER = {
    "username": SA,
    "uid": "u-1",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"],
    "extra": {
        "authentication.kubernetes.io/pod-name": ["orders-1"],
        "authentication.kubernetes.io/pod-uid": ["p-1"],
    },
}
CALLER = make_caller(
    SA,
    "u-1",
    ("system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"),
    (
        ("authentication.kubernetes.io/pod-name", ("orders-1",)),
        ("authentication.kubernetes.io/pod-uid", ("p-1",)),
    ),
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"authenticated": True, "user": USER, "audiences": ["appgateway"]}, CALLER),
        (
            {"authenticated": True, "user": {"username": "u"}, "audiences": ["x", "appgateway"]},
            make_caller("u", "", (), ()),
        ),
        (
            {"authenticated": False, "error": "[invalid bearer token, Token has expired.]"},
            Rejected("[invalid bearer token, Token has expired.]"),
        ),
        ({"authenticated": False}, Rejected("not authenticated")),
        ({}, Rejected("not authenticated")),
        ({"authenticated": "true", "user": USER}, Rejected("not authenticated")),
        ({"error": "line\nbreak\x00"}, Rejected("line break ")),
        ({"error": "e" * 1000}, Rejected("e" * 300)),
        # authenticated, but the audience is not confirmed: an audience-unaware authenticator
        (
            {"authenticated": True, "user": USER},
            Rejected("the API server did not confirm the audience 'appgateway'"),
        ),
        (
            {"authenticated": True, "user": USER, "audiences": ["other"]},
            Rejected("the API server did not confirm the audience 'appgateway'"),
        ),
        (
            {"authenticated": True, "user": {"username": ""}, "audiences": ["appgateway"]},
            Rejected("the token has no user name"),
        ),
        (
            {"authenticated": True, "user": {"uid": "x"}, "audiences": ["appgateway"]},
            Rejected("the token has no user name"),
        ),
    ],
)
def test_parse_token_review(status: Any, expected: Caller | Rejected) -> None:
    assert parse_token_review(_answer(status), "appgateway") == expected


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "Status", "status": "Failure"}, "not a TokenReview"),
        ({}, "not a TokenReview"),
        (_answer(None), "has no status"),
        (_answer([1]), "has no status"),
        (_answer({"authenticated": True, "audiences": ["appgateway"]}), "has no user"),
        (
            _answer(
                {
                    "authenticated": True,
                    "audiences": ["appgateway"],
                    "user": {"username": "u", "groups": "g"},
                }
            ),
            "groups is not a list of strings",
        ),
        (
            _answer(
                {
                    "authenticated": True,
                    "audiences": ["appgateway"],
                    "user": {"username": "u", "groups": [1]},
                }
            ),
            "groups is not a list of strings",
        ),
        (
            _answer(
                {
                    "authenticated": True,
                    "audiences": ["appgateway"],
                    "user": {"username": "u", "extra": []},
                }
            ),
            "extra is not a mapping",
        ),
        (
            _answer(
                {
                    "authenticated": True,
                    "audiences": ["appgateway"],
                    "user": {"username": "u", "extra": {"k": "v"}},
                }
            ),
            "extra is not a list of strings",
        ),
    ],
)
def test_parse_token_review_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        parse_token_review(doc, "appgateway")


def test_caller_key_covers_every_field() -> None:
    base = make_caller("u", "1", ("g",), (("k", ("v",)),))
    variants = [
        make_caller("u2", "1", ("g",), (("k", ("v",)),)),
        make_caller("u", "2", ("g",), (("k", ("v",)),)),
        make_caller("u", "1", ("g", "h"), (("k", ("v",)),)),
        make_caller("u", "1", ("g",), (("k", ("w",)),)),
        make_caller("u", "1", ("g",), ()),
        make_caller("u", "1", (), (("k", ("v",)),)),
    ]
    assert base.key == make_caller("u", "1", ("g",), (("k", ("v",)),)).key
    assert len({base.key, *(v.key for v in variants)}) == len(variants) + 1
    assert "key" not in repr(base)


def test_extra_order_does_not_matter() -> None:
    one = {
        "authenticated": True,
        "audiences": ["a"],
        "user": {"username": "u", "extra": {"b": ["1"], "a": ["2"]}},
    }
    two = {
        "authenticated": True,
        "audiences": ["a"],
        "user": {"username": "u", "extra": {"a": ["2"], "b": ["1"]}},
    }
    first, second = parse_token_review(_answer(one), "a"), parse_token_review(_answer(two), "a")
    assert isinstance(first, Caller) and isinstance(second, Caller)
    assert first.key == second.key


@pytest.mark.parametrize(
    ("caller", "spec"),
    [
        (
            CALLER,
            {
                "resourceAttributes": {
                    "group": "applicationconnector.kyma-project.io",
                    "resource": "applications",
                    "name": "erp",
                    "verb": "use",
                },
                "user": SA,
                "groups": list(CALLER.groups),
                "uid": "u-1",
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["orders-1"],
                    "authentication.kubernetes.io/pod-uid": ["p-1"],
                },
            },
        ),
        (
            make_caller("alice", "", (), ()),
            {
                "resourceAttributes": {
                    "group": "applicationconnector.kyma-project.io",
                    "resource": "applications",
                    "name": "erp",
                    "verb": "use",
                },
                "user": "alice",
                "groups": [],
            },
        ),
    ],
)
def test_access_review_body(caller: Caller, spec: dict[str, Any]) -> None:
    assert access_review(caller, "erp") == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("status", "allowed"),
    [
        ({"allowed": True, "reason": "RBAC: allowed by ClusterRoleBinding"}, True),
        ({"allowed": False}, False),
        ({"allowed": False, "denied": True}, False),
        ({"allowed": "true"}, False),  # only an explicit true allows
        ({}, False),
        ({"allowed": False, "evaluationError": "boom"}, False),
    ],
)
def test_parse_access_review(status: Any, allowed: bool) -> None:
    assert parse_access_review(_answer(status, "SubjectAccessReview")) is allowed


@pytest.mark.parametrize(
    "doc", [{"kind": "Status"}, _answer(None, "SubjectAccessReview"), _answer({"allowed": True})]
)
def test_parse_access_review_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(ReviewError):
        parse_access_review(doc)


def test_permission_review() -> None:
    assert permission_review("authentication.k8s.io", "tokenreviews") == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "group": "authentication.k8s.io",
                "resource": "tokenreviews",
                "verb": "create",
            }
        },
    }
    assert parse_permission_review(_answer({"allowed": True}, "SelfSubjectAccessReview"))
    assert not parse_permission_review(_answer({"allowed": False}, "SelfSubjectAccessReview"))


@pytest.mark.parametrize(
    ("sent_at", "wall", "ttl", "expiry", "until"),
    [
        (100.0, 1_700_000_000.0, 300.0, None, 400.0),  # not a JWT: the TTL
        (100.0, 1_700_000_000.0, 300.0, 1_700_003_600.0, 400.0),  # expires later than the TTL
        (100.0, 1_700_000_000.0, 300.0, 1_700_000_060.0, 160.0),  # expires within the TTL
        (100.0, 1_700_000_000.0, 300.0, 1_700_000_000.0, 100.0),  # expires now: not reused
        (100.0, 1_700_000_000.0, 300.0, 1_600_000_000.0, 100.0 - 100_000_000),  # long expired
        (0.0, 50.0, 1.0, 1e18, 1.0),
    ],
)
def test_authenticated_until(
    sent_at: float, wall: float, ttl: float, expiry: float | None, until: float
) -> None:
    assert authenticated_until(sent_at, wall, ttl, expiry) == until


@pytest.mark.parametrize(
    ("ttl", "positive", "until"),
    [
        (300.0, True, 1300.0),
        (300.0, False, 1000.0 + NEGATIVE_TTL_S),
        (2.0, True, 1002.0),
        (2.0, False, 1002.0),  # a no is never kept longer than a yes
    ],
)
def test_decided_until(ttl: float, positive: bool, until: float) -> None:
    assert NEGATIVE_TTL_S == 10.0
    assert decided_until(1000.0, ttl, positive) == until
