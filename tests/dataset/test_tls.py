"""The dataset service over TLS, checking tokens with a TLS coordinator; clients pin the host's certificate through
$SWARM_TLS_FINGERPRINT (issue 13 item 1)."""
from __future__ import annotations

import grpc
import pytest

from swarm import tls
from swarm_dataset.client import iter_chunk_samples
from swarm_dataset.server import start_server

pytestmark = pytest.mark.timeout(60)


def test_dataset_service_over_tls_with_a_tls_coordinator(small_dataset, tmp_path, monkeypatch):
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_coordinator.tokens import create_token

    cert_path, key_path = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    fingerprint = tls.make_self_signed(cert_path, key_path, hostnames=["localhost", "127.0.0.1"])
    monkeypatch.setenv(tls.FINGERPRINT_ENV, fingerprint)  # every client in this process pins the host's cert
    db_path = str(tmp_path / "coordinator.sqlite")
    token = create_token(db_path, name="trainer")
    coordinator = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None,
                                            tls_cert=cert_path, tls_key=key_path))
    dataset = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           coordinator=coordinator.address, tls_cert=cert_path, tls_key=key_path, lease_check=False)
    try:
        assert [s[2] for s in iter_chunk_samples(dataset.address, [1], token=token, timeout=10)] == [1]
        with pytest.raises(grpc.RpcError) as info:
            list(iter_chunk_samples(dataset.address, [1], token="swt_wrong", timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        monkeypatch.delenv(tls.FINGERPRINT_ENV)
        with pytest.raises(grpc.RpcError) as info:  # plaintext gets nowhere
            list(iter_chunk_samples(dataset.address, [1], token=token, timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        dataset.stop(grace=0.5)
        coordinator.stop(grace=0.5)
