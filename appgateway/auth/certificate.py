"""Strategies that add no header: none, and the client certificate (a connection property)."""

from __future__ import annotations

from appgateway.flow import Pending
from appgateway.model import ClientCert, Headers


class NoAuthStrategy:
    def apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> object | None | Pending[object | None]:
        return None

    def invalidate(self, applied: object | None) -> None:
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
