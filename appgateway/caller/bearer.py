"""The caller's credential as presented: `Proxy-Authorization: Bearer <token>`. [pure]

The token is a secret: no message here quotes it, or any part of the field it came in, and
caches hold a keyed digest of it instead (so a memory dump or a debug repr of a cache shows
nothing a caller could replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import string
from typing import Final, Protocol

from appgateway.errors import CallerUnauthenticated

MAX_TOKEN: Final = 8192
"""Bytes. Kubernetes tokens are about 1 KiB; a bound keeps the digest and the review small."""

MISSING: Final = "Proxy-Authorization is missing: send 'Proxy-Authorization: Bearer <token>'"
NOT_BEARER: Final = "Proxy-Authorization: the scheme must be Bearer"
EMPTY: Final = "Proxy-Authorization: the Bearer token is empty"
TOO_LONG: Final = f"Proxy-Authorization: the Bearer token is longer than {MAX_TOKEN} bytes"
BAD_SYNTAX: Final = "Proxy-Authorization: the Bearer token has characters a token may not have"
NOT_ACCEPTED: Final = "Proxy-Authorization: the Bearer token was not accepted"

_TOKEN68_CHARS: Final = (string.ascii_letters + string.digits + "-._~+/").encode()
"""RFC 9110 §11.2 token68, then any `=`: what RFC 6750 allows as a Bearer token (JWTs are of
this form). Checked with `bytes.translate`, a table lookup per byte: a regular expression
took four times as long over a 1 KiB token."""


def presented_token(value: bytes | None) -> bytes:
    """The token of a `Bearer` credential; its characters are checked by `check_token` (on
    a cache miss only: a cached token was checked when it was first seen).

    The scheme is case-insensitive and one or more spaces may follow it (RFC 9110 §11.4).
    Raises CallerUnauthenticated.
    """
    if value is None:
        raise CallerUnauthenticated(MISSING)
    if value.startswith(b"Bearer ") and len(value) <= MAX_TOKEN + 7:
        token = value[7:]  # the usual spelling: one slice, no scan
        if token and token[0] != 0x20 and token[-1] not in _OWS:
            return token
    if len(value) > MAX_TOKEN + 64:  # before any scan of the value
        raise CallerUnauthenticated(TOO_LONG)
    scheme, _, rest = value.strip(b" \t").partition(b" ")
    if scheme.lower() != b"bearer":
        raise CallerUnauthenticated(NOT_BEARER)
    token = rest.lstrip(b" ")
    if not token:
        raise CallerUnauthenticated(EMPTY)
    if len(token) > MAX_TOKEN:
        raise CallerUnauthenticated(TOO_LONG)
    return token


_OWS: Final = (0x20, 0x09)


def check_token(token: bytes) -> None:
    """Refuse anything but token68 (a comma would mean a list of credentials, a space a
    parameter; neither is a token an identity backend should be asked about)."""
    body = token.rstrip(b"=")
    if not body or body.translate(None, _TOKEN68_CHARS):
        raise CallerUnauthenticated(BAD_SYNTAX)


_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


class TokenKeys:
    """Cache keys of tokens: HMAC-SHA-256 (RFC 2104) under a per-process random key.

    The same function as `hmac.digest(key, token, "sha256")`, with the key's two padded
    blocks hashed once here: OpenSSL 3 sets up its HMAC afresh on every one-shot call, which
    costs more than hashing a 1 KiB token, and this runs on every request.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __call__(self, token: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(token)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Remembered:
    """An allowed decision, kept by the caller's connection for its next request.

    A keep-alive caller sends the same field on request after request. Matching the field's
    `hash()` against the last allowed one's costs half of deciding again from the caches
    (the token's HMAC over about 1 KiB, two cache lookups and two LRU moves).

    It keeps the field's `hash()` (SipHash under the process's random seed, over every byte,
    in a time that does not depend on where two fields differ), never the field: comparing
    the token itself would tell, by its time, how much of another caller's token a guess
    got right on a connection that a proxy shares. Two fields with one hash are a 2**-64
    chance that nobody can aim at without knowing the token already.
    """

    __slots__ = ("application", "hashed", "name", "source", "until")

    def __init__(
        self, hashed: int, application: str, name: str, source: object, until: float
    ) -> None:
        self.hashed = hashed
        self.application = application
        self.name = name
        self.source = source
        """What decided (the authorizer, or the token table it read): another forgets it."""
        self.until = until
        """On the authorizer's clock: never later than what the decision came from."""


class Remembers(Protocol):
    """A caller connection."""

    caller_memo: Remembered | None


def recall(
    holder: Remembers | None, field: bytes | None, application: str, source: object, now: float
) -> Remembered | None:
    """What `holder` remembers when it sends the same field for the same Application, while
    `source` still decides and before `until` (`now` on the same clock)."""
    if holder is None or field is None:
        return None
    memo = holder.caller_memo
    if (
        memo is None
        or memo.source is not source
        or memo.application != application
        or now >= memo.until
        or memo.hashed != hash(field)
    ):
        return None
    return memo


def remember(
    holder: Remembers | None,
    field: bytes | None,
    application: str,
    name: str,
    source: object,
    until: float,
) -> None:
    if holder is not None and field is not None:
        holder.caller_memo = Remembered(hash(field), application, name, source, until)


def jwt_expiry(token: bytes) -> float | None:
    """The `exp` claim (Unix seconds) if `token` looks like a JWT, else None.

    Read without checking the signature, and used for one thing only: never to reuse a
    decision past the moment the token itself expires. Whether the token is genuine is the
    TokenReview's answer, never this function's.
    """
    parts = token.split(b".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        value = float(exp)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None
