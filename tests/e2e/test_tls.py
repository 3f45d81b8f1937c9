"""wss:// service URLs: certificates are verified; a CA bundle can be configured."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from bench.run import make_tls
from streams.models import Account
from tests.conftest import Proc
from tests.e2e.test_relay import ended_stream, gateway_for
from tests.support import Customer, eventually, ramp

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test CA"),
]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path)  # the bench's throwaway CA, the same for its --tls runs


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def test_an_untrusted_certificate_is_refused_three_times(
    hub: Proc, account: Account, tls_files: tuple[Path, Path, Path]
) -> None:
    _, cert, key = tls_files
    async with Customer(tls=server_context(cert, key)) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        stream = await ended_stream(account=account)
        await gw.close()
    assert stream.hangup_reason == "Connection error"
    assert "TLS error" in stream.last_error and "CERTIFICATE_VERIFY_FAILED" in stream.last_error
    assert customer.events("start") == []


async def test_a_configured_ca_bundle_is_trusted(
    hub_factory: object, account: Account, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = tls_files
    hub: Proc = hub_factory(STREAMHUB_CUSTOMER_CA_BUNDLE=str(ca))  # type: ignore[operator]
    async with Customer(tls=server_context(cert, key)) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await eventually(lambda: customer.events("start"))
        await gw.send(ramp(160))
        await eventually(lambda: customer.events("media"))
        await gw.close()


async def test_with_the_address_policy_on_tls_still_verifies_the_name(
    hub_factory: object, account: Account, tls_files: tuple[Path, Path, Path]
) -> None:
    """The hub connects to the address it checked, and TLS (SNI, certificate) uses the URL's name."""
    ca, cert, key = tls_files
    hub: Proc = hub_factory(  # type: ignore[operator]
        STREAMHUB_CUSTOMER_CA_BUNDLE=str(ca),
        STREAMHUB_FORBID_PRIVATE_SERVICE_URLS="true",
        STREAMHUB_ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8,::1",
    )
    async with Customer(tls=server_context(cert, key)) as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await eventually(lambda: customer.events("start"))
        await gw.send(ramp(160))
        await eventually(lambda: customer.events("media"))
        await gw.close()
