"""The OAuth client-credentials and CSRF exchanges as data: requests, responses, keys. [pure]

Everything here is decided without I/O so that the exact bytes on the wire, every failure
message and the cache-key rules can be checked with tables (behaviour.md §5.2, §6, §7).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from appgateway.headers import add_parameter_headers, get_header, lower_name
from appgateway.model import ClientCert, Headers, OAuth, OAuthMTLS, ParamMap, Target
from appgateway.urls import TargetURLError, form_encode, merge_query, parse_target, redact

MIN_MARGIN_S = 2.0
MARGIN_FRACTION = 0.1
MAX_LIFETIME_S = 10 * 365 * 86400.0
"""A larger `expires_in` is treated as this, so that absurd values cannot overflow a float."""

_UNMARSHAL = "failed to unmarshal token response body: "

_HEADER_SAFE = re.compile(r"[^\x00-\x1f\x7f]+")
"""No control characters: a token goes out in a header field (UTF-8 text is relayed)."""

_WIRE_SAFE = string.punctuation
"""Configured URLs go out as written; only spaces, controls and non-ASCII are escaped."""


class FlowError(ValueError):
    """A token or CSRF exchange failed; `message` is the text of behaviour.md §11."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One token or CSRF request, ready for the upstream client (Host included)."""

    url: str
    target: Target
    method: bytes
    path: bytes
    headers: Headers = field(repr=False)
    body: bytes | None = field(repr=False)

    @property
    def redacted_url(self) -> str:
        return redact(self.url)


@dataclass(frozen=True, slots=True)
class CsrfToken:
    """A fetched CSRF token and the `name=value` cookies that came with it."""

    token: bytes = field(repr=False)
    cookies: tuple[bytes, ...] = field(repr=False)


def flavour(credentials: OAuth | OAuthMTLS) -> str:
    return "oauth" if isinstance(credentials, OAuth) else "oauth-mtls"


def request_failed(url: str, reason: str) -> str:
    return f"failed to make a request to '{redact(url)}': {reason}"


def bad_status(url: str, status: int) -> str:
    return f"incorrect response code '{status}' while getting token from {redact(url)}"


def basic_authorization(user: str, password: str) -> bytes:
    """`Basic base64(user ":" password)` over the raw UTF-8 bytes, never form-encoded."""
    return b"Basic " + base64.b64encode(user.encode() + b":" + password.encode())


def _parse(url: str) -> tuple[Target, bytes]:
    try:
        target = parse_target(url)
    except TargetURLError as exc:
        raise FlowError(request_failed(url, exc.reason)) from None
    return target, quote(target.path or "/", safe=_WIRE_SAFE).encode()


def token_request(credentials: OAuth | OAuthMTLS) -> PreparedRequest:
    """The client-credentials request of behaviour.md §5.2.

    The Secret's `queryParameters` are added as for an API request (§3.3) and its `headers`
    only where the gateway has not set the field already.
    """
    url = credentials.token_url
    target, path = _parse(url)
    query = merge_query(target.query, "", credentials.query)
    if query:
        path += b"?" + quote(query, safe=_WIRE_SAFE).encode()
    headers: Headers = [(b"Host", target.authority.encode())]
    body = "client_id=" + form_encode(credentials.client_id)
    if isinstance(credentials, OAuth):
        auth = basic_authorization(credentials.client_id, credentials.client_secret)
        headers.append((b"Authorization", auth))
        body += "&client_secret=" + form_encode(credentials.client_secret)
    body += "&grant_type=client_credentials"
    headers.append((b"Content-Type", b"application/x-www-form-urlencoded"))
    try:
        add_parameter_headers(headers, credentials.headers)
    except ValueError as exc:
        raise FlowError(request_failed(url, str(exc))) from None
    return PreparedRequest(url, target, b"POST", path, headers, body.encode())


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> object:
    raise _BadConstant(f"invalid JSON: {name} is not allowed")


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        reason = "invalid JSON: not UTF-8"
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON: {exc.msg} at offset {exc.pos}"
    except _BadConstant as bad:
        reason = str(bad)
    except ValueError:
        reason = "invalid JSON: number too long"
    except RecursionError:
        reason = "invalid JSON: nested too deeply"
    raise FlowError(_UNMARSHAL + reason)


def parse_token_response(url: str, status: int, body: bytes) -> tuple[str, int | None]:
    """The access token and `expires_in` (None when absent) of a successful response."""
    if status != 200:
        raise FlowError(bad_status(url, status))
    data = _load_json(body)
    if not isinstance(data, dict):
        raise FlowError(_UNMARSHAL + "not a JSON object")
    if "access_token" not in data:
        raise FlowError(_UNMARSHAL + "access_token is missing")
    token = data["access_token"]
    if not isinstance(token, str):
        raise FlowError(_UNMARSHAL + "access_token is not a string")
    if not token:
        raise FlowError(_UNMARSHAL + "access_token is empty")
    if not _HEADER_SAFE.fullmatch(token):
        # It goes into `Authorization: Bearer ...`: a CR or LF there would be a header
        # injection, and the request could never be sent (nor should the token be cached).
        raise FlowError(_UNMARSHAL + "access_token has characters not allowed in a header")
    if "expires_in" not in data:
        return token, None
    expires_in = data["expires_in"]
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise FlowError(_UNMARSHAL + "expires_in is not an integer")
    return token, expires_in


def reuse_until(sent_at: float, expires_in: int | None, default_ttl: float) -> float:
    """When to stop reusing a token: `sent_at + L - max(2 s, 10 % of L)`.

    Refreshing ahead of the real expiry covers clock skew and the time a request spends in
    flight. A result not after `sent_at` means the token serves only the request that asked.
    """
    lifetime = default_ttl if expires_in is None else float(min(expires_in, MAX_LIFETIME_S))
    return sent_at + lifetime - max(MIN_MARGIN_S, MARGIN_FRACTION * lifetime)


def csrf_request(url: str, authorization: bytes | None) -> PreparedRequest:
    """The CSRF fetch of behaviour.md §6.1: fixed headers plus the credential, nothing else."""
    target, path = _parse(url)
    if target.query:
        path += b"?" + quote(target.query, safe=_WIRE_SAFE).encode()
    headers: Headers = [
        (b"Host", target.authority.encode()),
        (b"X-Csrf-Token", b"fetch"),
        (b"Accept", b"*/*"),
        (b"Cache-Control", b"no-cache"),
    ]
    if authorization is not None:
        headers.append((b"Authorization", authorization))
    return PreparedRequest(url, target, b"GET", path, headers, None)


def parse_csrf_response(url: str, status: int, headers: Headers) -> CsrfToken:
    """Only 200 counts; a missing `X-Csrf-Token` is an empty token (as in Kyma)."""
    if status != 200:
        raise FlowError(bad_status(url, status))
    token = get_header(headers, b"x-csrf-token") or b""
    cookies: list[bytes] = []
    for name, value in headers:
        if lower_name(name) != b"set-cookie":
            continue
        pair = value.split(b";", 1)[0].strip()
        if b"=" in pair and pair.split(b"=", 1)[0].strip():
            cookies.append(pair)
    return CsrfToken(token, tuple(cookies))


def _cookie_name(pair: bytes) -> bytes:
    return pair.split(b"=", 1)[0].strip()


def merge_cookies(fetched: Sequence[bytes], caller: Headers) -> bytes:
    """One `Cookie` value: the fetched cookies, then the caller's cookies of other names.

    When the fetch set one name twice, the later value wins in the earlier place, as a
    browser's cookie jar would do. Every `Cookie` field of the caller is read, in order.
    """
    merged: dict[bytes, bytes] = {}
    for pair in fetched:
        merged[_cookie_name(pair)] = pair
    parts = list(merged.values())
    for name, value in caller:
        if lower_name(name) != b"cookie":
            continue
        for piece in value.split(b";"):
            piece = piece.strip()
            if piece and _cookie_name(piece) not in merged:
                parts.append(piece)
    return b"; ".join(parts)


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _params(params: ParamMap) -> Iterable[bytes]:
    yield str(len(params)).encode()
    for name, values in params:
        yield name.encode()
        yield str(len(values)).encode()
        yield from (value.encode() for value in values)


def _digest(hmac_key: bytes, parts: Iterable[bytes]) -> bytes:
    """HMAC-SHA-256 over length-prefixed fields: no two inputs share an encoding."""
    return hmac.new(hmac_key, b"".join(_field(p) for p in parts), hashlib.sha256).digest()


def _cert_parts(cert: ClientCert) -> tuple[bytes, bytes]:
    return hashlib.sha256(cert.crt_pem).digest(), hashlib.sha256(cert.key_pem).digest()


def token_cache_key(hmac_key: bytes, credentials: OAuth | OAuthMTLS) -> bytes:
    """The token-cache key of behaviour.md §7: everything that could change the token.

    A rotated secret, certificate or extra parameter gives a new key, so the old token is
    never reused for the new credential, and no raw secret is kept in the key.
    """
    if isinstance(credentials, OAuth):
        secret: tuple[bytes, ...] = (credentials.client_secret.encode(),)
    else:
        secret = _cert_parts(credentials.cert)
    parts = [
        flavour(credentials).encode(),
        credentials.token_url.encode(),
        credentials.client_id.encode(),
        *secret,
        *_params(credentials.headers),
        *_params(credentials.query),
    ]
    return _digest(hmac_key, parts)


def basic_identity(hmac_key: bytes, user: str, password: str) -> bytes:
    return _digest(hmac_key, (b"basic", user.encode(), password.encode()))


def cert_identity(hmac_key: bytes, cert: ClientCert) -> bytes:
    return _digest(hmac_key, (b"cert", *_cert_parts(cert)))


def csrf_cache_key(hmac_key: bytes, url: str, identity: bytes) -> bytes:
    """(CSRF endpoint URL, credential identity): CSRF tokens belong to one user."""
    return _digest(hmac_key, (b"csrf", url.encode(), identity))
