"""HTTP Basic: a constant header, computed once per snapshot."""

from __future__ import annotations

import base64

from appgateway.headers import put_header
from appgateway.model import BasicAuth, ClientCert, Headers

AUTHORIZATION = b"Authorization"


class BasicStrategy:
    def __init__(self, credentials: BasicAuth) -> None:
        raw = credentials.username.encode() + b":" + credentials.password.encode()
        self._value = b"Basic " + base64.b64encode(raw)  # base64: no field check needed

    async def apply(self, headers: Headers, *, authenticate: bool = True) -> object | None:
        return self.try_apply(headers, authenticate=authenticate)[1]

    def try_apply(
        self, headers: Headers, *, authenticate: bool = True
    ) -> tuple[bool, object | None]:
        if authenticate:
            put_header(headers, AUTHORIZATION, self._value)
        return True, None

    async def invalidate(self, applied: object | None) -> None:
        return None

    @property
    def client_cert(self) -> ClientCert | None:
        return None
