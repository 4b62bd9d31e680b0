"""A small Kubernetes API client: TLS and credentials, JSON GETs, watch streams, backoff.

The registry needs only LIST and WATCH of two resources, with exact control over 410 handling,
bookmarks, token rotation and error reporting, so this is a thin layer over aiohttp (already
the gateway's control-plane client) rather than a general-purpose Kubernetes library.

HTTPS_PROXY (HTTP_PROXY for an http:// server) and NO_PROXY apply as to every outbound call,
with the gateway's own rules (proxy.py), as kubectl and client-go do. In a pod the API server
is usually reached directly: list its address (KUBERNETES_SERVICE_HOST, or the service
network) in NO_PROXY. The proxy's user-info goes only on the CONNECT request (https) or on the
absolute-form request (http), never through the tunnel to the API server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from appgateway import __version__, tls
from appgateway.proxy import ProxyConfig
from appgateway.registry import RegistryError
from appgateway.registry.kubeconfig import ClusterAuth, Material, from_kubeconfig, in_cluster

log = logging.getLogger("appgateway.registry")

TOKEN_REFRESH_S = 60.0
"""Projected service-account tokens rotate; the kubelet refreshes the file well before expiry."""
GET_TIMEOUT = 60.0
CLOSE_GRACE = 0.1
MAX_LINE = 256 << 20
"""Longest watch event accepted (Secrets can hold up to 1 MiB, JSON-escaped)."""

Json = dict[str, Any]


class ApiError(Exception):
    """A non-200 answer, or an ERROR watch event, with the API's Status fields."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


def status_error(status: int, body: bytes | Mapping[str, Any]) -> ApiError:
    """An ApiError from a `Status` object (JSON bytes or decoded), tolerating anything else."""
    doc: object = body
    if isinstance(body, bytes):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    if isinstance(doc, Mapping) and doc.get("kind") == "Status":
        code = doc.get("code")
        return ApiError(
            code if isinstance(code, int) and code else status,
            str(doc.get("reason") or ""),
            str(doc.get("message") or ""),
        )
    text = body[:200].decode("utf-8", "replace").strip() if isinstance(body, bytes) else ""
    return ApiError(status, "", text)


class Backoff:
    """Jittered exponential delays: 0.5 s doubling up to 30 s, each drawn from [d/2, d]."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._rand = rand
        self._attempt = 0

    def next(self) -> float:
        delay: float = min(self.cap, self.initial * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return delay * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self._attempt = 0


def load_auth(kubeconfig: Path | None, service: tuple[str, str]) -> ClusterAuth:
    """The kubeconfig's current context, or else the in-cluster service account at `service`
    (KUBERNETES_SERVICE_HOST, _PORT). Raises RegistryError (exit 2) when neither is usable."""
    try:
        if kubeconfig is None:
            return in_cluster(*service)
        try:
            text = kubeconfig.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read: {exc.strerror or exc}") from None
        return from_kubeconfig(text, kubeconfig)
    except ValueError as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "in-cluster config"
        raise RegistryError(f"{where}: {exc}") from None


def _read(material: Material, what: str) -> bytes:
    if material.data is not None:
        return material.data
    assert material.path is not None
    try:
        return material.path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read {what} {material.path}: {exc.strerror or exc}") from None


def ssl_context(auth: ClusterAuth) -> ssl.SSLContext:
    """Trust only the cluster CA when one is given, as kubectl does."""
    if auth.ca is not None and not auth.insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=_read(auth.ca, "CA").decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise RegistryError(f"{auth.origin}: invalid CA certificate: {exc.reason}") from None
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if auth.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if auth.client_cert is not None and auth.client_key is not None:
        crt = _read(auth.client_cert, "client certificate")
        key = _read(auth.client_key, "client key")
        try:
            cert = tls.load_client_cert(crt, key)
        except ValueError as exc:
            raise RegistryError(f"{auth.origin}: client certificate: {exc}") from None
        tls._load_into(context, cert.crt_pem, cert.key_pem)
    return context


class KubeClient:
    """GET and WATCH against one API server; the token file is re-read at least every minute."""

    def __init__(
        self,
        auth: ClusterAuth,
        *,
        clock: Callable[[], float] = time.monotonic,
        proxies: ProxyConfig | None = None,
    ) -> None:
        self.auth = auth
        self._clock = clock
        self._token = ""
        self._token_read = -TOKEN_REFRESH_S * 2
        self._session: aiohttp.ClientSession | None = None
        self._proxy = proxy_arguments(auth.server, proxies)

    async def open(self) -> None:
        """Read the key material (RegistryError if unusable) and create the HTTP session."""
        context = ssl_context(self.auth) if self.auth.server.startswith("https:") else None
        self._refresh_token(force=True, strict=True)
        connector = aiohttp.TCPConnector(ssl=context if context is not None else False, limit=8)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": f"appgateway/{__version__}"},
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # TLS connections finish their close_notify exchange a few loop turns later.
            await asyncio.sleep(CLOSE_GRACE)

    def token_expired(self) -> None:
        """After a 401: read the token file again before the next request."""
        self._token_read = -TOKEN_REFRESH_S * 2

    def _refresh_token(self, *, force: bool = False, strict: bool = False) -> None:
        material = self.auth.token
        if material is None:
            return
        now = self._clock()
        if not force and now - self._token_read < TOKEN_REFRESH_S:
            return
        try:
            self._token = _read(material, "token").decode("utf-8", "replace").strip()
        except RegistryError as exc:
            if strict:
                raise
            log.warning("cannot re-read the token", extra={"fields": {"error": str(exc)}})
        self._token_read = now

    def _request_args(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._refresh_token()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        args: dict[str, Any] = {"params": dict(params), "headers": headers}
        if self._proxy:
            proxy = dict(self._proxy)
            headers.update(proxy.pop("headers", {}))
            args.update(proxy)
        if self.auth.tls_server_name:
            args["server_hostname"] = self.auth.tls_server_name
        return args

    def _get(self, path: str, params: Mapping[str, str], timeout: aiohttp.ClientTimeout) -> Any:
        if self._session is None:
            raise RuntimeError("KubeClient is not open")
        url = self.auth.server + path
        return self._session.get(url, timeout=timeout, **self._request_args(params))

    async def get(self, path: str, params: Mapping[str, str]) -> Json:
        """One JSON object; raises ApiError, aiohttp.ClientError or TimeoutError."""
        async with self._get(path, params, aiohttp.ClientTimeout(total=GET_TIMEOUT)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise status_error(resp.status, body)
        return _object(resp.status, body)

    async def create(self, path: str, doc: Json, *, deadline_s: float = GET_TIMEOUT) -> Json:
        """POST one object and return what the server answered (200 or 201): how reviews
        (TokenReview, SubjectAccessReview) are asked. Raises ApiError, aiohttp.ClientError
        or TimeoutError; `deadline_s` bounds the whole exchange, waiting for a connection
        included."""
        if self._session is None:
            raise RuntimeError("KubeClient is not open")
        args = self._request_args({})
        args["headers"]["Content-Type"] = "application/json"
        async with self._session.post(
            self.auth.server + path,
            data=json.dumps(doc).encode(),
            timeout=aiohttp.ClientTimeout(total=deadline_s),
            **args,
        ) as resp:
            body = await resp.read()
            if resp.status not in (200, 201):
                raise status_error(resp.status, body)
        return _object(resp.status, body)

    async def watch(
        self,
        path: str,
        params: Mapping[str, str],
        on_event: Callable[[Json], None],
        *,
        read_timeout: float,
    ) -> None:
        """Stream watch events (one JSON object a line) to `on_event` until the server ends
        the watch; `on_event` may raise to stop."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        async with self._get(path, params, timeout) as resp:
            if resp.status != 200:
                raise status_error(resp.status, await resp.read())
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                start = len(buffer)
                buffer += chunk
                end = buffer.find(b"\n", start)
                while end >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        on_event(_event(line))
                    end = buffer.find(b"\n")
                if len(buffer) > MAX_LINE:
                    raise ApiError(resp.status, "", "watch event too large")
            if buffer.strip():
                on_event(_event(bytes(buffer)))


def proxy_arguments(server: str, proxies: ProxyConfig | None) -> dict[str, Any]:
    """aiohttp's request arguments for the proxy to `server` (none: connect directly).

    aiohttp sends `proxy_headers` on the CONNECT request only; for an http server the
    credentials go on the absolute-form request itself, as plain `headers`.
    """
    if proxies is None:
        return {}
    parts = urlsplit(server)
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        return {}  # the kubeconfig check reports a bad server URL
    proxy = proxies.proxy_for(parts.scheme, parts.hostname or "", port)
    if proxy is None:
        return {}
    host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    args: dict[str, Any] = {"proxy": f"http://{host}:{proxy.port}"}
    if proxy.authorization is not None:
        credentials = {"Proxy-Authorization": proxy.authorization.decode("latin-1")}
        args["proxy_headers" if https else "headers"] = credentials
    return args


def _object(status: int, body: bytes) -> Json:
    try:
        doc = json.loads(body)
    except ValueError:
        raise ApiError(status, "", "response is not JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(status, "", "response is not a JSON object")
    return doc


def _event(line: bytes) -> Json:
    try:
        doc = json.loads(line)
    except ValueError:
        raise ApiError(200, "", "watch event is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("object"), dict):
        raise ApiError(200, "", "watch event without an object")
    return doc
