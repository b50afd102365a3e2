"""Plaintext gRPC only on loopback or with --insecure (issue 13 item 1): clients dialing and servers binding anywhere
else are refused with a message that says what to pass; the demo's and the tests' loopback addresses need nothing."""
from __future__ import annotations

import pytest

from swarm import rpc, tls
from swarm.errors import UsageError
from swarm_launcher.cli import main

pytestmark = pytest.mark.timeout(60)

PUBLIC = "203.0.113.7:50051"  # TEST-NET-3: nothing is dialed (the refusal comes first)


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch):
    """No pin, CA file or --insecure from the environment; setenv (not delenv) so monkeypatch also removes what a
    command's use_tls_args writes into os.environ during the test."""
    for name in (tls.FINGERPRINT_ENV, tls.CA_FILE_ENV, tls.INSECURE_ENV):
        monkeypatch.setenv(name, "")


def run(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.53:1"])
def test_loopback_plaintext_is_allowed(address):
    assert tls.plaintext_refusal(address, server=True) is None
    assert tls.plaintext_refusal(address, server=False) is None


@pytest.mark.parametrize("address", [PUBLIC, "0.0.0.0:50051", "[::]:50051", "coordinator:50051",
                                     "swarm.example.org:50051"])
def test_plaintext_elsewhere_is_refused_with_what_to_pass(address):
    client = tls.plaintext_refusal(address, server=False)
    assert address in client and "--tls-fingerprint" in client and "--tls-ca-file" in client
    assert "--insecure" in client and "in the clear" in client
    server = tls.plaintext_refusal(address, server=True)
    assert address in server and "--tls-cert/--tls-key" in server and "--insecure" in server


def test_a_client_channel_is_refused_unless_insecure(monkeypatch):
    with pytest.raises(tls.TlsError, match="refusing to dial 203.0.113.7:50051 in plaintext") as info:
        rpc.channel(PUBLIC)
    assert isinstance(info.value, UsageError), "the swarm command prints it as an error, no traceback"
    rpc.channel(PUBLIC, insecure=True).close()
    monkeypatch.setenv(tls.INSECURE_ENV, "1")  # what --insecure sets for every channel of the process
    rpc.channel(PUBLIC).close()
    with pytest.raises(tls.TlsError):
        rpc.channel(PUBLIC, insecure=False)
    rpc.channel("127.0.0.1:1", insecure=False).close()


def test_a_server_is_refused_off_loopback_unless_insecure(monkeypatch):
    server, _ = rpc.make_server(max_workers=1)
    try:
        with pytest.raises(tls.TlsError, match="refusing to serve plaintext gRPC on 0.0.0.0:0") as info:
            rpc.bind(server, "0.0.0.0:0")
        assert "--tls-cert/--tls-key" in str(info.value) and "--insecure" in str(info.value)
        assert rpc.bind(server, "127.0.0.1:0").startswith("127.0.0.1:")
        assert rpc.bind(server, "0.0.0.0:0", insecure=True).startswith("0.0.0.0:")
        monkeypatch.setenv(tls.INSECURE_ENV, "true")
        assert rpc.bind(server, "0.0.0.0:0").startswith("0.0.0.0:")
    finally:
        server.stop(None)


def test_commands_refuse_plaintext_off_loopback(capsys, tmp_path):
    code, err = run(capsys, "status", "--coordinator", PUBLIC, "--token", "swt_x", "--timeout", "1")
    assert code == 2 and "swarm status: error: refusing to dial" in err and "--tls-fingerprint" in err
    code, err = run(capsys, "coordinator", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "c.sqlite"),
                    "--metrics-port", "0")
    assert code == 2 and "swarm coordinator: error: refusing to serve plaintext gRPC on 0.0.0.0:0" in err
    # The trainer says so at once, before its slow start-up (torch, the model, hivemind).
    code, err = run(capsys, "train", "--coordinator", PUBLIC, "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "swarm train: error: refusing to dial 203.0.113.7:50051 in plaintext" in err
    assert not (tmp_path / "run").exists()


def test_the_trainer_refuses_a_plaintext_coordinator_off_loopback(monkeypatch):
    from swarm_trainer.coordinator_client import CoordinatorClient

    with pytest.raises(tls.TlsError, match="--tls-fingerprint sha256:"):
        CoordinatorClient(PUBLIC, token="swt_x")
    monkeypatch.setenv(tls.INSECURE_ENV, "1")  # `swarm train --insecure`
    CoordinatorClient(PUBLIC, token="swt_x").close()


def test_a_pin_to_a_plaintext_server_fails_at_once_saying_so():
    server, _ = rpc.make_server(max_workers=1)
    address = rpc.bind(server, "127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(tls.TlsError, match="is it serving TLS"):
            tls.pinned_certificate(address, "sha256:" + "ab" * 32, timeout=5)  # not retried
    finally:
        server.stop(None)
