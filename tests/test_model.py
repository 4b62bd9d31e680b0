from __future__ import annotations

import dataclasses

import pytest

from appgateway.model import BasicAuth, ClientCert, OAuth, Target


def test_target_origin_uses_the_authority() -> None:
    target = Target("https", "h", 8443, "h:8443", "/api", "a=1")
    assert target.origin == "https://h:8443"
    assert Target("http", "h", 80, "h", "", "").origin == "http://h"


def test_objects_are_immutable() -> None:
    target = Target("http", "h", 80, "h", "", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.host = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    [
        ClientCert(b"-----BEGIN CERTIFICATE-----secret", b"-----BEGIN KEY-----secret", "fp"),
        BasicAuth("alice", "secret"),
        OAuth("https://t/token", "client", "secret"),
    ],
)
def test_repr_never_shows_secrets(value: object) -> None:
    assert "secret" not in repr(value)
