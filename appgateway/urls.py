"""Outbound URL construction: path joining and encoding, query merge, target parsing, redaction.

Paths are handled as byte strings once decoded, because a caller may send escapes that are not
UTF-8 (`%FF`) and those must survive unchanged (behaviour.md §3).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Final
from urllib.parse import quote, quote_plus, unquote_plus, unquote_to_bytes

from appgateway.errors import BadRequest
from appgateway.model import ParamMap, Target

BAD_ESCAPE_MESSAGE: Final = "invalid URL escape in request path"

# VALID bytes of behaviour.md §3.1, without `%` (checked separately: only as a valid escape).
_VALID_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]"
_NOT_VALID: Final = re.compile(rf"[^{_VALID_CHARS}%]")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VALID_BYTES = re.compile(rb"(?:[" + _VALID_CHARS.encode() + rb"]|%[0-9A-Fa-f]{2})*")
_CANON_SAFE = "/$&+,:;=@"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_FORBIDDEN_HOST_CHARS = frozenset(' "<>\\^`{|}/?#@[]')


class TargetURLError(ValueError):
    """A `targetUrl` the gateway cannot send to; `reason` goes into the API's 500 message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _escape_char(m: re.Match[str]) -> str:
    char = m.group()
    data = char.encode("latin-1") if ord(char) < 256 else char.encode("utf-8")
    return "".join(f"%{b:02X}" for b in data)


def pre_normalize(raw_path: str) -> str:
    """Escape every byte outside VALID so the rest is plain ASCII from here on.

    `raw_path` holds one wire byte per character (latin-1). A `%` that does not start an
    escape cannot be repaired without guessing, so it is the caller's error.
    """
    if "%" in raw_path and _BAD_ESCAPE.search(raw_path):
        raise BadRequest(BAD_ESCAPE_MESSAGE)
    if _NOT_VALID.search(raw_path) is None:
        return raw_path
    return _NOT_VALID.sub(_escape_char, raw_path)


def decode(p: str | bytes) -> bytes:
    """Percent-decode to bytes; `+` stays `+` and broken escapes stay as they are."""
    return unquote_to_bytes(p)


def canon(p: bytes) -> str:
    """The canonical escaping of decoded bytes (behaviour.md §3.1)."""
    return quote(p, safe=_CANON_SAFE)


def is_valid(p: bytes) -> bool:
    return _VALID_BYTES.fullmatch(p) is not None


def join(a: bytes, b: bytes | None) -> bytes:
    """Append a rest to a target path with exactly one `/` between them (behaviour.md §3.1)."""
    if b is None:
        return a
    if b == b"":
        return a if a.endswith(b"/") else a + b"/"
    a_slash = a.endswith(b"/")
    b_slash = b.startswith(b"/")
    if a_slash and b_slash:
        return a + b[1:]
    if not a_slash and not b_slash:
        return a + b"/" + b
    return a + b


_NEEDS_NO_ESCAPE: Final = re.compile(r"[A-Za-z0-9\-._~$&+,/:;=@]+")


def canonical_target(target_path: str) -> str:
    """The canonical escaping of a `targetUrl` path: what `wire_path` starts from."""
    return canon(decode(target_path.encode("utf-8")))


def wire_path(
    target_path: str, rest: str | None, encode_url: bool, canonical: str | None = None
) -> str:
    """The path sent upstream (behaviour.md §3.2).

    `rest` is the pre-normalised (ASCII) rest from routing, or None when the caller sent none.
    The caller's own escaping is kept only when it means the same bytes as the canonical form.
    `canonical` is `canonical_target(target_path)` when the caller keeps it per API.
    """
    if rest and _NEEDS_NO_ESCAPE.fullmatch(rest):
        # Common case: a rest that needs no escaping decodes to itself and is canonical in
        # both modes, so the result is the canonical target joined with it.
        # join() on text: exactly one `/` between them.
        base = canonical_target(target_path) if canonical is None else canonical
        if base.endswith("/"):
            return base + rest[1:] if rest[0] == "/" else base + rest
        return base + rest if rest[0] == "/" else base + "/" + rest
    t = decode(target_path.encode("utf-8"))
    r = None if rest is None else rest.encode("utf-8")
    decoded_rest = None if r is None else decode(r)
    decoded = join(t, decoded_rest)
    if r is None or r == b"" or (not encode_url and canon(decode(r)).encode() != r):
        candidate = join(t, r)
        if is_valid(candidate) and decode(candidate) == decoded:
            return candidate.decode("ascii") or "/"
    return canon(decoded) or "/"


_SEPARATORS: Final = re.compile(rb"[/\\]")


def escapes_base(rest: str | None) -> bool:
    """Would `rest`, appended to an API's base path, climb above it once the target removes
    dot segments? Decoded once and split at `/` and `\\` too, as servers differ in both."""
    if not rest or ("." not in rest and "%" not in rest):
        return False
    depth = 0
    for segment in _SEPARATORS.split(decode(rest)):
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment not in (b"", b"."):
            depth += 1
    return False


def form_encode(s: str) -> str:
    """`application/x-www-form-urlencoded` escaping: space is `+`, only `A-Za-z0-9-._~` stay."""
    return quote_plus(s, safe="")


def merge_query(
    target_query: str,
    caller_query: str,
    params: ParamMap,
    encoded: tuple[tuple[str, str], ...] | None = None,
) -> str:
    """The raw query sent upstream, without `?` (behaviour.md §3.3).

    Both raw queries are kept verbatim; request parameters are only appended, never used to
    re-encode what the caller sent (signed URLs, OData filters). `encoded` is
    `encoded_params(params)` when the caller keeps it per API.
    """
    if target_query and caller_query:
        q = target_query + "&" + caller_query
    else:
        q = target_query or caller_query
    if not params:
        return q
    if encoded is None:
        encoded = encoded_params(params)
    if not q:
        return "&".join(pairs for _, pairs in encoded if pairs)
    present = {unquote_plus(pair.partition("=")[0]) for pair in q.split("&")}
    return "&".join([q, *(pairs for key, pairs in encoded if pairs and key not in present)])


def encoded_params(params: ParamMap) -> tuple[tuple[str, str], ...]:
    """Per parameter name, in name order: its `k=v&k=v2` text (the same on every request)."""
    out: list[tuple[str, str]] = []
    for key, values in sorted(params, key=lambda item: item[0]):
        encoded_key = form_encode(key)
        out.append((key, "&".join(f"{encoded_key}={form_encode(value)}" for value in values)))
    return tuple(out)


def split_host_port(authority: str) -> tuple[str, str | None]:
    """Split `host[:port]` (userinfo already removed). IPv6 comes back without brackets.

    The port is returned as written (None when there is no `:`); callers validate it.
    """
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError("missing ']' in host")
        host, after = authority[1:close], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after host")
        return host, after[1:] if after else None
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, None
    return host, port


@lru_cache(maxsize=65536)  # Target is immutable; a registry rebuild re-parses the same URLs
def parse_target(url: str) -> Target:
    """Parse an API's `targetUrl`: absolute http(s) with a host. Userinfo is ignored."""
    if not url:
        raise TargetURLError("empty url")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise TargetURLError("invalid control character in url")
    scheme, sep, after = url.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme) or not after.startswith("//"):
        raise TargetURLError("missing scheme or host")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TargetURLError(f'unsupported scheme "{scheme}"')
    rest = after[2:].partition("#")[0]
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    authority = authority.rpartition("@")[2]
    try:
        host, port_text = split_host_port(authority)
    except ValueError as exc:
        raise TargetURLError(f"invalid host: {exc}") from None
    if not host:
        raise TargetURLError("missing scheme or host")
    if authority.startswith("["):
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise TargetURLError(f'invalid IPv6 host "[{host}]"') from None
    elif _FORBIDDEN_HOST_CHARS.intersection(host):
        raise TargetURLError(f'invalid host "{host}"')
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TargetURLError(f'invalid port ":{port_text}"')
        port = int(port_text)
        display = f"[{host}]" if authority.startswith("[") else host
        authority = f"{display}:{port_text}"
    else:
        port = _DEFAULT_PORTS[scheme]
        authority = f"[{host}]" if authority.startswith("[") else host
    return Target(scheme=scheme, host=host, port=port, authority=authority, path=path, query=query)


def redact(url: str) -> str:
    """`scheme://host[:port]/path` for messages and logs: no userinfo, query or fragment.

    When `@` appears before the first `/`, everything up to it is dropped, even if a `?` or
    `#` came first: that reading can never print a password containing those characters.
    """
    scheme, sep, after = url.partition("://")
    if not sep or "/" in scheme or "?" in scheme or "#" in scheme:
        return _cut_query(url)
    slash = after.find("/")
    head, path = (after, "") if slash < 0 else (after[:slash], after[slash:])
    if "@" in head:
        head = head.rpartition("@")[2]
        return f"{scheme}://{_cut_query(head)}{_cut_query(path)}"
    if "?" in head or "#" in head:
        return f"{scheme}://{_cut_query(head)}"
    return f"{scheme}://{head}{_cut_query(path)}"


def _cut_query(s: str) -> str:
    for i, c in enumerate(s):
        if c in "?#":
            return s[:i]
    return s
