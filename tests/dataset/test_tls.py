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


def test_a_pinned_prefetcher_waits_for_a_dataset_service_that_is_down_at_start(small_dataset, tmp_path, monkeypatch):
    """A trainer whose dataset service is restarting when it starts streaming keeps trying (as a plaintext channel
    reconnects by itself) instead of exiting on the failed certificate fetch; a wrong pin still fails at once."""
    import socket

    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_coordinator.tokens import create_token
    from swarm_dataset import client

    cert_path, key_path = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    fingerprint = tls.make_self_signed(cert_path, key_path, hostnames=["localhost", "127.0.0.1"])
    monkeypatch.setenv(tls.FINGERPRINT_ENV, fingerprint)
    monkeypatch.setattr(tls, "PIN_RETRY_S", 0.5)
    monkeypatch.setattr(client, "RECONNECT_PAUSE_S", 0.3)
    db_path = str(tmp_path / "coordinator.sqlite")
    token = create_token(db_path, name="trainer")
    coordinator = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None,
                                            tls_cert=cert_path, tls_key=key_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    dataset = None
    try:
        with client.ChunkPrefetcher(address, chunks=[("chunk", [1])], token=token, timeout=10) as prefetcher:
            dataset = start_server(index_path=small_dataset["index_path"], listen=address, metrics_port=None,
                                   coordinator=coordinator.address, tls_cert=cert_path, tls_key=key_path,
                                   lease_check=False)
            key, samples = prefetcher.get(timeout=30)
            assert key == "chunk" and [s[2] for s in samples] == [1]
        monkeypatch.setenv(tls.FINGERPRINT_ENV, "sha256:" + "00" * 32)
        with pytest.raises(tls.TlsError, match="not the pinned"):
            client.ChunkPrefetcher(dataset.address, chunks=[], token=token)
    finally:
        if dataset is not None:
            dataset.stop(grace=0.5)
        coordinator.stop(grace=0.5)
