"""Resolving one entry against its Secrets, in parts: the request-parameter JSON, the header
checks and user-info in a target URL. Whole Applications are resolved in test_snapshot.py."""

from __future__ import annotations

import pytest

from appgateway.model import ParamMap
from appgateway.registry.resolve import _APIError, _check_headers, _has_userinfo, _param_map

FIELD = "spec.services[0].entries[0].requestParametersSecretName"
PREFIX = "failed to read request parameters: "


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ()),
        (b"", ()),
        (b"  \n", ()),
        (b"null", ()),
        (b'{"X-A": ["1", "2"], "X-B": null}', (("X-A", ("1", "2")),)),
        (b'{"lang": []}', (("lang", ()),)),
    ],
)
def test_param_map(raw: bytes | None, expected: ParamMap) -> None:
    assert _param_map(raw, "headers", FIELD, PREFIX) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff", "the value is not UTF-8 text"),
        (
            b"{",
            "invalid JSON at line 1, column 2: Expecting property name enclosed in double quotes",
        ),
        (b"[1]", "want a JSON object that maps names to arrays of strings"),
        (b'{"a": "x"}', "the value of 'a' is not an array of strings"),
        (b'{"a": [1]}', "the value of 'a' is not an array of strings"),
        (b"[" * 100_000, "invalid JSON: nested too deeply"),
    ],
)
def test_param_map_errors_name_the_field(raw: bytes, reason: str) -> None:
    with pytest.raises(_APIError) as info:
        _param_map(raw, "headers", FIELD, PREFIX)
    assert info.value.field == FIELD
    assert info.value.message == f"{PREFIX}Failed to unmarshal headers, {reason}"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ((("X-Ok", ("v",)),), None),
        ((("X Bad", ("v",)),), "invalid header name 'X Bad'"),
        ((("X-A", ("a\r\nX-Injected: 1",)),), "header 'X-A' has a value with CR, LF or NUL"),
        ((("X-A", ("ok", "a\x00b")),), "header 'X-A' has a value with CR, LF or NUL"),
    ],
)
def test_check_headers(headers: ParamMap, reason: str | None) -> None:
    if reason is None:
        _check_headers(headers, FIELD, PREFIX)
        return
    with pytest.raises(_APIError) as info:
        _check_headers(headers, FIELD, PREFIX)
    assert info.value.message == f"{PREFIX}Failed to unmarshal headers, {reason}"


@pytest.mark.parametrize(
    ("url", "userinfo"),
    [
        ("https://h/x", False),
        ("https://u:p@h/x", True),
        ("https://h/x@y", False),
        ("https://h?x=a@b", False),
        ("https://h#a@b", False),
        ("h@x", False),
    ],
)
def test_has_userinfo(url: str, userinfo: bool) -> None:
    assert _has_userinfo(url) is userinfo
