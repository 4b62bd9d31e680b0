from __future__ import annotations

from appgateway.auth.certificate import CertificateStrategy, NoAuthStrategy
from appgateway.flow import settle
from appgateway.model import ClientCert, Headers

CERT = ClientCert(crt_pem=b"crt", key_pem=b"key", fingerprint="fp")


async def test_no_auth_passes_the_callers_authorization() -> None:
    strategy = NoAuthStrategy()
    headers: Headers = [(b"Authorization", b"Bearer caller"), (b"X-A", b"1")]
    assert await settle(strategy.apply(headers)) is None
    assert headers == [(b"Authorization", b"Bearer caller"), (b"X-A", b"1")]
    strategy.invalidate(None)
    assert strategy.client_cert is None


async def test_certificate_is_a_connection_property() -> None:
    strategy = CertificateStrategy(CERT)
    for authenticate in (True, False):
        headers: Headers = [(b"Authorization", b"Bearer caller")]
        assert await settle(strategy.apply(headers, authenticate=authenticate)) is None
        assert headers == [(b"Authorization", b"Bearer caller")]
    strategy.invalidate(None)
    assert strategy.client_cert is CERT
