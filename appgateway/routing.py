"""Find the API a request addresses: the absolute form's authority, then the Host value
(host routing, proxy listener), then the path (path routing). [pure]

Identifier segments are compared as received (pre-normalised, never decoded), and the rest
keeps the caller's escaping; both are decided here once so later steps never re-parse the
request target (behaviour.md §2). `Router` is the whole order, with what it learns about one
snapshot remembered; the forwarder makes one per snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from appgateway.errors import BadRequest, GatewayError
from appgateway.model import API
from appgateway.urls import pre_normalize

IDENTIFIER_MESSAGE: Final = "failed to extract API Identifier from path"
MAX_REMEMBERED_HOSTS: Final = 1024
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Lookup(Protocol):
    """The routing indexes of one registry snapshot."""

    def by_host_label(self, label: str) -> API | GatewayError | None: ...

    def by_path(self, app: str, service: str, entry: str | None) -> API | GatewayError: ...


@dataclass(init=False)
class Destination:
    """Where one request goes. Built per request: not frozen (a frozen `__init__` is several
    times slower), and the `__init__` is written out because a generated one would run
    interpreted under mypyc."""

    api: API
    rest: str | None  # escaped rest after routing (pre-normalised), None when absent
    mode: str  # "host" or "path"
    base: str  # Location-rewrite base; "" for host routing

    def __init__(self, api: API, rest: str | None, mode: str, base: str) -> None:
        self.api = api
        self.rest = rest
        self.mode = mode
        self.base = base


def host_label_of(host: str) -> str | None:
    """The label part of a Host value: no port, text before the first `.`, lower-cased."""
    host = host.strip()
    if host.startswith("["):
        close = host.find("]")
        host = host if close < 0 else host[: close + 1]
    else:
        host = host.partition(":")[0]
    label = host.partition(".")[0].translate(_ASCII_LOWER)
    return label or None


def split_absolute_form(target: str) -> tuple[str | None, str]:
    """Split an absolute-form request target into (authority, origin-form target).

    The second element starts with `/` and still carries any `?query`, so the server can
    treat it exactly like an origin-form target. Userinfo is dropped from the authority.
    Targets that are not `scheme://...` come back unchanged with no authority.
    """
    scheme, sep, after = target.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        return None, target
    cut = len(after)
    for ch in "/?#":
        idx = after.find(ch)
        if 0 <= idx < cut:
            cut = idx
    authority = after[:cut].rpartition("@")[2]
    rest = after[cut:].partition("#")[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    return authority or None, rest


def _unwrap(result: API | GatewayError) -> API:
    if isinstance(result, GatewayError):
        # Snapshots keep one error per broken API; without the reset, every raise of the
        # same instance would chain another traceback (and its frames) onto it.
        raise result.with_traceback(None)
    return result


def path_address(path: str, n: int) -> tuple[str, str | None]:
    """The identifier part of a pre-normalised path and the rest after it.

    The identifier part is `app/service` (n=2, proxy listener) or `app/service/entry` (n=3,
    Compass), segments as received; it names one API per snapshot, so a caller may remember
    the API by it. The rewrite base is `/` + the identifier part.
    """
    parts = path.lstrip("/").split("/", n)
    if len(parts) < n or not parts[0] or not parts[1] or (n == 3 and not parts[2]):
        raise BadRequest(IDENTIFIER_MESSAGE)
    rest = parts[n] if len(parts) > n else None
    if n == 2:
        return f"{parts[0]}/{parts[1]}", rest
    return f"{parts[0]}/{parts[1]}/{parts[2]}", rest


def lookup_address(lookup: Lookup, address: str) -> API:
    """The API an identifier part from `path_address` names; raises the caller's error."""
    ids = address.split("/")
    entry = ids[2] if len(ids) == 3 else None
    return _unwrap(lookup.by_path(ids[0], ids[1], entry))


def host_lookup(lookup: Lookup, host: str | None) -> API | GatewayError | None:
    """The host-routing step: None when the Host value names no service. It depends on the
    Host value alone, so a caller may remember it per snapshot."""
    label = host_label_of(host) if host else None
    return None if label is None else lookup.by_host_label(label)


T = TypeVar("T")


class Router(Generic[T]):
    """The routing order for one snapshot, remembering what it found.

    `prepare` turns a found API into what the caller keeps per API (T); it runs once per API
    and snapshot. Callers use few Host values and few identifier parts, so both are
    remembered: a request then costs one dictionary lookup by a string, where a snapshot
    lookup plus the caller's own by API cost two (with 10,000 Applications each misses the
    CPU caches). Only found APIs are kept per identifier part, so that memo never outgrows
    the snapshot's routes; the Host memo is bounded.
    """

    def __init__(self, lookup: Lookup, prepare: Callable[[API], T]) -> None:
        self._lookup = lookup
        self._prepare = prepare
        self._prepared: dict[int, T] = {}
        self._hosts: dict[str | None, API | GatewayError | None] = {}
        self._addresses: dict[str, tuple[T, API]] = {}

    def prepared(self, api: API) -> T:
        state = self._prepared.get(id(api))
        if state is None:
            state = self._prepared[id(api)] = self._prepare(api)
        return state

    def route(
        self, target: str, host: str | None, compass: bool
    ) -> tuple[T, Destination, str, str]:
        """(prepared API, destination, path, query) for a request target as received
        (latin-1) and its first Host value. Raises the GatewayError the caller gets."""
        if not target.startswith("/"):
            authority, target = split_absolute_form(target)
            if authority is not None:
                host = authority  # the absolute form's authority wins over Host
        path, _, query = target.partition("?")
        if compass:
            state, destination = self._by_path(path, 3)
            return state, destination, path, query
        hosts = self._hosts
        try:
            found = hosts[host]
        except KeyError:
            found = host_lookup(self._lookup, host)
            if len(hosts) < MAX_REMEMBERED_HOSTS:
                hosts[host] = found
        if found is None:
            state, destination = self._by_path(path, 2)
        else:
            # The whole path is the rest; join() then puts exactly one `/` after the target.
            api = _unwrap(found)
            destination = Destination(api, pre_normalize(path) or "/", "host", "")
            state = self.prepared(api)
        return state, destination, path, query

    def _by_path(self, raw_path: str, n: int) -> tuple[T, Destination]:
        address, rest = path_address(pre_normalize(raw_path), n)
        known = self._addresses.get(address)
        if known is None:
            api = lookup_address(self._lookup, address)
            known = self._addresses[address] = (self.prepared(api), api)
        return known[0], Destination(known[1], rest, "path", "/" + address)
