"""One error hierarchy; each class carries the HTTP status the caller sees.

Gateway-made errors have the JSON body of the spec; transport failures and timeouts
have an empty body (`json_body = False`).
"""

from __future__ import annotations

import json
from typing import ClassVar, Final

JSON_CONTENT_TYPE: Final = b"application/json;charset=UTF-8"


def render_json(status: int, message: str) -> bytes:
    """`{"code":N,"error":"..."}` plus newline, with <, > and & escaped as Go does."""
    text = json.dumps({"code": status, "error": message}, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode() + b"\n"


class GatewayError(Exception):
    status: ClassVar[int] = 500
    json_body: ClassVar[bool] = True
    error_class: ClassVar[str] = "internal"  # the access log's short, bounded error category
    response_headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()
    """Fields the status needs besides the body's (a 407 must say how to authenticate:
    RFC 9110 §15.5.8); constant per class, so no caller input can reach a response head."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def classify(self) -> str:
        """A short, bounded category for the access log (never the message itself)."""
        return self.error_class

    def body(self) -> bytes:
        return render_json(self.status, self.message) if self.json_body else b""


class BadRequest(GatewayError):
    status = 400
    error_class = "bad_request"


class BodyTooSlow(GatewayError):
    """The caller sends its request body slower than `--body-min-rate`."""

    status = 408
    error_class = "body_too_slow"


class LoopDetected(GatewayError):
    """The request already passed this gateway (its Via pseudonym): a `targetUrl` that
    points back at the gateway would otherwise multiply one request without end."""

    status = 508
    error_class = "loop"


class CallerGone(GatewayError):
    """The caller left (or stopped reading or sending past the idle timeout). Nothing is sent
    to anyone; the access line shows the conventional 499."""

    status = 499
    error_class = "caller_gone"


class NotFound(GatewayError):
    status = 404
    error_class = "not_found"


class ConfigError(GatewayError):
    """The API's configuration is unusable (Secret, parameters, certificate, URL)."""

    status = 500
    error_class = "config"


class TokenError(GatewayError):
    """The OAuth token or CSRF endpoint failed."""

    status = 502
    error_class = "token"


class TokenErrorMTLS(GatewayError):
    """OAuthWithCert failures are 500, as in Kyma."""

    status = 500
    error_class = "token"


class NotReady(GatewayError):
    status = 503
    error_class = "not_ready"


class UpstreamUnavailable(GatewayError):
    """The target could not be reached or spoke broken HTTP. `kind` feeds the metrics."""

    status = 502
    json_body = False

    def __init__(self, message: str = "", kind: str = "connect") -> None:
        super().__init__(message)
        self.kind = kind

    def classify(self) -> str:
        return "upstream_" + self.kind


class UpstreamTimeout(GatewayError):
    status = 504
    json_body = False

    def __init__(self, message: str = "", kind: str = "timeout") -> None:
        super().__init__(message)
        self.kind = kind

    def classify(self) -> str:
        return "upstream_" + self.kind


PROXY_AUTHENTICATE: Final = (b"Proxy-Authenticate", b'Bearer realm="appgateway"')


class CallerUnauthenticated(GatewayError):
    """`--caller-auth`: the caller's Proxy-Authorization is missing, malformed, or its token
    is unknown, expired or meant for another audience. The message never holds the token."""

    status = 407
    error_class = "caller_unauthenticated"
    response_headers = (PROXY_AUTHENTICATE,)


class CallerForbidden(GatewayError):
    """`--caller-auth`: the caller is known but may not use this Application's credentials."""

    status = 403
    error_class = "caller_forbidden"


class CallerAuthUnavailable(GatewayError):
    """`--caller-auth`: the identity backend (the API server) cannot answer and nothing is
    cached: fail closed rather than hand out credentials unchecked."""

    status = 503
    error_class = "caller_unavailable"
