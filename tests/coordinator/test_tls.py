"""TLS (issue 13 item 1): the coordinator and the dataset service serve TLS with a self-signed certificate, and
clients pin its fingerprint (or take it as a CA file); a wrong pin or a plaintext client gets nothing."""
from __future__ import annotations

import grpc
import pytest

from swarm import tls
from swarm.rpc import channel, token_metadata
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cert(tmp_path):
    cert_path, key_path = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    fingerprint = tls.make_self_signed(cert_path, key_path, hostnames=["localhost", "127.0.0.1"])
    return cert_path, key_path, fingerprint


def get_config(address: str, token: str, *, client_tls=None):
    with channel(address, tls=client_tls) as ch:
        return pb_grpc.CoordinatorStub(ch).GetConfig(pb.GetConfigRequest(), metadata=token_metadata(token), timeout=5)


def test_self_signed_certificate_is_made_once_and_fingerprints_normalize(cert, tmp_path):
    cert_path, key_path, fingerprint = cert
    assert tls.make_self_signed(cert_path, key_path, hostnames=["other"]) == fingerprint  # kept, not replaced
    import os
    import stat

    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    digest = fingerprint.removeprefix("sha256:")
    colons = ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper()
    assert tls.normalize_fingerprint(colons) == tls.normalize_fingerprint(digest) == fingerprint
    with pytest.raises(tls.TlsError, match="not a sha256 fingerprint"):
        tls.normalize_fingerprint("md5:abc")
    assert tls.is_loopback("127.0.0.1") and tls.is_loopback("[::1]") and not tls.is_loopback("0.0.0.0")


def test_coordinator_over_tls_with_a_pinned_fingerprint_or_a_ca_file(coordinator, cert):
    cert_path, key_path, fingerprint = cert
    server, client = coordinator(tls_cert=cert_path, tls_key=key_path)
    assert get_config(server.address, client.token, client_tls=tls.ClientTls(fingerprint=fingerprint)).version == 1
    assert get_config(server.address, client.token, client_tls=tls.ClientTls(ca_file=cert_path)).version == 1
    wrong = "sha256:" + "0" * 64
    with pytest.raises(tls.TlsError, match="not the pinned"):
        get_config(server.address, client.token, client_tls=tls.ClientTls(fingerprint=wrong))
    with pytest.raises(grpc.RpcError) as info:  # a plaintext client cannot talk to a TLS server
        get_config(server.address, client.token)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
