from __future__ import annotations

import json

import pytest

from appgateway.errors import (
    BadRequest,
    CallerAuthUnavailable,
    CallerForbidden,
    CallerUnauthenticated,
    ConfigError,
    GatewayError,
    NotFound,
    NotReady,
    TokenError,
    TokenErrorMTLS,
    UpstreamTimeout,
    UpstreamUnavailable,
    render_json,
)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (
            404,
            "service with name orders not found",
            b'{"code":404,"error":"service with name orders not found"}\n',
        ),
        (503, "registry not loaded yet", b'{"code":503,"error":"registry not loaded yet"}\n'),
        (400, "a <b> & c", b'{"code":400,"error":"a \\u003cb\\u003e \\u0026 c"}\n'),
        (500, 'quote " and \\', b'{"code":500,"error":"quote \\" and \\\\"}\n'),
        (502, "", b'{"code":502,"error":""}\n'),
        (400, "caf\u00e9", '{"code":400,"error":"café"}\n'.encode()),
    ],
)
def test_render_json(status: int, message: str, expected: bytes) -> None:
    body = render_json(status, message)
    assert body == expected
    assert body.endswith(b"\n")
    assert json.loads(body) == {"code": status, "error": message}


@pytest.mark.parametrize(
    ("cls", "status", "json_body"),
    [
        (BadRequest, 400, True),
        (NotFound, 404, True),
        (ConfigError, 500, True),
        (TokenError, 502, True),
        (TokenErrorMTLS, 500, True),
        (NotReady, 503, True),
        (UpstreamUnavailable, 502, False),
        (UpstreamTimeout, 504, False),
        (CallerUnauthenticated, 407, True),
        (CallerForbidden, 403, True),
        (CallerAuthUnavailable, 503, True),
    ],
)
def test_error_classes(cls: type[GatewayError], status: int, json_body: bool) -> None:
    err = cls("boom <x>")
    assert err.status == status
    assert err.json_body is json_body
    assert err.message == "boom <x>"
    if json_body:
        assert err.body() == render_json(status, "boom <x>")
    else:
        assert err.body() == b""


def test_transport_errors_carry_metric_kind() -> None:
    assert UpstreamUnavailable("x").kind == "connect"
    assert UpstreamUnavailable("x", kind="tls").kind == "tls"
    assert UpstreamTimeout("x").kind == "timeout"


@pytest.mark.parametrize(
    ("cls", "headers"),
    [
        (GatewayError, ()),
        (NotFound, ()),
        (UpstreamUnavailable, ()),
        (CallerForbidden, ()),
        (CallerAuthUnavailable, ()),
        (CallerUnauthenticated, ((b"Proxy-Authenticate", b'Bearer realm="appgateway"'),)),
    ],
)
def test_response_headers_per_class(
    cls: type[GatewayError], headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    assert cls("x").response_headers == headers


@pytest.mark.parametrize(
    ("cls", "error_class"),
    [
        (CallerUnauthenticated, "caller_unauthenticated"),
        (CallerForbidden, "caller_forbidden"),
        (CallerAuthUnavailable, "caller_unavailable"),
    ],
)
def test_caller_errors_classify(cls: type[GatewayError], error_class: str) -> None:
    assert cls("no").classify() == error_class
