"""Strategies that add no header: none, and the client certificate (a connection property)."""

from __future__ import annotations

from appgateway.model import ClientCert, Headers


class NoAuthStrategy:
    async def apply(self, headers: Headers, *, authenticate: bool = True) -> object | None:
        return None

    def try_apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> tuple[bool, object | None]:
        return True, None

    async def invalidate(self, applied: object | None) -> None:
        return None

    @property
    def client_cert(self) -> ClientCert | None:
        return None


class CertificateStrategy(NoAuthStrategy):
    """CertificateGen: the pool for this API presents `cert` in every TLS handshake."""

    def __init__(self, cert: ClientCert) -> None:
        self._cert = cert

    @property
    def client_cert(self) -> ClientCert | None:
        return self._cert
