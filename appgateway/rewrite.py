"""Response adjustments: upstream 5xx becomes 502, and redirects are mapped back to the gateway.

The Location rewrite works on escaped text and compares decoded segments, so the caller gets
back exactly the escaping the target chose (behaviour.md §10.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from appgateway.headers import set_header
from appgateway.model import Headers, Target
from appgateway.urls import split_host_port

TARGET_SYSTEM_STATUS = b"Target-System-Status"
MAX_LOCATION = 8192
"""Longer `Location` values are relayed untouched: no sane redirect needs more, and the
rewrite's work then stays small whatever a target sends (its head may be 1 MiB)."""

# RFC 3986 appendix B; every string matches, so parse errors are checked separately.
_REFERENCE = re.compile(r"(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.S)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def rewrite_status(status: int, headers: Headers) -> int:
    """Report a target's 5xx as 502, keeping the original in `Target-System-Status`."""
    if 500 <= status <= 599:
        set_header(headers, TARGET_SYSTEM_STATUS, str(status).encode())
        return 502
    return status


def should_rewrite_location(status: int) -> bool:
    return 300 <= status <= 399 or status == 201


@dataclass(frozen=True, slots=True)
class _Ref:
    scheme: str | None
    authority: str | None
    path: str
    query: str | None
    fragment: str | None


def _parse(url: str) -> _Ref | None:
    """Split a URI reference, or None when it is malformed enough that Go would reject it."""
    if _CONTROL.search(url):
        return None
    m = _REFERENCE.fullmatch(url)
    if m is None:  # pragma: no cover - the pattern matches every string
        return None
    scheme, authority, path, query, fragment = m.groups()
    # The query is relayed verbatim, so only the other parts must hold valid escapes.
    if any(part and _BAD_ESCAPE.search(part) for part in (authority, path, fragment)):
        return None
    if scheme is not None and not _SCHEME.fullmatch(scheme):
        return None
    if authority is not None:
        host_port = authority.rpartition("@")[2]
        if " " in host_port:
            return None
        try:
            _, port = split_host_port(host_port)
        except ValueError:
            return None
        if port and not (port.isascii() and port.isdigit()):
            return None
    return _Ref(scheme.lower() if scheme else None, authority, path, query, fragment)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on the escaped path, in one pass over an index.

    The RFC's rules consume a prefix of the input buffer; slicing it off on every step made
    a 1 MB `Location` of `../` take seconds (quadratic). Here each rule only moves `i`.
    """
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        if path.startswith("../", i):
            i += 3
        elif path.startswith("./", i) or path.startswith("/./", i):
            i += 2
        elif n - i == 2 and path.endswith("/."):
            out.append("/")
            break
        elif path.startswith("/../", i):
            i += 3
            if out:
                out.pop()
        elif n - i == 3 and path.endswith("/.."):
            if out:
                out.pop()
            out.append("/")
            break
        elif n - i <= 2 and path[i:] in (".", ".."):
            break
        else:
            end = path.find("/", i + 1)
            end = n if end < 0 else end
            out.append(path[i:end])
            i = end
    return "".join(out)


def _resolve(ref: _Ref, base: _Ref) -> _Ref:
    """RFC 3986 §5.2.2 reference resolution; `base` is absolute."""
    if ref.scheme is not None:
        return _Ref(
            ref.scheme, ref.authority, _remove_dot_segments(ref.path), ref.query, ref.fragment
        )
    if ref.authority is not None:
        path = _remove_dot_segments(ref.path)
        return _Ref(base.scheme, ref.authority, path, ref.query, ref.fragment)
    if ref.path == "":
        query = ref.query if ref.query is not None else base.query
        return _Ref(base.scheme, base.authority, base.path, query, ref.fragment)
    if ref.path.startswith("/"):
        path = ref.path
    elif base.authority is not None and base.path == "":
        path = "/" + ref.path
    else:
        path = base.path[: base.path.rfind("/") + 1] + ref.path
    return _Ref(base.scheme, base.authority, _remove_dot_segments(path), ref.query, ref.fragment)


def _segments_match(prefix: list[str], segments: list[str]) -> bool:
    if len(segments) < len(prefix):
        return False
    return all(
        a == b or unquote_to_bytes(a) == unquote_to_bytes(b)
        for a, b in zip(prefix, segments, strict=False)
    )


def rewrite_location(location: str, sent_url: str, target: Target, base: str) -> str:
    """Map a target's redirect back onto the gateway URL the caller used (behaviour.md §10.3).

    `sent_url` is the URL sent upstream; `base` is `/{app}/{service}[/{entry}]` as the caller
    sent it, or "" for host routing. Anything not under the target is returned unchanged.
    """
    if len(location) > MAX_LOCATION:
        return location
    ref = _parse(location)
    origin = _parse(sent_url)
    if ref is None or origin is None:
        return location
    resolved = _resolve(ref, origin)
    if resolved.scheme not in ("http", "https") or resolved.authority is None:
        return location
    host, _ = split_host_port(resolved.authority.rpartition("@")[2])
    if host.translate(_ASCII_LOWER) != target.host.translate(_ASCII_LOWER):
        return location
    prefix = target.path.split("/")
    if len(prefix) > 1 and prefix[-1] == "":
        prefix.pop()
    segments = resolved.path.split("/")
    if not _segments_match(prefix, segments):
        return location
    remaining = segments[len(prefix) :]
    path = base + "".join("/" + seg for seg in remaining)
    out = path or "/"
    if out.startswith(("//", "/\\")):
        # Host routing (an empty base) with an empty or `\` first remaining segment: as
        # it stands the caller would read a network-path reference to another host (an
        # open redirect). `/.` keeps the same path on the gateway (what WHATWG URLs do).
        out = "/." + out
    if resolved.query is not None:
        out += "?" + resolved.query
    if resolved.fragment is not None:
        out += "#" + resolved.fragment
    return out
