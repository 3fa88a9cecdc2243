"""TLS and mutual TLS with real certificates made in the test (``trustme``), against a real
``ledger serve`` (issue 6, must show 1: the wrong client certificate under mTLS is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from inventory.ledger.v1 import query_service_pb2, query_service_pb2_grpc

from testbed.server import LedgerProcess

REQUEST = query_service_pb2.GetPositionRequest(sku="SKU-T", location_id="DC-1")


@dataclass
class Pki:
    server_ca: trustme.CA
    client_ca: trustme.CA
    rogue_ca: trustme.CA  # a CA the server was not told about
    cert: Path
    key: Path
    client_ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    cert, key, client_ca_file = base / "server.pem", base / "server.key", base / "clients.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key))
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    return Pki(server_ca, client_ca, rogue_ca, cert, key, client_ca_file)


def client_credentials(
    trusted: trustme.CA, client_of: trustme.CA | None = None
) -> grpc.ChannelCredentials:
    """Trusting ``trusted``; with a client certificate issued by ``client_of``."""
    if client_of is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted.cert_pem.bytes())
    client = client_of.issue_cert("pos-terminal-7.example")
    return grpc.ssl_channel_credentials(
        root_certificates=trusted.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in client.cert_chain_pems),
    )


def answers(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            query_service_pb2_grpc.InventoryQueryServiceStub(channel).GetPosition(
                REQUEST, timeout=5
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[LedgerProcess]:
    process = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        extra_args=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
        credentials=client_credentials(pki.server_ca),
    )
    with process:
        yield process
        assert process.stop() == 0, process.log_text()


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Pki) -> Iterator[LedgerProcess]:
    process = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        extra_args=["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
        env={"LEDGER_TLS_CLIENT_CA": str(pki.client_ca_file)},  # the env works like the flag
        credentials=client_credentials(pki.server_ca, client_of=pki.client_ca),
    )
    with process:
        yield process
        assert process.stop() == 0, process.log_text()


def test_tls_serves_clients_that_trust_its_ca(tls_server: LedgerProcess, pki: Pki) -> None:
    assert "; TLS" in tls_server.log_text()
    address = tls_server.address
    assert answers(address, client_credentials(pki.server_ca)) == grpc.StatusCode.OK
    # A client that does not trust the server's CA does not get through the handshake ...
    assert answers(address, client_credentials(pki.rogue_ca)) == grpc.StatusCode.UNAVAILABLE
    # ... and plaintext is not served on a TLS port.
    assert answers(address, None) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_the_wrong_client_certificate(
    mtls_server: LedgerProcess, pki: Pki
) -> None:
    assert "; mutual TLS" in mtls_server.log_text()
    address = mtls_server.address
    good = client_credentials(pki.server_ca, client_of=pki.client_ca)
    assert answers(address, good) == grpc.StatusCode.OK
    # A certificate from a CA the server does not know: refused in the handshake.
    wrong = client_credentials(pki.server_ca, client_of=pki.rogue_ca)
    assert answers(address, wrong) == grpc.StatusCode.UNAVAILABLE
    # Nor one from the server's own CA: only the configured client CA counts.
    other = client_credentials(pki.server_ca, client_of=pki.server_ca)
    assert answers(address, other) == grpc.StatusCode.UNAVAILABLE
    # No client certificate, or no TLS at all.
    assert answers(address, client_credentials(pki.server_ca)) == grpc.StatusCode.UNAVAILABLE
    assert answers(address, None) == grpc.StatusCode.UNAVAILABLE
    # The good one still works after the refusals.
    assert answers(address, good) == grpc.StatusCode.OK


def test_half_configured_tls_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    process = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}", extra_args=["--tls-cert", str(pki.cert)]
    )
    with pytest.raises(Exception, match="TLS needs both --tls-cert and --tls-key"):
        process.start()
    process.close()
