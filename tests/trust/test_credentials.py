"""Credentials: issue, verify, refuse forgeries and expired ones; the coordinator key file."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.trust.credentials import (
    CredentialError,
    issue_credential,
    load_or_create_signing_key,
    parse_credential,
    public_key_bytes,
    verify_credential,
)

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def issue(key, **overrides):
    kwargs = dict(token_name="alice", peer_id=PEER, dht_public_key=b"rsa-key-bytes", lifetime_s=60.0,
                  max_weight=64.0, now=1000.0)
    kwargs.update(overrides)
    return issue_credential(key, **kwargs)


def test_round_trip_binds_every_field():
    key = Ed25519PrivateKey.generate()
    wire = issue(key)
    credential = verify_credential(wire, public_key_bytes(key), peer_id=PEER, dht_public_key=b"rsa-key-bytes",
                                   now=1030.0)
    assert (credential.token_name, credential.peer_id, credential.max_weight) == ("alice", PEER, 64.0)
    assert credential.expires_at == 1060.0 and credential.remaining_s(now=1030.0) == 30.0
    assert verify_credential(wire.encode(), public_key_bytes(key).hex(), now=1030.0) == credential


@pytest.mark.parametrize("check, message", [
    (dict(now=1061.0), "expired"),
    (dict(now=1030.0, peer_id="QmOtherPeer"), "not QmOtherPeer"),
    (dict(now=1030.0, dht_public_key=b"another"), "another DHT key"),
    (dict(now=800.0), "in the future"),
])
def test_refuses_expired_or_someone_elses(check, message):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(CredentialError, match=message):
        verify_credential(issue(key), public_key_bytes(key), **check)


def test_refuses_other_signer_and_tampering():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    wire = issue(key)
    with pytest.raises(CredentialError, match="not signed by this swarm's coordinator"):
        verify_credential(wire, public_key_bytes(other), now=1000.0)
    # Same signature over a payload with a larger weight cap: the signature no longer matches.
    forged = issue(other, max_weight=1e9).split(".")
    tampered = ".".join([forged[0], forged[1], wire.split(".")[2]])
    with pytest.raises(CredentialError, match="not signed"):
        verify_credential(tampered, public_key_bytes(key), now=1000.0)


@pytest.mark.parametrize("garbage", ["", "swc1.x", "swc2.a.b", "swc1.!!!.???", "x" * 5000, b"\xff\xfe"])
def test_garbage_is_a_clear_error(garbage):
    with pytest.raises(CredentialError):
        parse_credential(garbage)


@pytest.mark.parametrize("bad", [dict(token_name=""), dict(peer_id="not a peer/id"), dict(dht_public_key=b""),
                                 dict(lifetime_s=0), dict(max_weight=-1)])
def test_issue_validates_inputs(bad):
    with pytest.raises(CredentialError):
        issue(Ed25519PrivateKey.generate(), **bad)


def test_signing_key_created_once_0600_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "coordinator.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_key_bytes(load_or_create_signing_key(path)) == public_key_bytes(key)
    path.write_text("not a key")
    with pytest.raises(CredentialError, match="move it away"):
        load_or_create_signing_key(path)


def test_credentials_module_is_pure():
    code = "import sys, swarm.trust.credentials; assert 'hivemind' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
