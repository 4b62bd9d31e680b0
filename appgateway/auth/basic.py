"""HTTP Basic: a constant header, computed once per snapshot."""

from __future__ import annotations

import base64

from appgateway.flow import Pending
from appgateway.headers import put_header
from appgateway.model import BasicAuth, ClientCert, Headers

AUTHORIZATION = b"Authorization"


class BasicStrategy:
    def __init__(self, credentials: BasicAuth) -> None:
        raw = credentials.username.encode() + b":" + credentials.password.encode()
        self._value = b"Basic " + base64.b64encode(raw)  # base64: no field check needed

    def apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> object | None | Pending[object | None]:
        if authenticate:
            put_header(headers, AUTHORIZATION, self._value)
        return None

    def invalidate(self, applied: object | None) -> None:
        return None

    @property
    def client_cert(self) -> ClientCert | None:
        return None
