"""Outbound HTTP proxies: HTTP_PROXY, HTTPS_PROXY and NO_PROXY semantics. [pure]

The rules follow the common interpretation (curl, Go): NO_PROXY is a comma-separated list of
host names, domain suffixes (`.example.com` or `example.com`, both matching subdomains), IP
addresses and CIDR blocks, each optionally with `:port`; `*` disables proxying. Loopback is not
special-cased: list it in NO_PROXY to bypass the proxy.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class ProxyServer:
    host: str
    port: int
    authorization: bytes | None  # `Proxy-Authorization` value from the URL's user-info

    def __repr__(self) -> str:  # never show the credentials
        return f"ProxyServer({self.host}:{self.port})"


def parse_proxy_url(url: str) -> ProxyServer:
    """`http://[user:pass@]host[:port]`; a bare `host:port` means http. Raises ValueError."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"unsupported proxy scheme {parts.scheme!r} (only http)")
    if not parts.hostname:
        raise ValueError("proxy URL without a host")
    authorization = None
    if parts.username is not None:
        raw = unquote(parts.username) + ":" + unquote(parts.password or "")
        authorization = b"Basic " + base64.b64encode(raw.encode())
    return ProxyServer(parts.hostname, parts.port or 80, authorization)


@dataclass(frozen=True, slots=True)
class _Rule:
    host: str  # lower-case host or domain suffix without a leading dot; "" for a network
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None


def _parse_rule(entry: str) -> _Rule | None:
    text = entry.strip().lower()
    if not text:
        return None
    try:
        return _Rule("", ipaddress.ip_network(text, strict=False), None)
    except ValueError:
        pass
    port: int | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        text = host
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            port = int(port_text)
            text = host
    try:
        return _Rule("", ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        return _Rule(text.lstrip("*").lstrip("."), None, port)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    http: ProxyServer | None = None
    https: ProxyServer | None = None
    bypass_all: bool = False
    rules: tuple[_Rule, ...] = ()

    @classmethod
    def from_environment(cls, values: dict[str, str]) -> ProxyConfig:
        """Build from `config.environ_proxies()`; a broken proxy URL raises ValueError."""
        http = values.get("http_proxy")
        https = values.get("https_proxy")
        no_proxy = values.get("no_proxy", "")
        entries = [e for e in no_proxy.split(",") if e.strip()]
        rules = tuple(r for r in map(_parse_rule, entries) if r is not None)
        return cls(
            http=parse_proxy_url(http) if http else None,
            https=parse_proxy_url(https) if https else None,
            bypass_all=any(e.strip() == "*" for e in entries),
            rules=rules,
        )

    def proxy_for(self, scheme: str, host: str, port: int) -> ProxyServer | None:
        server = self.https if scheme == "https" else self.http
        if server is None or self.bypass_all:
            return None
        name = host.lower().strip("[]")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                name
            )
        except ValueError:
            address = None
        for rule in self.rules:
            if rule.port is not None and rule.port != port:
                continue
            if rule.network is not None:
                if address is not None and address in rule.network:
                    return None
            elif name == rule.host or name.endswith("." + rule.host):
                return None
        return server
